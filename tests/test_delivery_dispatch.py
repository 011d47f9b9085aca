"""The dispatcher end to end against the sandbox, on SQLite and PostgreSQL: coupons first,
render contexts, consent and suppression re-checks, opt-outs, render errors, lease recovery,
the lanes' waves sharing a provider's slots."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.db import tables as t
from clm_core.delivery import outbox
from clm_core.delivery.config import load_delivery_config
from clm_core.delivery.dispatcher import Dispatcher
from clm_core.delivery.providers import build_provider
from clm_core.delivery.testing import seed_outbox, write_project, write_templates
from clm_core.runs import utcnow
from clm_core.settings import load_settings
from tests.delivery_fixtures import KEY, dispatch, project, rows, sandbox, sandbox_server  # noqa: F401

COUPON = {"kind": "percent", "value": 15, "expires_in_days": 14}


def add_orders(engine: sa.Engine, customer_ids: list[int]) -> None:
    """Customer 1 bought A and B; others bought A, B, C together: C is what goes with A and B."""
    now = utcnow()
    with engine.begin() as conn:
        for n, cid in enumerate(customer_ids, start=1):
            conn.execute(sa.insert(t.orders).values(id=n, external_id=f"o{n}", customer_id=cid,
                                                    ordered_at=now, amount=30))
            skus = ["A", "B"] if n == 1 else ["A", "B", "C"]
            conn.execute(sa.insert(t.order_items), [
                {"order_id": n, "line_no": i, "sku": s, "product_name": f"Album {s}", "quantity": 1}
                for i, s in enumerate(skus)])


def test_email_with_coupon_recommendations_and_unsubscribe(tmp_path: Path, db_url: str,
                                                          engine: sa.Engine, sandbox) -> None:
    root = project(tmp_path, db_url, sandbox)
    keys = seed_outbox(engine, 5, channel="email", coupon=COUPON)
    add_orders(engine, [1, 2, 3])

    report = dispatch(root, engine)
    assert (report.sent, report.failed) == (5, 0)
    with engine.connect() as conn:
        coupons = {r.idempotency_key: r for r in conn.execute(sa.select(t.coupons))}
    assert set(coupons) == set(keys) and len({c.code for c in coupons.values()}) == 5
    first = next(
        d for d in sandbox.store.deliveries if d["api"] == "sendgrid" and d["key"] == keys[0]
    )
    assert coupons[keys[0]].code in first["text"] and "15% off" in first["text"]
    assert "Album C" in first["html"] and "Album A" not in first["html"]  # co-purchased, not owned
    assert 'style="color: #333' in first["html"]  # CSS inlined
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = first["headers"]["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://") and url in first["text"]
    claim = Keyring.single(KEY).verify(url.rsplit("/", 1)[1], SUBSCRIPTION, utcnow())
    assert (claim.channel, claim.customer) == ("email", "m-cust-0000001")
    promo = [d for d in sandbox.store.deliveries if d["api"] == "stripe"]
    assert len(promo) == 5 and {d["code"] for d in promo} == {c.code for c in coupons.values()}

    # A second run finds nothing due: nothing is sent or issued again.
    again = dispatch(root, engine)
    assert again.claimed == 0 and sandbox.store.stats()["duplicates"] == 0


def test_consent_suppression_and_opt_out(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    root = project(tmp_path, db_url, sandbox)
    seed_outbox(engine, 4, channel="sms", prefix="a")
    with engine.begin() as conn:
        conn.execute(sa.update(t.customers).where(t.customers.c.id == 1).values(consent_sms=False))
        conn.execute(sa.insert(t.suppressions).values(channel="sms", address="+12025550002",
                                                      reason="unsubscribed", created_at=utcnow()))
    sandbox.store.set_faults({"optout": ["+12025550003"]})
    dispatch(root, engine)
    got = {r["customer_id"]: (r["status"], r["reason"]) for r in rows(engine)}
    assert got == {1: ("skipped", "no_consent"), 2: ("skipped", "suppressed"),
                   3: ("failed", "recipient_opted_out"), 4: ("sent", "sent")}
    with engine.connect() as conn:
        sup = conn.execute(
            sa.select(t.suppressions).where(t.suppressions.c.address == "+12025550003")
        ).one()
    assert (sup.channel, sup.reason, sup.source, sup.customer_id) == (
        "sms",
        "opted_out",
        "twilio",
        3,
    )
    assert [d["to"] for d in sandbox.store.deliveries] == ["+12025550004"]


def test_render_error_fails_that_message_only(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    root = project(tmp_path, db_url, sandbox)
    write_templates(root / "templates", {"broken/en/sms.txt.j2": "Hi\n{{ customer.nickname }}"})
    seed_outbox(engine, 2, channel="sms", prefix="b")
    seed_outbox(engine, 1, channel="sms", prefix="c", template="broken")
    dispatch(root, engine)
    final = rows(engine)
    assert [r["status"] for r in final] == ["sent", "sent", "failed"]
    bad = final[2]
    assert bad["reason"] == "render_error" and "broken/en/sms.txt.j2:2" in bad["error_message"]
    assert "nickname" in bad["error_message"]


def test_locale_fallback_and_transactional(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    root = project(tmp_path, db_url, sandbox)
    seed_outbox(engine, 1, channel="email", locale="zh-CN", prefix="z")
    [fr_key] = seed_outbox(engine, 1, channel="email", locale="fr", prefix="f")
    with engine.begin() as conn:
        conn.execute(sa.update(t.messages).where(t.messages.c.idempotency_key == fr_key)
                     .values(tags=["transactional"]))
    dispatch(root, engine)
    zh, fr = sorted(sandbox.store.deliveries, key=lambda d: d["key"])[::-1]
    assert "好久不见" in zh["subject"] and "List-Unsubscribe" in zh["headers"]
    assert fr["subject"].startswith("We miss you") and "List-Unsubscribe" not in fr["headers"]


def test_expired_leases_resolved_safely(db_url: str, engine: sa.Engine) -> None:
    seed_outbox(engine, 6, channel="sms", prefix="l")
    seed_outbox(engine, 2, channel="webhook", prefix="w")
    now = utcnow()
    writer = outbox.writer_engine(engine)
    claimed = outbox.claim(writer, "dead", 10, now, timedelta(seconds=5))
    assert len(claimed) == 8 and outbox.claim(writer, "other", 10, now, timedelta(seconds=5)) == []
    sms_ids = [r["id"] for r in claimed if r["channel"] == "sms"]
    hook_ids = [r["id"] for r in claimed if r["channel"] == "webhook"]
    held = outbox.mark_sending(writer, "dead", sms_ids[:3] + hook_ids, [r["id"] for r in claimed],
                               now, timedelta(seconds=5))
    assert held == set(sms_ids[:3] + hook_ids)

    assert outbox.recover_expired(writer, now + timedelta(seconds=1), ["webhook"]).requeued == 0
    got = outbox.recover_expired(writer, now + timedelta(seconds=6), ["webhook"])
    assert (got.requeued, got.unknown) == (5, 3)  # 3 never sent + 2 idempotent resend; 3 unknown
    by_id = {r["id"]: r for r in rows(engine)}
    assert all(by_id[i]["status"] == "unknown" for i in sms_ids[:3])
    assert all(by_id[i]["status"] == "pending" for i in sms_ids[3:] + hook_ids)

    # The old owner still reports its real outcome over ``unknown``; a stranger cannot.
    assert (
        outbox.record(writer, "stranger", [outbox.Resolution(sms_ids[0], "sent", "sent")], now) == 0
    )
    assert outbox.record(writer, "dead", [outbox.Resolution(sms_ids[0], "sent", "sent")], now) == 1
    # An operator may requeue the remaining unknowns after checking the provider.
    assert outbox.requeue(writer, now, "unknown") == 2
    assert Counter(r["status"] for r in rows(engine)) == {"pending": 7, "sent": 1}


def test_provider_halt_keeps_messages_pending(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    root = project(tmp_path, db_url, sandbox, sms="aliyun")
    seed_outbox(engine, 3, channel="sms", prefix="h")
    env = {
        "ALIYUN_ACCESS_KEY_ID": "sandbox-access_key_id",
        "ALIYUN_ACCESS_KEY_SECRET": "not-the-secret",
    }
    report = dispatch(root, engine, env=env)
    assert "SignatureDoesNotMatch" in report.halted["sms"]
    final = rows(engine)
    assert {(r["status"], r["reason"]) for r in final} == {("pending", "provider_halted")}
    assert not sandbox.store.deliveries
    assert "not-the-secret" not in str(final) and "not-the-secret" not in report.halted["sms"]


def test_halted_channel_spends_no_attempts(tmp_path: Path, db_url: str, engine: sa.Engine,
                                           sandbox) -> None:
    """Three runs against a revoked key leave attempts untouched; after the key is fixed a 429
    is one attempt, not the last (max_attempts 3)."""
    root = project(tmp_path, db_url, sandbox, sms="aliyun", max_attempts=3, backoff_base=0,
                   backoff_max=0)
    seed_outbox(engine, 3, channel="sms", prefix="o")
    bad = {"ALIYUN_ACCESS_KEY_ID": "sandbox-access_key_id", "ALIYUN_ACCESS_KEY_SECRET": "revoked"}
    for _ in range(3):
        report = dispatch(root, engine, env=bad)
        assert report.released == 3 and "SignatureDoesNotMatch" in report.halted["sms"]
    assert {(r["status"], r["reason"], r["attempts"]) for r in rows(engine)} == {
        ("pending", "provider_halted", 0)}
    sandbox.store.set_faults({"rate_429": 1.0, "apis": ["aliyun"]})
    dispatch(root, engine)
    assert {(r["status"], r["attempts"]) for r in rows(engine)} == {("pending", 1)}
    sandbox.store.set_faults({})
    dispatch(root, engine, wait=5.0)  # the 429's Retry-After (1 s) is honoured, then it sends
    assert {(r["status"], r["attempts"]) for r in rows(engine)} == {("sent", 2)}


QUIET_JOURNEY = """
name: winback
status: active
entry:
  stage: {to: at_risk}
