"""Provider callbacks over real HTTP (uvicorn) on SQLite and PostgreSQL: signed batches of mixed
events, replayed and shuffled, leave exactly the expected delivery statuses, engagement events
and suppressions; a forged signature stores nothing; a malformed body stores nothing."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette

from clm_core.db import tables as t
from clm_core.delivery.providers.sms import status_callback_url
from clm_core.delivery.testing import seed_outbox
from clm_core.errors import SignatureError
from clm_core.feedback import signatures as sig
from clm_core.feedback.config import WebhookConfig
from clm_core.runs import utcnow
from clm_core.settings import Settings
from clm_core.web.app import create_app
from clm_core.web.hooks import Webhooks
from tests.web_fixtures import serving

MAILGUN_KEY = "test-mailgun-signing-key"
TWILIO_TOKEN = "test-twilio-auth-token"
ALIYUN_TOKEN = "test-aliyun-path-token-0123456789"
PRIVATE = ec.generate_private_key(ec.SECP256R1())


def config(**kw: Any) -> WebhookConfig:
    return WebhookConfig(sendgrid_public_key=sig.public_key_b64(PRIVATE),
                         mailgun_signing_key=MAILGUN_KEY, twilio_auth_token=TWILIO_TOKEN,
                         aliyun_path_token=ALIYUN_TOKEN, soft_bounce_limit=3, **kw)


# --- signatures -------------------------------------------------------------------------------

def test_twilio_signature_matches_the_sdk_test_vector() -> None:
    params = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"),
              ("From", "+12349013030"), ("To", "+18005551212")]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert sig.twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    sig.verify_twilio("12345", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    with pytest.raises(SignatureError):
        sig.verify_twilio("12345", url + "&x=1", params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


def test_sendgrid_signature_covers_timestamp_and_exact_body() -> None:
    key = sig.load_sendgrid_key(sig.public_key_b64(PRIVATE))
    body = b'[{"event":"delivered"}]'
    signature = sig.sign_sendgrid(PRIVATE, "1700000000", body)
    sig.verify_sendgrid(key, signature, "1700000000", body)
    for ts, data in (("1700000001", body), ("1700000000", body + b" ")):
        with pytest.raises(SignatureError):
            sig.verify_sendgrid(key, signature, ts, data)
    other = sig.load_sendgrid_key(sig.SANDBOX_SENDGRID_PUBLIC_KEY)
    with pytest.raises(SignatureError):
        sig.verify_sendgrid(other, signature, "1700000000", body)


def test_mailgun_refuses_stale_timestamps_and_reused_tokens() -> None:
    memory = sig.TokenMemory(600)
    now = time.time()
    ts = str(int(now))
    good = sig.sign_mailgun(MAILGUN_KEY, ts, "tok1")
    sig.verify_mailgun(MAILGUN_KEY, ts, "tok1", good, now=now, max_age=600, memory=memory)
    with pytest.raises(SignatureError, match="used before"):
        sig.verify_mailgun(MAILGUN_KEY, ts, "tok1", good, now=now, max_age=600, memory=memory)
    old = str(int(now - 3600))
    with pytest.raises(SignatureError, match="away from now"):
        sig.verify_mailgun(MAILGUN_KEY, old, "tok2", sig.sign_mailgun(MAILGUN_KEY, old, "tok2"),
                           now=now, max_age=600, memory=memory)
    with pytest.raises(SignatureError, match="does not match"):
        sig.verify_mailgun(MAILGUN_KEY, ts, "tok3", good, now=now, max_age=600, memory=memory)


# --- the scenario: what each message goes through, and what must come of it ----------------------

# name: (events in order, final delivery status, opened, clicked, suppressed)
EMAIL_SCENARIOS: dict[str, tuple[list[str], str, int, int, bool]] = {
    "processed": (["accepted"], "none", 0, 0, False),  # no delivery status yet
    "delivered": (["accepted", "delivered"], "delivered", 0, 0, False),
    "opened": (["accepted", "delivered", "open"], "delivered", 1, 0, False),
    "clicked": (["accepted", "delivered", "open", "click"], "delivered", 1, 1, False),
    "machine": (["accepted", "delivered", "machine_open"], "delivered", 0, 0, False),
    # A late 'delivered' after a hard bounce never undoes it.
    "hard": (["accepted", "hard_bounce", "delivered"], "bounced", 0, 0, True),
    "soft": (["accepted", "soft_bounce"], "deferred", 0, 0, False),
    "deferred": (["accepted", "deferred", "delivered"], "delivered", 0, 0, False),
    "complaint": (["accepted", "delivered", "complaint"], "delivered", 0, 0, True),
    "unsubscribe": (["accepted", "delivered", "unsubscribe"], "delivered", 0, 0, True),
    # Three soft bounces of one address reach the limit.
    "soft3": (["accepted", "soft_bounce", "soft_bounce", "soft_bounce"], "deferred", 0, 0, True),
}


@dataclass
class Plan:
    messages: list[dict[str, Any]]  # id, key, address, scenario
    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (message, kind)

    def expected(self, scenarios: dict[str, Any]) -> tuple[Counter[str], Counter[str], set[str]]:
        status: Counter[str] = Counter()
        engagement: Counter[str] = Counter()
        suppressed = set()
        for msg in self.messages:
            _, final, opened, clicked, supp = scenarios[msg["scenario"]]
            status[final] += 1
            engagement["opened"] += opened
            engagement["clicked"] += clicked
            if supp:
                suppressed.add(msg["address"])
        return status, engagement, suppressed


def make_plan(engine: sa.Engine, channel: str, provider: str, n_events: int,
              scenarios: dict[str, Any], seed: int = 7) -> Plan:
    names = list(scenarios)
    picks: list[str] = []
    total = 0
    rng = random.Random(seed)
    while total < n_events:
        name = names[len(picks) % len(names)]
        size = len(scenarios[name][0])
        if total + size > n_events:  # fill the rest with the shortest scenarios
            name = min(names, key=lambda x: len(scenarios[x][0]))
            size = len(scenarios[name][0])
            if total + size > n_events:
                break
        picks.append(name)
        total += size
    keys = seed_outbox(engine, len(picks), channel=channel, prefix=f"{provider}{seed}")
    column = "email" if channel == "email" else "phone"
    now = utcnow()
    with engine.begin() as conn:
        rows = conn.execute(sa.select(t.messages.c.id, t.messages.c.idempotency_key,
                                      t.customers.c[column]).join(t.customers)
                            .where(t.messages.c.idempotency_key.in_(keys))
                            .order_by(t.messages.c.id)).all()
        conn.execute(sa.update(t.messages).where(t.messages.c.idempotency_key.in_(keys))
                     .values(status="sent", provider=provider, sent_at=now,
                             provider_message_id=sa.func.concat("pm-", t.messages.c.id)
                             if engine.dialect.name == "postgresql"
                             else "pm-" + sa.cast(t.messages.c.id, sa.String)))
    plan = Plan([{"id": r[0], "key": r[1], "address": r[2], "scenario": s}
                 for r, s in zip(rows, picks)])
    for msg in plan.messages:
        for kind in scenarios[msg["scenario"]][0]:
            plan.events.append((msg, kind))
    rng.shuffle(plan.events)
    return plan


def db_state(
    engine: sa.Engine, keys: list[str]
) -> tuple[Counter[str], Counter[str], set[str], int]:
    m, e = t.messages, t.events
    with engine.connect() as conn:
        status = Counter({s or "none": n for s, n in conn.execute(
            sa.select(m.c.delivery_status, sa.func.count()).where(m.c.idempotency_key.in_(keys))
            .group_by(m.c.delivery_status))})
        engagement = Counter(dict(conn.execute(sa.select(e.c.event_type, sa.func.count())
                                               .group_by(e.c.event_type)).all()))
        suppressed = {r[0] for r in conn.execute(sa.select(t.suppressions.c.address))}
        stored = int(conn.scalar(sa.select(sa.func.count()).select_from(t.provider_events)) or 0)
    return status, engagement, suppressed, stored


@pytest.fixture
def served(engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``clm serve``'s app (every area) with the test secrets in the environment."""
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", sig.public_key_b64(PRIVATE))
    monkeypatch.setenv("MAILGUN_WEBHOOK_SIGNING_KEY", MAILGUN_KEY)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
    monkeypatch.setenv("ALIYUN_CALLBACK_TOKEN", ALIYUN_TOKEN)
    return lambda: serving(create_app(settings, engine))


