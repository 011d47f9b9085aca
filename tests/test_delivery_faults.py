"""Fault injection: 429s, 500s and timeouts from the sandbox; every message ends sent exactly
once (idempotent provider) or is accounted for, never left pending past its retry limit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.delivery.testing import seed_outbox
from tests.delivery_fixtures import dispatch, project, rows, sandbox, sandbox_server  # noqa: F401

FAULTS = {"rate_429": 0.2, "rate_500": 0.1, "rate_timeout": 0.05, "retry_after": 1,
          "timeout_seconds": 1.5, "seed": 7}
FAST_RETRIES = {
    "timeout": 1.0,
    "backoff_base": 0.05,
    "backoff_max": 0.5,
    "lease_seconds": 5,
    "max_attempts": 10,
    "batch_size": 100,
}


def test_faults_every_message_sent_once(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    sandbox.store.set_faults(FAULTS)
    # About 35% of requests fail (more on a busy machine, where the 0.4 s timeouts also fire),
    # and a batch fails together: at 10 attempts a message ran out of them in about one run
    # in a hundred. This test is about sending once, not about the limit (tested below).
    root = project(tmp_path, db_url, sandbox, **{**FAST_RETRIES, "max_attempts": 20}, providers={
        "twilio": {"timeout": 0.4, "idempotent": True},
        "sendgrid": {"timeout": 0.4, "idempotent": True, "batch_size": 25}})
    sms = seed_outbox(engine, 200, channel="sms", prefix="f")
    email = seed_outbox(engine, 200, channel="email", prefix="g")

    report = dispatch(root, engine, wait=10)

    stats = sandbox.store.stats()
    assert (
        stats["faults"].get("429") and stats["faults"].get("500") and stats["faults"].get("timeout")
    )
    final = rows(engine)
    assert Counter(r["status"] for r in final) == {"sent": 400}, report.summary()
    delivered = sandbox.store.delivered
    assert all(delivered[k] == 1 for k in sms + email)
    assert stats["duplicates"] == 0
    retried = [r for r in final if r["attempts"] > 1]
    assert retried, "faults must have forced retries"
    assert max(r["attempts"] for r in final) <= 20


def test_faults_retry_limit_gives_final_status(tmp_path: Path, db_url: str, engine: sa.Engine,
                                               sandbox) -> None:
    """With every request failing, messages end failed (retries_exhausted) at the limit."""
    sandbox.store.set_faults({"rate_500": 1.0})
    root = project(tmp_path, db_url, sandbox, **{**FAST_RETRIES, "max_attempts": 3})
    seed_outbox(engine, 20, channel="sms", prefix="x")
    dispatch(root, engine, wait=10)
    final = rows(engine)
    assert {r["status"] for r in final} == {"failed"}
    assert {r["reason"] for r in final} == {"retries_exhausted"}
    assert {r["attempts"] for r in final} == {3}
    assert all(r["error_code"] == "20500" and "HTTP 500" in r["error_message"] for r in final)


def test_timeouts_on_non_idempotent_provider_become_unknown(tmp_path: Path, db_url: str,
                                                            engine: sa.Engine, sandbox) -> None:
    """A timeout after the provider accepted: never resent blindly, marked unknown instead."""
    sandbox.store.set_faults({"rate_accept_then_timeout": 0.2, "timeout_seconds": 1.0, "seed": 3,
                              "idempotency": False})
    root = project(tmp_path, db_url, sandbox, **FAST_RETRIES,
                   providers={"twilio": {"timeout": 0.3, "idempotent": False}})
    keys = seed_outbox(engine, 100, channel="sms", prefix="u")
    dispatch(root, engine, wait=5)
    final = rows(engine)
    by_status = Counter(r["status"] for r in final)
    assert set(by_status) == {"sent", "unknown"} and by_status["unknown"] > 0
    assert all(r["reason"] == "outcome_unknown" and r["error_code"] == "readtimeout"
               for r in final if r["status"] == "unknown")
    assert sandbox.store.stats()["duplicates"] == 0
    assert all(sandbox.store.delivered[k] == 1 for k in keys)  # each went through exactly once


def test_coupon_faults_issue_each_coupon_once(tmp_path: Path, db_url: str, engine: sa.Engine,
                                              sandbox) -> None:
    """Coupons come first and are idempotent: faults on the coupon API (including timeouts
    after it created the code) delay the message but never issue a second coupon."""
    sandbox.store.set_faults({"apis": ["stripe"], "rate_500": 0.2, "rate_accept_then_timeout": 0.1,
                              "timeout_seconds": 1.0, "seed": 5})
    root = project(tmp_path, db_url, sandbox, **FAST_RETRIES,
                   providers={"stripe": {"timeout": 0.3}})
    keys = seed_outbox(engine, 60, channel="email", prefix="k",
                       coupon={"kind": "percent", "value": 10, "expires_in_days": 7})
    dispatch(root, engine, wait=10)
    assert Counter(r["status"] for r in rows(engine)) == {"sent": 60}
    with engine.connect() as conn:
        coupons = conn.execute(sa.select(t.coupons.c.idempotency_key, t.coupons.c.code)).all()
    assert sorted(k for k, _ in coupons) == sorted(keys)
    assert all(sandbox.store.delivered[f"{k}:promotion_codes"] == 1 for k in keys)
    assert sandbox.store.stats()["replays"] > 0  # some requests really were repeated
    mails = {d["key"]: d for d in sandbox.store.deliveries if d["api"] == "sendgrid"}
    assert all(code in mails[k]["text"] for k, code in coupons)