contact_policy:
  quiet_hours_window: {start: "22:00", end: "07:30"}
steps:
  - id: email_1
    send: {channel: email, template: winback}
"""


def test_retry_due_in_quiet_hours_waits_for_their_end(tmp_path: Path, db_url: str,
                                                      engine: sa.Engine, sandbox) -> None:
    """Backoff moved a retry to 22:30 local time: when it comes due it is deferred to 07:30 (the
    journey's quiet hours), without spending an attempt, and sent then. A first attempt that
    planning scheduled is not second-guessed."""
    import asyncio

    from clm_core.delivery.config import load_delivery_config
    from clm_core.delivery.dispatcher import Dispatcher
    from clm_core.settings import load_settings

    root = project(tmp_path, db_url, sandbox)
    retry, first = seed_outbox(engine, 2, channel="email", prefix="q")
    late = (utcnow() + timedelta(days=1)).replace(hour=22, minute=30, second=0, microsecond=0)
    m = t.messages
    with engine.begin() as conn:
        conn.execute(sa.insert(t.journey_versions).values(
            journey="winback", version=1, content_hash="x", status="active", created_at=late,
            definition={"source": QUIET_JOURNEY, "file": "winback.yaml"}))
        conn.execute(sa.update(m).where(m.c.idempotency_key == retry).values(
            attempts=1, reason="retry_scheduled", error_code="429"))
    settings = load_settings(root)

    def run(at: datetime) -> None:
        asyncio.run(Dispatcher(engine, settings, load_delivery_config(settings), signing_key=KEY,
                               clock=lambda: at).run())

    run(late)
    final = {r["idempotency_key"]: r for r in rows(engine)}
    assert (final[retry]["status"], final[retry]["reason"], final[retry]["attempts"]) == (
        "deferred", "quiet_hours", 1)
    assert final[retry]["send_after"] == (late + timedelta(days=1)).replace(hour=7, minute=30)
    assert final[first]["status"] == "sent"
    assert retry not in sandbox.store.delivered
    run(late + timedelta(hours=9))
    final = {r["idempotency_key"]: r for r in rows(engine)}
    assert (final[retry]["status"], final[retry]["attempts"]) == ("sent", 2)
    assert sandbox.store.delivered[retry] == 1


def test_dispatch_writer_survives_a_lost_connection(db_url: str, engine: sa.Engine) -> None:
    """The dispatcher's writer does not test connections before use: a wave whose pooled
    connection the server dropped is recorded and marked on a new one."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server-side disconnect needs PostgreSQL")
    seed_outbox(engine, 8, channel="sms", prefix="lost")
    writer = outbox.writer_engine(engine, pinged=False)
    try:
        now, lease = utcnow(), timedelta(seconds=60)
        ids = [r["id"] for r in outbox.claim(writer, "me", 8, now, lease)]
        assert outbox.mark_sending(writer, "me", ids[:4], ids[:4], now, lease) == set(ids[:4])
        with writer.connect() as conn:  # the pooled connection the next wave will get
            pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        done = [outbox.Resolution(i, "sent", "sent", provider="twilio") for i in ids[:4]]
        assert outbox.record_and_mark(writer, "me", done, ids[4:], ids[4:], now,
                                      lease) == (4, set(ids[4:]))
    finally:
        writer.dispose()
    assert Counter((r["status"], r["reason"]) for r in rows(engine)) == {
        ("sent", "sent"): 4, ("claimed", "sending"): 4}


