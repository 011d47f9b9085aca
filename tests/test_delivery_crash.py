"""Crash test: SIGKILL a dispatcher part-way, dispatch again. Each message reaches the sandbox
exactly once, or (on a provider without idempotency) is marked unknown and never resent; every
message ends sent, failed or unknown with a reason.

The default run sends 3,000 messages; ``-m slow`` runs the full 10,000."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.delivery.testing import seed_outbox
from tests.delivery_fixtures import clm, project, rows, sandbox, sandbox_server  # noqa: F401

LEASE = {"timeout": 1.0, "lease_seconds": 3, "backoff_base": 0.05, "backoff_max": 0.5,
         "batch_size": 200, "lanes": 4}


def crash_and_resume(tmp_path: Path, db_url: str, engine: sa.Engine, sandbox, n: int, *,
                     channel: str, idempotent: bool) -> tuple[Counter[str], list[str]]:
    provider = "sendgrid" if channel == "email" else "twilio"
    sandbox.store.set_faults({"idempotency": idempotent})
    root = project(tmp_path, db_url, sandbox, **LEASE,
                   providers={provider: {"idempotent": idempotent}})
    keys = seed_outbox(engine, n, channel=channel, prefix="c")

    first = clm(root, "dispatch")
    deadline = time.monotonic() + 120
    while len(sandbox.store.deliveries) < n // 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first dispatch made no progress"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = Counter(r["status"] for r in rows(engine))
    assert at_kill["pending"] + at_kill["claimed"] > 0, (
        f"killed too late to test anything: {at_kill}"
    )

    second = clm(root, "dispatch", "--wait", "10")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err.decode()
    return Counter(r["status"] for r in rows(engine)), keys


def check(engine: sa.Engine, sandbox, keys: list[str], idempotent: bool) -> Counter[str]:
    final = rows(engine)
    statuses = Counter(r["status"] for r in final)
    assert set(statuses) <= {"sent", "failed", "unknown"}, statuses
    assert all(r["reason"] for r in final)
    delivered = sandbox.store.delivered
    assert sandbox.store.stats()["duplicates"] == 0
    for r in final:
        got = delivered[r["idempotency_key"]]
        if r["status"] == "sent":
            assert got == 1, r
        elif r["status"] == "unknown":
            assert got <= 1 and r["reason"] == "lease_expired_while_sending", r
    if idempotent:
        assert statuses == {"sent": len(keys)}
    print(f"\nfinal: {dict(statuses)}; sandbox: {sandbox.store.stats()}")
    return statuses


@pytest.mark.parametrize("channel,idempotent", [("email", True), ("sms", False)])
def test_crash_then_resume(tmp_path: Path, db_url: str, engine: sa.Engine, sandbox,
                           channel: str, idempotent: bool) -> None:
    n = 2000 if channel == "email" else 600
    _, keys = crash_and_resume(tmp_path, db_url, engine, sandbox, n, channel=channel,
                               idempotent=idempotent)
    check(engine, sandbox, keys, idempotent)


@pytest.mark.slow
@pytest.mark.parametrize("channel,idempotent", [("email", True), ("email", False), ("sms", True)])
def test_crash_then_resume_10k(tmp_path: Path, db_url: str, engine: sa.Engine, sandbox,
                               channel: str, idempotent: bool) -> None:
    _, keys = crash_and_resume(tmp_path, db_url, engine, sandbox, 10_000, channel=channel,
                               idempotent=idempotent)
    check(engine, sandbox, keys, idempotent)