# --- SendGrid ---------------------------------------------------------------------------------

def sendgrid_event(msg: dict[str, Any], kind: str) -> dict[str, Any]:
    name = {"accepted": "processed", "hard_bounce": "bounce", "soft_bounce": "bounce",
            "machine_open": "open", "complaint": "spamreport"}.get(kind, kind)
    item: dict[str, Any] = {"email": msg["address"], "timestamp": int(time.time()),
                            "event": name, "sg_event_id": uuid.uuid4().hex,
                            "sg_message_id": f"pm-{msg['id']}.filter", "clm_key": msg["key"]}
    if kind == "hard_bounce":
        item["type"] = "bounce"
    if kind == "soft_bounce":
        item["type"] = "blocked"
    if kind == "machine_open":
        item["sg_machine_open"] = True
    if kind == "click":
        item["url"] = "https://shop.example.com/p/1"
    return item


def post_sendgrid(client: httpx.Client, url: str, items: list[dict[str, Any]],
                  forge: bool = False) -> httpx.Response:
    body = json.dumps(items).encode()
    ts = str(int(time.time()))
    signature = sig.sign_sendgrid(PRIVATE if not forge else ec.generate_private_key(
        ec.SECP256R1()), ts, body)
    return client.post(url + "/hooks/sendgrid", content=body, headers={
        "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "X-Twilio-Email-Event-Webhook-Signature": signature})


def test_sendgrid_batch_of_1000_replayed_and_shuffled(engine: sa.Engine, served: Any) -> None:
    plan = make_plan(engine, "email", "sendgrid", 1000, EMAIL_SCENARIOS)
    items = [sendgrid_event(msg, kind) for msg, kind in plan.events]
    assert len(items) == 1000
    keys = [msg["key"] for msg in plan.messages]
    rng = random.Random(1)
    with served() as url, httpx.Client(timeout=30) as client:
        # Forged first: nothing may be stored.
        assert post_sendgrid(client, url, items[:100], forge=True).status_code == 401
        assert db_state(engine, keys)[3] == 0
        bad = [dict(items[0], timestamp="yesterday")] + items[1:100]
        assert post_sendgrid(client, url, bad).status_code == 400
        assert db_state(engine, keys)[3] == 0
        for _ in range(3):  # the batch, then two replays, each shuffled into other batches
            order = items[:]
            rng.shuffle(order)
            for start in range(0, len(order), 100):
                r = post_sendgrid(client, url, order[start:start + 100])
                assert r.status_code == 200, r.text
    status, engagement, suppressed, stored = db_state(engine, keys)
    want_status, want_engagement, want_suppressed = plan.expected(EMAIL_SCENARIOS)
    assert stored == 1000
    assert status == want_status
    assert engagement == want_engagement
    assert suppressed == want_suppressed
    # Machine opens are stored (flagged), not counted as engagement.
    with engine.connect() as conn:
        machine = conn.scalar(sa.select(sa.func.count()).where(t.provider_events.c.machine))
    assert machine == sum(1 for m in plan.messages if m["scenario"] == "machine")


# --- Mailgun ----------------------------------------------------------------------------------

def mailgun_body(msg: dict[str, Any], kind: str, *, key: str = MAILGUN_KEY,
                 age: float = 0.0, event_id: str | None = None) -> bytes:
    name = {"hard_bounce": "failed", "soft_bounce": "failed", "open": "opened",
            "machine_open": "opened", "click": "clicked", "complaint": "complained",
            "unsubscribe": "unsubscribed", "deferred": "failed"}.get(kind, kind)
    data: dict[str, Any] = {"event": name, "timestamp": time.time(),
                            "id": event_id or uuid.uuid4().hex[:22], "recipient": msg["address"],
                            "user-variables": {"clm_key": msg["key"]},
                            "message": {"headers": {"message-id": f"pm-{msg['id']}"}}}
    if name == "failed":
        data["severity"] = "permanent" if kind == "hard_bounce" else "temporary"
    if kind == "machine_open":
        data["client-info"] = {"bot": "apple"}
    ts, token = str(int(time.time() - age)), uuid.uuid4().hex
    return json.dumps({"signature": {"timestamp": ts, "token": token,
                                     "signature": sig.sign_mailgun(key, ts, token)},
                       "event-data": data}).encode()


MAILGUN_SCENARIOS = {**EMAIL_SCENARIOS,
                     # Mailgun's temporary failure is a soft bounce: 'deferred' is one too.
                     "deferred": (["accepted", "soft_bounce", "delivered"], "delivered", 0, 0,
                                  False)}


def test_mailgun_events_replayed_and_shuffled(engine: sa.Engine, served: Any) -> None:
    plan = make_plan(engine, "email", "mailgun", 200, MAILGUN_SCENARIOS, seed=11)
    ids = [uuid.uuid4().hex[:22] for _ in plan.events]
    keys = [msg["key"] for msg in plan.messages]
    headers = {"Content-Type": "application/json"}
    msg0, kind0 = plan.events[0]
    with served() as url, httpx.Client(timeout=30) as client:
        forged = mailgun_body(msg0, kind0, key="not-the-key")
        assert (
            client.post(url + "/hooks/mailgun", content=forged, headers=headers).status_code == 401
        )
        stale = mailgun_body(msg0, kind0, age=3600)
        assert (
            client.post(url + "/hooks/mailgun", content=stale, headers=headers).status_code == 401
        )
        body = mailgun_body(msg0, kind0)  # the same signed request twice: a replay
        assert client.post(url + "/hooks/mailgun", content=body[:-2],
                           headers=headers).status_code == 400
        assert db_state(engine, keys)[3] == 0
        order = list(range(len(plan.events)))
        rng = random.Random(3)
        for _ in range(3):
            rng.shuffle(order)
            for i in order:
                msg, kind = plan.events[i]
                r = client.post(url + "/hooks/mailgun", headers=headers,
                                content=mailgun_body(msg, kind, event_id=ids[i]))
                assert r.status_code == 200, r.text
        replayed = mailgun_body(msg0, kind0, event_id=ids[0])
        assert (
            client.post(url + "/hooks/mailgun", content=replayed, headers=headers).status_code
            == 200
        )
        assert (
            client.post(url + "/hooks/mailgun", content=replayed, headers=headers).status_code
            == 401
        )
    status, engagement, suppressed, stored = db_state(engine, keys)
    want_status, want_engagement, want_suppressed = plan.expected(MAILGUN_SCENARIOS)
    assert stored == len(plan.events)
    assert status == want_status
    assert engagement == want_engagement
    assert suppressed == want_suppressed


# --- Twilio status callbacks --------------------------------------------------------------------

SMS_SCENARIOS: dict[str, tuple[list[str], str, int, int, bool]] = {
    "queued": (["queued"], "none", 0, 0, False),
    "delivered": (["queued", "sent", "delivered"], "delivered", 0, 0, False),
    "late_sent": (["delivered", "sent"], "delivered", 0, 0, False),
    "unreachable": (["sent", "undelivered_30003"], "undelivered", 0, 0, False),
    "landline": (["sent", "failed_30006", "delivered"], "undelivered", 0, 0, True),
    "opted_out": (["failed_21610"], "undelivered", 0, 0, True),
}


def twilio_post(client: httpx.Client, url: str, msg: dict[str, Any], kind: str,
                token: str = TWILIO_TOKEN) -> httpx.Response:
    status, _, code = kind.partition("_")
    form = {"MessageSid": f"pm-{msg['id']}", "MessageStatus": status, "To": msg["address"],
            "From": "+15005550006", "AccountSid": "AC123"}
    if code:
        form["ErrorCode"] = code
    target = status_callback_url(url + "/hooks/twilio/status", msg["key"])
    return client.post(target, content=urlencode(form).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sig.twilio_signature(token, target, form.items())})


def test_twilio_status_callbacks_replayed_and_shuffled(engine: sa.Engine, served: Any) -> None:
    plan = make_plan(engine, "sms", "twilio", 200, SMS_SCENARIOS, seed=5)
    keys = [msg["key"] for msg in plan.messages]
    want_status, _, want_suppressed = plan.expected(SMS_SCENARIOS)
    want_status = Counter({k: v for k, v in want_status.items()})
    with served() as url, httpx.Client(timeout=30) as client:
        msg0, kind0 = plan.events[0]
        assert twilio_post(client, url, msg0, kind0, token="wrong").status_code == 401
        assert db_state(engine, keys)[3] == 0
        rng = random.Random(9)
        for _ in range(3):
            order = plan.events[:]
            rng.shuffle(order)
            for msg, kind in order:
                assert twilio_post(client, url, msg, kind).status_code == 200
    status, _, suppressed, stored = db_state(engine, keys)
    assert stored == len(plan.events)
    assert status == want_status
    assert suppressed == want_suppressed


# --- Aliyun receipts ----------------------------------------------------------------------------

def aliyun_report(msg: dict[str, Any], kind: str) -> dict[str, Any]:
    ok = kind == "delivered"
    code = {"delivered": "DELIVERED", "invalid": "MOBILE_NUMBER_ILLEGAL"}.get(kind,
                                                                             "MOBILE_NOT_REACHABLE")
    return {"phone_number": msg["address"].removeprefix("+"), "send_time": "2026-11-29 10:00:00",
            "report_time": "2026-11-29 10:00:05", "success": ok, "err_code": code,
            "err_msg": code, "sms_size": "1", "biz_id": f"pm-{msg['id']}", "out_id": msg["key"]}


ALIYUN_SCENARIOS: dict[str, tuple[list[str], str, int, int, bool]] = {
    "delivered": (["delivered"], "delivered", 0, 0, False),
    "unreachable": (["unreachable"], "undelivered", 0, 0, False),
    "invalid": (["invalid"], "undelivered", 0, 0, True),
}


def test_aliyun_reports_replayed_and_shuffled(engine: sa.Engine, served: Any) -> None:
    plan = make_plan(engine, "sms", "aliyun", 300, ALIYUN_SCENARIOS, seed=13)
    keys = [msg["key"] for msg in plan.messages]
    items = [aliyun_report(msg, kind) for msg, kind in plan.events]
    with served() as url, httpx.Client(timeout=30) as client:
        wrong = client.post(f"{url}/hooks/aliyun/guessed", json=items[:50])
        assert wrong.status_code == 404
        assert client.post(f"{url}/hooks/aliyun/{ALIYUN_TOKEN}",
                           content=b'[{"phone_number": 1}]').status_code == 400
        assert db_state(engine, keys)[3] == 0
        check = client.get(f"{url}/hooks/aliyun/{ALIYUN_TOKEN}")
        assert check.json() == {"code": 0, "msg": "成功"}
        rng = random.Random(2)
        for _ in range(3):
            order = items[:]
            rng.shuffle(order)
            for start in range(0, len(order), 50):
                r = client.post(f"{url}/hooks/aliyun/{ALIYUN_TOKEN}", json=order[start:start + 50])
                assert r.status_code == 200 and r.json()["code"] == 0
    status, _, suppressed, stored = db_state(engine, keys)
    want_status, _, want_suppressed = plan.expected(ALIYUN_SCENARIOS)
    assert stored == len(items)
    assert status == want_status
    assert suppressed == want_suppressed


def test_oversized_body_is_refused_and_stores_nothing(engine: sa.Engine) -> None:
    hooks = Webhooks(engine, config(max_body_bytes=1000))
    with serving(Starlette(routes=hooks.routes())) as url, httpx.Client() as client:
        r = client.post(url + "/hooks/sendgrid", content=b"[" + b" " * 2000 + b"]")
        assert r.status_code == 413
    assert db_state(engine, [])[3] == 0


# --- inbound SMS ---------------------------------------------------------------------------------

def twilio_inbound(client: httpx.Client, url: str, sender: str, text: str, sid: str,
                   token: str = TWILIO_TOKEN) -> httpx.Response:
    form = {"MessageSid": sid, "From": sender, "To": "+15005550006", "Body": text,
            "NumSegments": "1"}
    target = url + "/hooks/twilio/inbound"
    return client.post(target, content=urlencode(form).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sig.twilio_signature(token, target, form.items())})


