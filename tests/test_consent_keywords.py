"""Inbound SMS keywords: what counts as STOP/START/HELP, and the ledger effect on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from clm_core.consent.config import ConsentConfig
from clm_core.consent.keywords import apply_inbound, interpret, normalise
from clm_core.db import tables as t
from tests.test_consent_ledger import add_customer, customer, ledger_rows, suppressions

T0 = datetime(2026, 11, 2, 9, 0)


@pytest.mark.parametrize(
    "text,kind",
    [
        ("STOP", "withdraw"),
        ("stop", "withdraw"),
        ("  Stop. ", "withdraw"),
        ("STOPALL", "withdraw"),
        ("unsubscribe", "withdraw"),
        ("Cancel", "withdraw"),
        ("END", "withdraw"),
        ("quit!", "withdraw"),
        ("REVOKE", "withdraw"),
        ("opt out", "withdraw"),
        ("OPT   OUT", "withdraw"),
        ("optout", "withdraw"),
        ("ＳＴＯＰ", "withdraw"),  # full-width
        ("T", "withdraw"),
        ("t", "withdraw"),
        ("Ｔ", "withdraw"),
        ("TD", "withdraw"),
        ("ｔｄ", "withdraw"),
        ("N", "withdraw"),
        ("R", "withdraw"),
        ("退订", "withdraw"),
        ("拒收", "withdraw"),
        ("退订。", "withdraw"),
        ("【拒收】", "withdraw"),
        ("START", "restore"),
        ("unstop", "restore"),
        ("Yes", "restore"),
        ("ＳＴＡＲＴ", "restore"),
        ("HELP", "help"),
        ("help?", "help"),
    ],
)
def test_keywords(text: str, kind: str) -> None:
    got = interpret(text)
    assert got is not None and got.kind == kind, (text, got)


@pytest.mark.parametrize("text", ["", "please stop sending", "don't stop", "STOP IT NOW", "TT",
                                  "thanks", "yes please", "退订了吗", "STO P", "HELPME"])
def test_ordinary_messages_are_not_keywords(text: str) -> None:
    assert interpret(text) is None


def test_normalise_folds_width_case_and_edges() -> None:
    assert normalise("  ｏｐｔ　ｏｕｔ！ ") == "OPT OUT"


def inbound(engine: sa.Engine, phone: str, text: str, at: datetime, event_id: str):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return apply_inbound(conn, phone=phone, text=text, received_at=at, event_id=event_id,
                             provider="twilio", config=ConsentConfig(), store="Acme")


def test_stop_start_help_through_the_ledger(engine: sa.Engine) -> None:
    cid = add_customer(engine)
    other = add_customer(engine, "c-2", email="b@example.com", phone="+12025550102")
    stop = inbound(engine, "+12025550101", "Stop", T0, "SM1")
    assert stop.changed == 1 and stop.reply is not None and "unsubscribed" in stop.reply
    assert "%" not in stop.reply and "offer" not in stop.reply.lower()  # no marketing
    assert customer(engine, cid)["consent_sms"] is False
    assert customer(engine, cid)["consent_email"] is True  # only SMS
    assert customer(engine, other)["consent_sms"] is True
    assert suppressions(engine) == {("sms", "+12025550101", "opted_out")}
    [row] = ledger_rows(engine)
    assert (row["source"], row["action"], row["channel"]) == ("inbound_sms", "withdrawn", "sms")
    assert row["evidence"] == {"provider": "twilio", "provider_event_id": "SM1", "keyword": "STOP"}

    replay = inbound(engine, "+12025550101", "Stop", T0, "SM1")
    assert (replay.changed, replay.reply) == (0, None)  # a redelivery: no row, no second reply
    assert len(ledger_rows(engine)) == 1

    help_ = inbound(engine, "+12025550101", "HELP", T0 + timedelta(minutes=1), "SM2")
    assert help_.changed == 0 and help_.reply and "STOP" in help_.reply
    assert len(ledger_rows(engine)) == 1

    start = inbound(engine, "+12025550101", "START", T0 + timedelta(minutes=2), "SM3")
    assert start.changed == 1 and start.reply
    assert customer(engine, cid)["consent_sms"] is True
    assert suppressions(engine) == set()
    assert inbound(engine, "+12025550101", "hello", T0, "SM4").reply is None


def test_chinese_keyword_replies_in_chinese_and_unknown_numbers_are_suppressed(
        engine: sa.Engine) -> None:
    got = inbound(engine, "+8613800138000", "退订", T0, "ali-1")
    assert got.changed == 1 and got.reply and "退订" in got.reply
    assert suppressions(engine) == {("sms", "+8613800138000", "opted_out")}
    with engine.connect() as conn:
        assert conn.scalar(sa.select(t.consent_ledger.c.customer_id)) is None
