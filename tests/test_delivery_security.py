"""Security: templates cannot reach Python internals; unsubscribe tokens cannot be altered or
forged; no credential reaches a log line, an error or the database after a run with failures."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.db import tables as t
from clm_core.delivery.testing import seed_outbox, write_templates
from clm_core.errors import TemplateRenderError, TokenError
from clm_core.templating import TemplateStore, sample_context
from tests.delivery_fixtures import KEY, clm, dispatch, project, rows, sandbox, sandbox_server  # noqa: F401

ESCAPES = ["{{ ''.__class__.__mro__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
           "{{ customer.__class__.__init__.__globals__ }}", "{{ cycler.__init__.__globals__.os }}",
           "{{ links.items.__self__.__class__ }}"]


@pytest.mark.parametrize("source", ESCAPES)
def test_template_cannot_reach_python_internals(tmp_path: Path, source: str) -> None:
    write_templates(tmp_path, {"evil/en/sms.txt.j2": source})
    with pytest.raises(TemplateRenderError) as err:
        TemplateStore(tmp_path).render_sms("evil", "en", sample_context())
    assert "evil/en/sms.txt.j2:1" in str(err.value)


def test_evil_template_fails_its_message_clearly(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    root = project(tmp_path, db_url, sandbox)
    write_templates(root / "templates", {"evil/en/sms.txt.j2": ESCAPES[1]})
    seed_outbox(engine, 1, channel="sms", template="evil")
    dispatch(root, engine)
    [row] = rows(engine)
    assert (row["status"], row["reason"]) == ("failed", "render_error")
    assert "sandbox" in row["error_message"] or "unsafe" in row["error_message"]
    assert not sandbox.store.deliveries


def test_unsubscribe_token_round_trip_and_tampering() -> None:
    now = datetime(2026, 11, 1)
    ring = Keyring.single(KEY)
    token = ring.sign(SUBSCRIPTION, "email", "cdnow-00042", now)
    claim = ring.verify(token, SUBSCRIPTION, now)
    assert (claim.channel, claim.customer, claim.key_id) == ("email", "cdnow-00042", "k1")
    kid, body, sig = token.split(".")
    forged_body = ring.sign(SUBSCRIPTION, "email", "cdnow-00043", now).split(".")[1]
    for bad in [f"{kid}.{forged_body}.{sig}",  # someone else's customer id, same signature
                f"{kid}.{body}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}",  # altered
                Keyring.single(b"another-installation-key").sign(
                    SUBSCRIPTION, "email", "cdnow-00042", now),  # foreign key, same key id
                Keyring.single(KEY, "k9").sign(SUBSCRIPTION, "email", "cdnow-00042", now),
                body, "", "a.b.c", token + "x", token.replace(".", "..", 1)]:
        with pytest.raises(TokenError):
            ring.verify(bad, SUBSCRIPTION, now)


SECRET_ENV = {
    "SENDGRID_API_KEY": "SG.super-secret-sendgrid-key-0001",
    "TWILIO_ACCOUNT_SID": "AC-secret-sid-0002",
    "TWILIO_AUTH_TOKEN": "twilio-secret-token-0003",
    "STRIPE_API_KEY": "sk_live_secret_stripe_0004",
}


def test_no_credential_in_logs_errors_or_database(tmp_path: Path, db_url: str, engine: sa.Engine,
                                                  sandbox) -> None:
    sandbox.store.set_faults({"rate_500": 0.3, "rate_429": 0.2, "rate_drop": 0.1, "seed": 11,
                              "optout": ["+12025550003"], "invalid": ["customer4@example.com"]})
    root = project(tmp_path, db_url, sandbox, timeout=1.0, lease_seconds=5, max_attempts=2,
                   backoff_base=0.05, backoff_max=0.1)
    seed_outbox(engine, 20, channel="sms", prefix="s")
    seed_outbox(engine, 20, channel="email", prefix="e", coupon={"kind": "amount", "value": 5})
    proc = clm(root, "dispatch", "-v", "--wait", "3", env=SECRET_ENV)
    out, err = proc.communicate(timeout=120)
    final = rows(engine)
    assert {"failed", "unknown"} & {r["status"] for r in final}, "the run must include failures"
    text = out.decode() + err.decode()
    assert "HTTP Request: POST" in text  # the verbose log was really captured
    with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            text += "\n".join(str(tuple(r)) for r in conn.execute(sa.select(table)))
    for name, value in SECRET_ENV.items():
        assert value not in text, (
            f"{name} leaked: ...{text[max(0, text.find(value) - 300) : text.find(value) + 60]}"
        )
    # The provider's own request log: its API puts the account id in the path, keys never.
    kept = str(sandbox.store.requests)
    assert not [v for k, v in SECRET_ENV.items() if k != "TWILIO_ACCOUNT_SID" and v in kept]
    assert os.environ.get("SENDGRID_API_KEY") is None