def sms_consent(engine: sa.Engine, phone: str) -> tuple[bool, bool, int]:
    with engine.connect() as conn:
        consent = conn.scalar(
            sa.select(t.customers.c.consent_sms).where(t.customers.c.phone == phone)
        )
        suppressed = conn.scalar(sa.select(sa.func.count()).where(
            t.suppressions.c.channel == "sms", t.suppressions.c.address == phone))
        rows = conn.scalar(sa.select(sa.func.count()).select_from(t.consent_ledger).where(
            t.consent_ledger.c.address == phone))
    return bool(consent), bool(suppressed), int(rows or 0)


def test_twilio_inbound_stop_and_start_replayed(engine: sa.Engine, served: Any) -> None:
    seed_outbox(engine, 1, channel="sms", prefix="in")
    with engine.connect() as conn:
        phone = conn.scalar(sa.select(t.customers.c.phone))
    with served() as url, httpx.Client(timeout=30) as client:
        assert (
            twilio_inbound(client, url, phone, "STOP", "SMstop1", token="forged").status_code == 401
        )
        assert sms_consent(engine, phone) == (True, False, 0)
        first = twilio_inbound(client, url, phone, " stop ", "SMstop1")
        assert first.status_code == 200 and "<Message>" in first.text  # one confirmation
        again = twilio_inbound(client, url, phone, " stop ", "SMstop1")  # redelivered
        assert again.status_code == 200 and "<Message>" not in again.text
        assert sms_consent(engine, phone) == (False, True, 1)
        assert "<Message>" in twilio_inbound(client, url, phone, "START", "SMstart1").text
        twilio_inbound(client, url, phone, "START", "SMstart1")
        assert sms_consent(engine, phone) == (True, False, 2)
        plain = twilio_inbound(client, url, phone, "please don't stop", "SMtext1")
        assert plain.status_code == 200 and "<Message>" not in plain.text
    assert sms_consent(engine, phone) == (True, False, 2)


