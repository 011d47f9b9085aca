"""Acceptance over real HTTP against ``clm serve`` (uvicorn in its own process), on SQLite and
PostgreSQL: the links in sent emails work, one-click unsubscribes once, GET and forged tokens
change nothing, a later dispatch sends nothing to who unsubscribed or texted STOP, and tracked
clicks redirect and are recorded."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from clm_core.consent.config import ConsentConfig
from clm_core.consent.keywords import apply_inbound
from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.db import tables as t
from clm_core.delivery.testing import seed_outbox, write_templates
from clm_core.runs import utcnow
from tests.delivery_fixtures import dispatch, project, sandbox, sandbox_server  # noqa: F401
from tests.test_web_app import links_of
from tests.web_server import clm_serve

TRACKED_HTML = ('<p>Hi {{ customer.first_name }}</p>'
                '<p><a href="{{ links.shop }}/sale?utm=clm&amp;x=2">See the sale</a></p>'
                '<p><a href="{{ links.unsubscribe }}">Unsubscribe</a></p>')


def queue(engine: sa.Engine, customer_ids: list[int], channel: str, tag: str) -> list[str]:
    """One more due message for each existing customer; returns their keys."""
    now = utcnow()
    keys = [f"{tag}:{channel}:{cid}" for cid in customer_ids]
    with engine.begin() as conn:
        conn.execute(sa.insert(t.messages), [{
            "idempotency_key": key, "customer_id": cid, "journey": "winback",
            "journey_version": 1, "step_id": "again", "channel": channel, "template": "winback",
            "tags": ["winback"], "status": "pending", "send_after": now - timedelta(seconds=1),
            "attempts": 0, "created_at": now, "updated_at": now}
            for key, cid in zip(keys, customer_ids)])
    return keys


def state(engine: sa.Engine) -> tuple[list[Any], list[Any], list[Any]]:
    with engine.connect() as conn:
        return (conn.execute(sa.select(t.customers.c.id, t.customers.c.consent_email,
                                       t.customers.c.consent_sms).order_by(t.customers.c.id)).all(),
                conn.execute(sa.select(t.consent_ledger.c.id)).all(),
                conn.execute(sa.select(t.suppressions.c.address)).all())


def test_unsubscribe_and_stop_over_http_then_dispatch_skips_them(
        tmp_path: Path, db_url: str, engine: sa.Engine, sandbox) -> None:  # noqa: F811
    root = project(tmp_path, db_url, sandbox)
    write_templates(root / "templates", {"winback/en/body.html.j2": TRACKED_HTML})
    with (root / "clm.toml").open("a") as f:
        f.write("\n[tracking]\nclicks = true\nbot_window_seconds = 5\n")
    seed_outbox(engine, 2, channel="email", prefix="e")  # customers 1, 2
    seed_outbox(engine, 2, channel="sms", prefix="s")  # customers 3, 4: +12025550003, ...0004

    with clm_serve(root) as (base, proc):
        env = {"CLM_PUBLIC_BASE_URL": base}
        assert dispatch(root, engine, env=env).sent == 4
        mail = next(d for d in sandbox.store.deliveries if d.get("key") == "e:email:1")
        url = mail["headers"]["List-Unsubscribe"].strip("<>")
        assert url.startswith(f"{base}/u/") and url in mail["html"]

        # Tracked click: the link goes through /c/ to the shop. A click right after sending is a
        # mail scanner's (bot_click); one later, from a browser, is engagement (clicked).
        tracked = links_of(mail["html"])[0]
        assert tracked.startswith(f"{base}/c/")
        browser = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Firefox/140.0"}
        hop = httpx.get(tracked, headers=browser)
        clicked_first = time.monotonic()
        assert hop.status_code == 302
        assert hop.headers["location"] == "https://shop.example.com/sale?utm=clm&x=2"
        before = state(engine)

        # GET (what a link scanner does) shows the page and changes nothing.
        page = httpx.get(url)
        assert page.status_code == 200 and "<form" in page.text
        for link in links_of(page.text):
            assert httpx.get(base + link).status_code == 200, link
        assert state(engine) == before

        # An altered token and a token signed with another key change nothing.
        token = url.rsplit("/", 1)[1]
        altered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        forged = Keyring.single(b"not-this-installation").sign(
            SUBSCRIPTION, "email", "e-cust-0000001", utcnow())
        for bad in (altered, forged):
            got = httpx.post(f"{base}/u/{bad}", data={"List-Unsubscribe": "One-Click"})
            assert got.status_code == 400
        assert state(engine) == before

        # RFC 8058 one-click: form-urlencoded, no cookie, no redirect; then again, multipart.
        first = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
        assert first.status_code == 200 and not first.cookies and "location" not in first.headers
        second = httpx.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert second.status_code == 200
        people, ledger_rows, suppressed = state(engine)
        assert [tuple(p) for p in people][:2] == [(1, False, True), (2, True, True)]
        assert len(ledger_rows) == 1 and [s.address for s in suppressed] == [
            "customer1@example.com"
        ]

        # A STOP texted from customer 3's phone (as the provider's inbound webhook hands it on).
        with engine.begin() as conn:
            stop = apply_inbound(conn, phone="+12025550003", text="STOP", received_at=utcnow(),
                                 event_id="SM-test-1", provider="twilio", config=ConsentConfig(),
                                 store="CLM Store")
        assert stop.changed == 1

        time.sleep(max(0.0, 5.1 - (time.monotonic() - clicked_first)))  # past the bot window
        assert httpx.get(tracked, headers=browser).status_code == 302

        # The next run sends to customers 2 and 4 only.
        sandbox.store.reset()
        again = queue(engine, [1, 2], "email", "r2") + queue(engine, [3, 4], "sms", "r2")
        report = dispatch(root, engine, env=env)
        assert (report.sent, report.skipped) == (2, 2)
        sent_keys = {d.get("key") for d in sandbox.store.deliveries}
        assert sent_keys == {again[1], again[3]}
        with engine.connect() as conn:
            reasons = dict(conn.execute(sa.select(t.messages.c.idempotency_key, t.messages.c.reason)
                                        .where(t.messages.c.idempotency_key.in_(again))).all())
            events = conn.execute(sa.select(t.events.c.event_type, t.events.c.properties)
                                  .order_by(t.events.c.id)).all()
        assert reasons[again[0]] == "no_consent" and reasons[again[2]] == "no_consent"
        assert [e.event_type for e in events] == ["bot_click", "clicked"]
        assert events[0].properties["bot_reason"] == "too_soon_after_sending"

        # Graceful shutdown on SIGTERM: exit status 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    log = (root / "serve.log").read_text()
    assert token not in log and token.split(".")[1] not in log and "/u/<redacted>" in log