def _sms_without_idempotency(tmp_path: Path, db_url: str, engine: sa.Engine, n: int,
                             prefix: str, batch_size: int, lanes: int) -> tuple[Any, Any]:
    """A project whose SMS provider takes 4 requests at once without idempotency (a wave is
    then 4 messages), and ``n`` SMS in its outbox."""
    root = write_project(tmp_path / "project", {
        "sandbox_url": "http://127.0.0.1:9", "batch_size": batch_size, "lanes": lanes,
        "providers": {"twilio": {"concurrency": 4, "idempotent": False}}}, db_url)
    settings = load_settings(root)
    seed_outbox(engine, n, channel="sms", prefix=prefix)
    return settings, load_delivery_config(settings)


def test_lanes_waves_share_the_provider_slots(tmp_path: Path, db_url: str,
                                              engine: sa.Engine) -> None:
    """Without provider idempotency a wave is the provider's concurrency (4 requests); one slow
    request holds one slot only: the other lanes' waves go on through the other three, never
    more than 4 requests in flight, each message sent once."""
    settings, config = _sms_without_idempotency(tmp_path, db_url, engine, 32, "slots",
                                                batch_size=8, lanes=4)
    in_flight, most, started, sent = 0, 0, [], Counter[str]()
    slow_done: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        started.append(time.perf_counter())
        try:
            first = len(started) == 1
            await asyncio.sleep(0.5 if first else 0.005)
            if first:
                slow_done.append(time.perf_counter())
            sent[request.headers["Idempotency-Key"]] += 1
            return httpx.Response(201, json={"sid": f"SM{len(started)}", "num_segments": "1"})
        finally:
            in_flight -= 1

    provider = build_provider(config.channels["sms"], httpx.MockTransport(handler))
    report = asyncio.run(Dispatcher(engine, settings, config, signing_key=KEY,
                                    providers={"sms": provider}).run())
    assert report.sent == 32 and most <= 4 and set(sent.values()) == {1} and len(sent) == 32
    # Behind the slow request, the others' requests kept going (a lock per wave would have
    # let no other wave start until it finished: at most its own 4 requests).
    assert sum(s < slow_done[0] for s in started) > 8


