"""Reconciliation of doubt: SIGKILL ``clm dispatch`` three times while it sends SMS through the
sandbox's non-deduplicating Twilio API with status callbacks on; ``clm dispatch --reconcile``
then leaves no message unknown, and no SMS reached the provider twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.delivery.testing import seed_outbox
from clm_core.settings import load_settings
from clm_core.web.app import create_app
from tests.delivery_fixtures import clm, project, rows, sandbox, sandbox_server  # noqa: F401
from tests.web_fixtures import serving

# A request's timeout of 2 s (a lease must outlast two): at 1 s, on a slow machine running the
# suite on both cores, the final pass once saw 16 requests in flight time out together (the
# sandbox stalled), leaving them in doubt after the reconciliation had settled every other.
LEASE = {"timeout": 2.0, "lease_seconds": 5, "backoff_base": 0.05, "backoff_max": 0.5,
         "batch_size": 100, "lanes": 4}


@pytest.mark.slow
def test_three_kills_then_reconcile(tmp_path: Path, db_url: str, engine: sa.Engine,
                                    sandbox) -> None:  # noqa: F811
    n = 600
    sandbox.store.set_faults({"idempotency": False})  # every request delivers
    root = project(tmp_path, db_url, sandbox, **LEASE,
                   providers={"twilio": {"idempotent": False}})
    seed_outbox(engine, n, channel="sms", prefix="r")
    settings = load_settings(root, env={**os.environ})
    with serving(create_app(settings, engine)) as url:
        sandbox.store.callbacks.configure({"url": url, "seed": 3, "delay_seconds": 2.0,
                                           "rate_duplicate": 0.1})
        for k in range(1, 4):
            run = clm(root, "dispatch")
            deadline = time.monotonic() + 120
            while len(sandbox.store.deliveries) < n * k // 4:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "dispatch made no progress"
                time.sleep(0.005)
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            time.sleep(LEASE["lease_seconds"] + 0.5)  # the killed claims' leases run out
        final = clm(root, "dispatch", "--reconcile", "--wait", "5")
        out, err = final.communicate(timeout=300)
        assert final.returncode == 0, err.decode()
        by_callback = int(out.decode().split("sent (callbacks), ")[0]
                          .rsplit(": ", 1)[1].replace(",", ""))
    statuses = Counter(r["status"] for r in rows(engine))
    print(f"\n{out.decode().strip()}\nfinal: {dict(statuses)}; sandbox: {sandbox.store.stats()}")
    assert statuses == Counter({"sent": n})
    assert sandbox.store.stats()["duplicates"] == 0  # no SMS was received twice
    assert len(sandbox.store.delivered) == n
    with engine.connect() as conn:
        reasons = Counter(r[0] for r in conn.execute(sa.select(t.messages.c.reason)))
    # Doubt existed and was settled both ways (or callbacks settled all of it).
    assert by_callback + reasons["reconciled_by_list"] + reasons["reconciled_not_sent"] > 0


def test_provider_list_settles_unknown_sms(tmp_path: Path, db_url: str, engine: sa.Engine,
                                           sandbox) -> None:  # noqa: F811
    """Without callbacks: what the sandbox's message list shows is sent (with its sid), what it
    does not show is requeued; a listed SMS settles one message only."""
    import asyncio
    from datetime import timedelta

    from clm_core.delivery.config import load_delivery_config
    from clm_core.delivery.providers import build_provider
    from clm_core.delivery.providers.sms import content_digest
    from clm_core.delivery.reconcile import reconcile
    from clm_core.runs import utcnow

    sandbox.store.set_faults({"idempotency": False})
    root = project(tmp_path, db_url, sandbox, **LEASE)
    seed_outbox(engine, 4, channel="sms", prefix="l")
    config = load_delivery_config(load_settings(root, env={**os.environ}))
    twilio = build_provider(config.channels["sms"])
    with engine.connect() as conn:
        msgs = conn.execute(sa.select(t.messages.c.id, t.customers.c.phone)
                            .join(t.customers).order_by(t.messages.c.id)).all()
    now = utcnow()
    with engine.begin() as conn:
        for mid, phone in msgs:
            conn.execute(sa.update(t.messages).where(t.messages.c.id == mid).values(
                status="unknown", reason="lease_expired_while_sending", updated_at=now,
                content_digest=content_digest(phone, f"hello {mid}")))

    async def go() -> object:
        from clm_core.delivery.model import Outbound
        # The provider got the first two messages; the other two never reached it.
        for mid, phone in msgs[:2]:
            await twilio.send([Outbound(key=f"x{mid}", to=phone, channel="sms",
                                        text=f"hello {mid}")])
        try:
            return await reconcile(engine, {"sms": twilio}, utcnow(), timedelta(seconds=3))
        finally:
            await twilio.aclose()

    report = asyncio.run(go())
    got = {r["id"]: (r["status"], r["reason"], r["provider_message_id"]) for r in rows(engine)}
    listed = {d["message_id"] for d in sandbox.store.deliveries}
    assert report.by_list == 2 and report.requeued == 2 and report.left == 0  # type: ignore[attr-defined]
    for mid, _ in msgs[:2]:
        assert got[mid][:2] == ("sent", "reconciled_by_list") and got[mid][2] in listed
    for mid, _ in msgs[2:]:
        assert got[mid][:2] == ("pending", "reconciled_not_sent")
