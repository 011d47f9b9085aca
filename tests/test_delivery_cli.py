"""``clm sandbox`` as its own process, and ``clm dispatch`` end to end against it."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from clm_core.delivery.sandbox import spawn
from clm_core.delivery.testing import seed_outbox, write_project
from tests.delivery_fixtures import clm, rows


def test_sandbox_process_and_dispatch_command(
    tmp_path: Path, db_url: str, engine: sa.Engine
) -> None:
    proc, url = spawn()
    try:
        faults = httpx.post(f"{url}/_sandbox/faults", json={"rate_401": 1.0, "apis": ["twilio"]})
        assert faults.status_code == 200 and faults.json()["rate_401"] == 1.0
        assert httpx.post(f"{url}/_sandbox/faults", json={"rate_4O1": 1}).status_code == 400
        root = write_project(tmp_path / "p", {"sandbox_url": url}, db_url)
        seed_outbox(engine, 3, channel="email", prefix="e")
        seed_outbox(engine, 2, channel="sms", prefix="s")

        run = clm(root, "dispatch", env={"TWILIO_AUTH_TOKEN": "revoked-token-123456"})
        out, err = run.communicate(timeout=60)
        assert run.returncode == 1
        assert "sent 3, failed 0" in out.decode()
        assert "error: stopped sending: sms: twilio: 20003" in err.decode()
        assert "revoked-token-123456" not in out.decode() + err.decode()
        final = {r["idempotency_key"]: (r["status"], r["reason"]) for r in rows(engine)}
        assert (
            sorted(final.values()) == [("pending", "provider_halted")] * 2 + [("sent", "sent")] * 3
        )

        stats = httpx.get(f"{url}/_sandbox/stats").json()
        assert stats["deliveries"] == 3 and stats["faults"] == {"401": 2}  # one wave, then halted
        got = httpx.get(f"{url}/_sandbox/deliveries", params={"key": "e:email:1"}).json()[
            "deliveries"
        ]
        assert got[0]["to"] == "customer1@example.com" and got[0]["subject"].startswith(
            "We miss you"
        )
        listed = httpx.get(f"{url}/_sandbox/requests", params={"api": "sendgrid"}).json()
        assert listed["total"] == 1 and listed["requests"][0]["auth"] == "Bearer"
    finally:
        proc.terminate()
        proc.wait()