def test_aliyun_inbound_td_withdraws_once(engine: sa.Engine, served: Any) -> None:
    seed_outbox(engine, 1, channel="sms", prefix="ali-in")
    with engine.begin() as conn:
        conn.execute(sa.update(t.customers).values(phone="+8613800138000"))
    item = {"phone_number": "13800138000", "content": "ＴＤ", "send_time": "2026-11-29 10:00:00",
            "dest_code": "1069", "sequence_id": 12345}
    with served() as url, httpx.Client(timeout=30) as client:
        for _ in range(3):
            r = client.post(f"{url}/hooks/aliyun/{ALIYUN_TOKEN}", json=[item])
            assert r.json() == {"code": 0, "msg": "接收成功"}
    assert sms_consent(engine, "+8613800138000") == (False, True, 1)


def test_requests_waiting_for_the_writer_are_committed_together() -> None:
    """Group commit: while one write runs, the requests that arrive queue; the next write takes
    all of them at once, each returns only after that write, and a failed write fails every
    request it held (none is answered as stored)."""
    import threading

    from clm_core.web.hooks import GroupCommit, _Job

    writes: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()
    fail = [False]

    def write(jobs: list[_Job]) -> None:
        writes.append([len(j.events) for j in jobs])
        if len(writes) == 1:
            first_running.set()
            assert release.wait(10)
        if fail[0]:
            raise RuntimeError("database down")

    group = GroupCommit(write)
    jobs = [_Job([object()] * n) for n in (1, 2, 3, 4)]  # type: ignore[list-item]
    done: list[int] = []

    def post(job: _Job) -> None:
        group.run(job)
        done.append(len(job.events))

    first = threading.Thread(target=post, args=(jobs[0],))
    first.start()
    assert first_running.wait(10)
    rest = [threading.Thread(target=post, args=(j,)) for j in jobs[1:]]
    for th in rest:
        th.start()
    deadline = time.monotonic() + 10
    while len(group._queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == []  # nobody is answered while the write holding them runs
    release.set()
    for th in [first, *rest]:
        th.join(10)
    assert writes[0] == [1] and sorted(writes[1]) == [2, 3, 4] and len(writes) == 2
    assert sorted(done) == [1, 2, 3, 4]

    fail[0] = True
    errors: list[BaseException] = []

    def post_failing(job: _Job) -> None:
        try:
            group.run(job)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post_failing, args=(_Job([]),)) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(errors) == 3 and all(str(e) == "database down" for e in errors)


