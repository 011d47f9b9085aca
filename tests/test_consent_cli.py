"""``clm consent set`` and ``clm consent show`` on both databases."""

from __future__ import annotations

import json

import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from tests.test_consent_ledger import add_customer, customer, ledger_rows


def test_operator_change_is_recorded_and_shown(db_url: str, engine: sa.Engine) -> None:
    cid = add_customer(engine)
    run = CliRunner().invoke
    got = run(cli, ["--database", db_url, "consent", "set", "c-1", "--channel", "sms",
                    "--withdraw", "--note", "asked by phone"])
    assert got.exit_code == 0, got.output
    assert customer(engine, cid)["consent_sms"] is False
    [row] = ledger_rows(engine)
    assert (row["source"], row["evidence"]["note"]) == ("operator", "asked by phone")
    shown = run(cli, ["--database", db_url, "consent", "show", "c-1", "--json"])
    data = json.loads(shown.output)
    assert data["channels"] == {"email": True, "sms": False} and len(data["ledger"]) == 1
    missing = run(cli, ["--database", db_url, "consent", "show", "nobody"])
    assert missing.exit_code == 1 and "no customer with external id 'nobody'" in missing.output
    bad_topic = run(cli, ["--database", db_url, "consent", "set", "c-1", "--channel", "email",
                          "--topic", "nope", "--grant", "--note", "x"])
    assert bad_topic.exit_code == 1 and "not in [consent] topics" in bad_topic.output
    assert len(ledger_rows(engine)) == 1