def test_waves_rendered_as_they_go(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    """A batch is rendered a wave at a time, just before the wave is marked: the first
    request goes out after the first wave's messages are rendered, not the whole batch's."""
    settings, config = _sms_without_idempotency(tmp_path, db_url, engine, 40, "waves",
                                                batch_size=40, lanes=1)
    rendered_before_first: list[int] = []
    renders = 0

    class Counting(Dispatcher):
        def _render(self, row: dict, data: object) -> object:  # type: ignore[override]
            nonlocal renders
            renders += 1
            return super()._render(row, data)  # type: ignore[arg-type]

    async def handler(request: httpx.Request) -> httpx.Response:
        if not rendered_before_first:
            rendered_before_first.append(renders)
        return httpx.Response(201, json={"sid": f"SM{renders}", "num_segments": "1"})

    provider = build_provider(config.channels["sms"], httpx.MockTransport(handler))
    report = asyncio.run(Counting(engine, settings, config, signing_key=KEY,
                                  providers={"sms": provider}).run())
    assert report.sent == 40 and renders == 40
    assert rendered_before_first == [4]


def test_batch_data_as_the_database_returns_it(db_url: str, engine: sa.Engine) -> None:
    """Scores keep their types (integers stay integers, times are datetimes), NULL and NaN
    come back None, suppressions and coupons are found by address and key."""
    from clm_core.delivery.context import load_batch

    seed_outbox(engine, 3, channel="sms", prefix="data")
    now = utcnow().replace(microsecond=0)
    claimed = outbox.claim(engine, "me", 3, now, timedelta(seconds=60))
    ids = [r["customer_id"] for r in claimed]
    with engine.begin() as conn:
        conn.execute(sa.insert(t.customer_scores), [
            {"customer_id": ids[0], "as_of": now.date(), "n_orders": 3, "purchase_days": 2,
             "total_spend": 42.5, "p_alive": float("nan"), "clv_12m": None,
             "last_order_at": now, "recorded_at": now},
            {"customer_id": ids[1], "as_of": now.date(), "n_orders": 0, "purchase_days": 0,
             "total_spend": 0.0, "p_alive": 0.25, "clv_12m": 1.5, "last_order_at": None,
             "recorded_at": now}])
        phone = conn.scalar(sa.select(t.customers.c.phone).where(t.customers.c.id == ids[2]))
        conn.execute(sa.insert(t.suppressions).values(channel="sms", address=phone,
                                                      reason="opted_out", created_at=now))
        conn.execute(sa.insert(t.coupons).values(
            code="C-1", idempotency_key=claimed[0]["idempotency_key"], customer_id=ids[0],
            message_id=claimed[0]["id"], provider="stripe", kind="percent", value=10,
            currency="USD", status="issued", created_at=now))
    data = load_batch(engine, claimed, None)
    first, second = data.scores[ids[0]], data.scores[ids[1]]
    assert (first["n_orders"], first["total_spend"], first["p_alive"], first["clv_12m"]) == (
        3, 42.5, None, None)
    assert type(first["n_orders"]) is int and first["last_order_at"] == now
    assert (second["p_alive"], second["last_order_at"]) == (0.25, None)
    assert ids[2] not in data.scores and set(data.customers) == set(ids)
    assert data.suppressed == {("sms", phone)}
    assert set(data.coupons) == {claimed[0]["idempotency_key"]}
    assert data.customers[ids[0]]["first_name"] and data.consent[ids[0]] == (True, True)
