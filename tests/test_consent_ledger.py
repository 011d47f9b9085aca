"""The consent ledger on both databases: append-only rows, replays as no-ops, current consent
derived by event time, consent columns and suppressions kept in step."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from clm_core.consent import ledger
from clm_core.db import tables as t
from clm_core.errors import ConsentError

T0 = datetime(2026, 11, 1, 12, 0)


def add_customer(engine: sa.Engine, ext: str = "c-1", *, email: str | None = "ann@example.com",
                 phone: str | None = "+12025550101", consent: bool = True) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(t.customers).values(
            external_id=ext, name="Ann Lee", email=email, phone=phone, locale="en",
            consent_email=consent, consent_sms=consent,
            consent_email_at=T0 if consent else None).returning(t.customers.c.id)).scalar_one())


def change(engine: sa.Engine, cid: int | None, channel: str, action: str, source: str,
           at: datetime, key: str, **kw: object) -> ledger.Recorded | None:
    with engine.begin() as conn:
        return ledger.record_change(conn, customer_id=cid, channel=channel, action=action,
                                    source=source, occurred_at=at, evidence_key=key,
                                    evidence={"event": key}, **kw)  # type: ignore[arg-type]


def customer(engine: sa.Engine, cid: int) -> dict[str, object]:
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.select(t.customers).where(t.customers.c.id == cid)).one()._mapping
        )


def suppressions(engine: sa.Engine) -> set[tuple[str, str, str]]:
    with engine.connect() as conn:
        return {(r.channel, r.address, r.reason) for r in conn.execute(sa.select(t.suppressions))}


def ledger_rows(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t.consent_ledger)
                                                        .order_by(t.consent_ledger.c.id))]


def test_unsubscribe_withdraws_suppresses_and_a_replay_is_a_no_op(engine: sa.Engine) -> None:
    cid = add_customer(engine)
    got = change(engine, cid, "email", "withdrawn", "unsubscribe", T0 + timedelta(days=1), "u:tok1")
    assert got is not None and got.current is False
    assert change(engine, cid, "email", "withdrawn", "unsubscribe", T0 + timedelta(days=1),
                  "u:tok1") is None
    rows = ledger_rows(engine)
    assert len(rows) == 1
    assert rows[0]["address"] == "ann@example.com" and rows[0]["evidence"] == {"event": "u:tok1"}
    assert rows[0]["recorded_at"] is not None
    assert customer(engine, cid)["consent_email"] is False
    assert customer(engine, cid)["consent_email_at"] is None
    assert customer(engine, cid)["consent_sms"] is True  # other channel untouched
    assert suppressions(engine) == {("email", "ann@example.com", "unsubscribed")}
    with engine.connect() as conn:
        assert ledger.current_consent(conn, cid, "email") is False
        assert ledger.current_consent(conn, cid, "sms") is True


def test_a_late_older_event_does_not_undo_a_newer_one(engine: sa.Engine) -> None:
    cid = add_customer(engine)
    change(engine, cid, "sms", "withdrawn", "inbound_sms", T0 + timedelta(hours=2), "sms-stop")
    # A START that happened before the STOP arrives afterwards: recorded, but the STOP stands.
    late = change(
        engine, cid, "sms", "granted", "inbound_sms", T0 + timedelta(hours=1), "sms-start"
    )
    assert late is not None and late.current is False
    assert customer(engine, cid)["consent_sms"] is False
    assert suppressions(engine) == {("sms", "+12025550101", "opted_out")}
    # A START after the STOP restores consent and lifts the opt-out suppression.
    change(engine, cid, "sms", "granted", "inbound_sms", T0 + timedelta(hours=3), "sms-start-2")
    assert customer(engine, cid)["consent_sms"] is True
    assert customer(engine, cid)["consent_sms_at"] == T0 + timedelta(hours=3)
    assert suppressions(engine) == set()
    assert len(ledger_rows(engine)) == 3


def test_a_grant_never_lifts_a_bounce_or_complaint(engine: sa.Engine) -> None:
    cid = add_customer(engine)
    change(engine, cid, "email", "withdrawn", "bounce", T0 + timedelta(hours=1), "sg-evt-1")
    change(engine, cid, "email", "granted", "preferences", T0 + timedelta(hours=2), "pref-1")
    assert customer(engine, cid)["consent_email"] is True
    assert suppressions(engine) == {("email", "ann@example.com", "bounced")}
    # A complaint that arrives late still suppresses: it is a fact about the address.
    cid2 = add_customer(engine, "c-2", email="bob@example.com", phone=None)
    change(engine, cid2, "email", "granted", "operator", T0 + timedelta(hours=5), "op-1")
    change(engine, cid2, "email", "withdrawn", "complaint", T0 + timedelta(hours=4), "sg-evt-2")
    assert ("email", "bob@example.com", "complained") in suppressions(engine)


def test_topics_follow_the_channel_and_can_be_withdrawn_alone(engine: sa.Engine) -> None:
    cid = add_customer(engine)
    change(engine, cid, "email", "withdrawn", "preferences", T0 + timedelta(hours=1), "p1",
           topic="offers")
    with engine.connect() as conn:
        assert ledger.current_consent(conn, cid, "email") is True
        assert ledger.current_consent(conn, cid, "email", "offers") is False
        assert ledger.current_consent(conn, cid, "email", "news") is True
        assert ledger.withdrawn_topics(conn, [cid]) == {cid: {("email", "offers")}}
        state = ledger.consent_state(conn, cid)
    assert state.allows("email") and not state.allows("email", "offers")
    assert customer(engine, cid)["consent_email"] is True  # a topic row leaves the column alone
    assert suppressions(engine) == set()
    change(engine, cid, "email", "withdrawn", "operator", T0 + timedelta(hours=2), "op")
    with engine.connect() as conn:
        assert ledger.current_consent(conn, cid, "email", "news") is False


def test_without_rows_the_imported_column_stands(engine: sa.Engine) -> None:
    yes, no = add_customer(engine, "c-yes"), add_customer(engine, "c-no", email="n@example.com",
                                                           consent=False)
    with engine.connect() as conn:
        assert ledger.current_consent(conn, yes, "email") is True
        assert ledger.current_consent(conn, no, "email") is False
        assert ledger.head_id(conn, yes, "email") == 0


def test_a_stop_from_an_unknown_number_suppresses_the_number(engine: sa.Engine) -> None:
    change(engine, None, "sms", "withdrawn", "inbound_sms", T0, "tw-1", address="+12025559999")
    assert suppressions(engine) == {("sms", "+12025559999", "opted_out")}
    change(engine, None, "sms", "granted", "inbound_sms", T0 + timedelta(minutes=1), "tw-2",
           address="+12025559999")
    assert suppressions(engine) == set()


@pytest.mark.parametrize("field,value", [("channel", "fax"), ("action", "maybe"),
                                         ("source", "guess")])
def test_unknown_values_are_refused_and_nothing_is_written(engine: sa.Engine, field: str,
                                                           value: str) -> None:
    cid = add_customer(engine)
    args = {"channel": "email", "action": "withdrawn", "source": "operator", field: value}
    with pytest.raises(ConsentError, match=value):
        change(engine, cid, args["channel"], args["action"], args["source"], T0, "k")
    assert ledger_rows(engine) == []


def test_a_reimport_never_undoes_a_later_withdrawal(engine: sa.Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from clm_core.ingest.importer import import_csv

    csv = tmp_path / "customers.csv"
    csv.write_text("external_id,email,consent_email,consent_email_at\n"
                   "c-1,ann@example.com,yes,2026-10-01T00:00\n"
                   "c-2,bob@example.com,yes,2026-10-01T00:00\n", encoding="utf-8")
    import_csv(engine, "customers", csv)
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(t.customers.c.external_id, t.customers.c.id)).all())
    change(engine, ids["c-1"], "email", "withdrawn", "unsubscribe", T0, "u:1")  # after the file
    change(engine, ids["c-2"], "email", "withdrawn", "preferences", T0, "p:2")
    import_csv(engine, "customers", csv)  # the store's export still says yes, as of October
    assert customer(engine, ids["c-1"])["consent_email"] is False
    assert customer(engine, ids["c-2"])["consent_email"] is False
    # The store recorded a new opt-in after the withdrawal: the import grants, with a ledger row.
    csv.write_text("external_id,email,consent_email,consent_email_at\n"
                   "c-2,bob@example.com,yes,2026-11-20T00:00\n", encoding="utf-8")
    import_csv(engine, "customers", csv)
    assert customer(engine, ids["c-2"])["consent_email"] is True
    rows = [(r["customer_id"], r["source"], r["action"]) for r in ledger_rows(engine)]
    assert rows[-1] == (ids["c-2"], "import", "granted") and len(rows) == 3
    import_csv(engine, "customers", csv)
    assert len(ledger_rows(engine)) == 3


def test_a_batch_of_provider_withdrawals_ends_as_one_by_one(engine: sa.Engine) -> None:
    """``record_withdrawals`` (a webhook batch's bounces, complaints and unsubscribes) leaves
    the same rows, consent columns and suppressions as ``record_change`` row by row: a replay
    changes nothing, a late withdrawal older than a newer grant keeps consent but a bounce
    still suppresses, an unknown address is suppressed, two changes of one subject apply in
    order."""
    a = add_customer(engine, "c-1", email="ann@example.com")
    b = add_customer(engine, "c-2", email="bo@example.com")
    c = add_customer(engine, "c-3", email="cy@example.com")
    change(engine, a, "email", "withdrawn", "bounce", T0, "sendgrid:old")  # replayed below
    change(engine, b, "email", "granted", "preferences", T0 + timedelta(hours=5), "p:b")
    batch = [("c-1", "ann@example.com", "bounce", T0, "sendgrid:old"),
             ("c-2", "bo@example.com", "bounce", T0 + timedelta(hours=1), "sendgrid:b1"),
             ("c-2", "bo@example.com", "provider_unsubscribe", T0 + timedelta(hours=2),
              "sendgrid:b2"),
             ("c-3", "cy@example.com", "complaint", T0 + timedelta(hours=1), "sendgrid:c1"),
             (None, "zed@example.com", "provider_unsubscribe", T0, "sendgrid:z1")]
    ids = {"c-1": a, "c-2": b, "c-3": c}

    def state() -> tuple[object, ...]:
        rows = [(r["customer_id"], r["channel"], r["action"], r["source"], r["address"],
                 r["occurred_at"], r["evidence_key"]) for r in ledger_rows(engine)]
        people = [(customer(engine, i)["consent_email"], customer(engine, i)["consent_email_at"])
                  for i in (a, b, c)]
        return sorted(rows, key=str), people, suppressions(engine)

    with engine.begin() as conn:
        ledger.record_withdrawals(conn, [
            ledger.Withdrawal(ids.get(ext or ""), "email", source, address, at, key,
                              {"event": key}) for ext, address, source, at, key in batch], T0)
    batched = state()
    with engine.begin() as conn:  # the batch again: every row is a replay
        ledger.record_withdrawals(conn, [
            ledger.Withdrawal(ids.get(ext or ""), "email", source, address, at, key,
                              {"event": key}) for ext, address, source, at, key in batch], T0)
    assert state() == batched
    with engine.begin() as conn:
        conn.execute(sa.delete(t.consent_ledger).where(
            t.consent_ledger.c.evidence_key.in_([k for *_, k in batch[1:]])))
        conn.execute(sa.delete(t.suppressions).where(t.suppressions.c.address != "ann@example.com"))
    for ext, address, source, at, key in batch:
        change(engine, ids.get(ext or ""), "email", "withdrawn", source, at, key, address=address)
    assert state() == batched
    assert customer(engine, b)["consent_email"] is True  # the grant is newer than both
    assert customer(engine, c)["consent_email"] is False
    assert batched[2] == {("email", "ann@example.com", "bounced"),
                          ("email", "bo@example.com", "bounced"),
                          ("email", "cy@example.com", "complained"),
                          ("email", "zed@example.com", "unsubscribed")}