def test_callbacks_find_their_message_by_provider_id_through_an_index(
        engine: sa.Engine) -> None:
    """A callback without our key is matched by the provider's message id: the lookup must
    use the index (a full scan of the messages per callback batch grows with every message
    ever sent). 2,000 sent messages, the planner's statistics current."""
    from clm_core.db import rowset
    from clm_core.feedback.ingest import _link_sql

    seed_outbox(engine, 2000, channel="sms", prefix="plan")
    with engine.begin() as conn:
        conn.execute(t.messages.update().values(
            status="sent", provider_message_id=sa.literal("SM") + sa.cast(t.messages.c.id,
                                                                          sa.String)))
        conn.exec_driver_sql("ANALYZE")
    sql = _link_sql(engine.dialect.name)["pmid"]
    params = {"keys": json.dumps(["SM1", "SM2"])}
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # at 2,000 rows PostgreSQL rightly prefers reading them all and hashing the ids;
            # with that priced out, the plan shows whether an index serves the lookup (at a
            # million messages it is the cheaper plan anyway)
            for off in ("seqscan", "hashjoin", "mergejoin"):
                conn.exec_driver_sql(f"SET LOCAL enable_{off} = off")
        plan = " ".join(str(v) for r in rowset.execute(conn, explain + sql, params) for v in r)
        assert len(rowset.execute(conn, sql, params)) == 2
    assert "ix_messages_provider_message_id" in plan, plan
