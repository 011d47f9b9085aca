"""The sandbox's callback sender: after the sandbox accepts a message it reports what happened
to it, the way each provider does, to the web service's webhook routes.

Per accepted message it draws an outcome (``CallbackSettings`` rates): delivered, hard or soft
bounce, deferred then delivered, and after delivery open, click, complaint, unsubscribe. Each
event is signed as its provider signs (SendGrid ECDSA, Mailgun HMAC with a fresh token per
attempt, Twilio X-Twilio-Signature over the URL and form, Aliyun's unguessable path) and posted
after a random delay; some are posted twice (duplicates) or with their order swapped.
Unacknowledged posts (no 2xx, a connection error, a timeout) are retried with growing delays,
as providers do, so a web service that crashed loses nothing; ``acked`` lists every event the
web service acknowledged, which is what a crash test checks against the database.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from clm_core.feedback import events as ev
from clm_core.feedback import signatures as sig
from clm_core.feedback.config import SANDBOX_ALIYUN_TOKEN, SANDBOX_MAILGUN_KEY

SANDBOX_TWILIO_TOKEN = "sandbox-auth_token"  # what the delivery config gives a loopback Twilio


@dataclass
class CallbackSettings:
    url: str | None = None  # base URL of the web service (``clm serve``); None: no callbacks
    rate_bounce: float = 0.02  # hard bounce (SMS: undelivered with a permanent error)
    rate_soft_bounce: float = 0.01
    rate_deferred: float = 0.03  # deferred first, delivered later
    rate_open: float = 0.4  # of delivered
    rate_click: float = 0.3  # of opened
    rate_complaint: float = 0.001  # of delivered email
    rate_unsubscribe: float = 0.005  # of delivered email
    rate_duplicate: float = 0.02  # an event posted a second time
    rate_out_of_order: float = 0.1  # a message's later event posted before an earlier one
    delay_seconds: float = 0.2  # events go out up to this long after the send
    batch_size: int = 100  # SendGrid events per post
    retry_base: float = 0.2  # first retry delay; doubles up to retry_max
    retry_max: float = 5.0
    timeout: float = 10.0
    seed: int | None = None
    sendgrid_private_key: str | None = None  # PEM; None: the sandbox key pair
    mailgun_signing_key: str = SANDBOX_MAILGUN_KEY
    twilio_auth_token: str = SANDBOX_TWILIO_TOKEN
    aliyun_path_token: str = SANDBOX_ALIYUN_TOKEN

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CallbackSettings:
        names = {f.name for f in fields(cls)}
        unknown = set(spec) - names
        if unknown:
            raise ValueError(f"unknown callback settings: {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(names))}")
        return cls(**spec)


@dataclass(order=True)
class _Post:
    due: float
    seq: int
    provider: str = field(compare=False)
    items: list[dict[str, Any]] = field(compare=False)  # SendGrid/Aliyun: events; others: one
    attempts: int = field(default=0, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _beijing(ts: float) -> str:
    return (datetime.fromtimestamp(ts, UTC) + timedelta(hours=8)).strftime(
        "%Y-%m-%d %H:%M:%S")


class CallbackSender:
    """Queue and post provider callbacks from a background thread."""

    def __init__(self) -> None:
        self.settings = CallbackSettings()
        self.rng = random.Random()
        self.lock = threading.Condition()
        self.queue: list[_Post] = []
        self.seq = itertools.count()
        self.stats: Counter[str] = Counter()
        self.acked: Counter[tuple[str, str]] = Counter()  # (provider, event id) -> acks
        self.generated: set[tuple[str, str]] = set()
        self.replies: list[dict[str, Any]] = []  # answers to inbound SMS
        self._in_flight = 0  # events of the post being sent: popped, not yet answered
        self._thread: threading.Thread | None = None
        self._stop = False
        self._client: httpx.Client | None = None
        self._private = sig.sandbox_sendgrid_private_key()
        # The time the providers' events say they happened (seconds since the epoch). Real
        # providers report the wall clock; a simulation (``clm demo``) sets its own clock, so
        # that opens and clicks land on the clock its journeys run on and can branch them.
        self.clock: Callable[[], float] = time.time

    # --- control ----------------------------------------------------------------------------

    def configure(self, spec: dict[str, Any]) -> CallbackSettings:
        settings = CallbackSettings.from_spec(spec)
        with self.lock:
            self.settings = settings
            self.rng = random.Random(settings.seed)
            if settings.sendgrid_private_key:
                from cryptography.hazmat.primitives import serialization
                from cryptography.hazmat.primitives.asymmetric import ec
                key = serialization.load_pem_private_key(settings.sendgrid_private_key.encode(),
                                                         None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError("sendgrid_private_key must be an EC private key")
                self._private = key
            else:
                self._private = sig.sandbox_sendgrid_private_key()
            self.lock.notify_all()
        if settings.url:
            self._start()
        return settings

    def reset(self) -> None:
        with self.lock:
            self.queue.clear()
            self.stats.clear()
            self.acked.clear()
            self.generated.clear()
            self.replies.clear()

    def snapshot(self, with_ids: bool = False) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "queued": sum(len(p.items) for p in self.queue) + self._in_flight,
                "generated": len(self.generated), "acked_events": len(self.acked),
                **dict(self.stats)}
            if with_ids:
                out["acked"] = [[p, e, n] for (p, e), n in sorted(self.acked.items())]
            return out

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="clm-sandbox-callbacks",
                                            daemon=True)
            self._thread.start()

    # --- events from accepted messages ------------------------------------------------------

    def on_delivery(self, api: str, key: str | None, record: dict[str, Any]) -> None:
        s = self.settings
        if not s.url or api not in ("sendgrid", "mailgun", "twilio", "aliyun"):
            return
        with self.lock:
            r = self.rng
            now = time.time()
            happened = self.clock()  # when the events say they happened (see ``clock``)
            timeline = self._timeline(api, r)
            stamps = sorted(now + r.uniform(0, s.delay_seconds) for _ in timeline)
            if len(stamps) > 1 and r.random() < s.rate_out_of_order:
                i = r.randrange(len(stamps) - 1)
                stamps[i], stamps[i + 1] = stamps[i + 1], stamps[i]
            for (kind, extra), due in zip(timeline, stamps):
                item = self._event(api, kind, extra, key, record, happened)
                copies = 2 if r.random() < s.rate_duplicate else 1
                for _ in range(copies):
                    self._enqueue(api, item, due)
            self.lock.notify_all()

    def _timeline(self, api: str, r: random.Random) -> list[tuple[str, dict[str, Any]]]:
        s = self.settings
        email = api in ("sendgrid", "mailgun")
        out: list[tuple[str, dict[str, Any]]] = [("accepted", {})] if api != "aliyun" else []
        x = r.random()
        if x < s.rate_bounce:
            return out + [("bounce", {"permanent": True})]
        if x < s.rate_bounce + s.rate_soft_bounce:
            return out + [("bounce", {"permanent": False})]
        if x < s.rate_bounce + s.rate_soft_bounce + s.rate_deferred and api != "aliyun":
            out.append(("deferred", {}))  # Aliyun sends one final report per message
        out.append(("delivered", {}))
        if not email:
            return out
        if r.random() < s.rate_open:
            out.append(("open", {}))
            if r.random() < s.rate_click:
                out.append(("click", {}))
        if r.random() < s.rate_complaint:
            out.append(("complaint", {}))
        elif r.random() < s.rate_unsubscribe:
            out.append(("unsubscribe", {}))
        return out

    def _event(self, api: str, kind: str, extra: dict[str, Any], key: str | None,
               record: dict[str, Any], now: float) -> dict[str, Any]:
        to, mid = record.get("to", ""), record.get("message_id", "")
        if api == "sendgrid":
            name = {"accepted": "processed", "complaint": "spamreport"}.get(kind, kind)
            item: dict[str, Any] = {
                "email": to,
                "timestamp": int(now),
                "event": name,
                "sg_event_id": uuid.uuid4().hex,
                "sg_message_id": f"{mid}.filter0001.{self.rng.randrange(10**6)}",
                "smtp-id": f"<{mid}@sandbox>",
            }
            if key:
                item["clm_key"] = key
            if kind == "bounce":
                item.update(type="bounce" if extra["permanent"] else "blocked",
                            status="5.1.1" if extra["permanent"] else "4.2.2",
                            reason="550 5.1.1 user unknown" if extra["permanent"]
                            else "452 4.2.2 mailbox full")
            if kind == "click":
                item["url"] = "https://shop.example.com/"
            return item
        if api == "mailgun":
            name = {"bounce": "failed", "open": "opened", "click": "clicked",
                    "complaint": "complained", "unsubscribe": "unsubscribed",
                    "deferred": "failed"}.get(kind, kind)
            data: dict[str, Any] = {"event": name, "timestamp": now, "id": uuid.uuid4().hex[:22],
                                    "recipient": to, "message": {"headers": {
                                        "message-id": str(mid).strip("<>")}},
                                    "user-variables": {"clm_key": key} if key else {}}
            if name == "failed":
                permanent = kind == "bounce" and extra.get("permanent")
                data["severity"] = "permanent" if permanent else "temporary"
                data["delivery-status"] = {"code": 550 if permanent else 452,
                                           "message": "user unknown" if permanent else "try later"}
            if kind == "click":
                data["url"] = "https://shop.example.com/"
            return data
        if api == "twilio":
            status = {"accepted": "sent", "bounce": "undelivered"}.get(kind, kind)
            if kind == "deferred":
                status = "sending"
            form = {"MessageSid": mid, "MessageStatus": status, "To": to,
                    "From": "+15005550006", "AccountSid": "AC" + "0" * 32}
            if kind == "bounce":
                form["ErrorCode"] = "30005" if extra["permanent"] else "30003"
            return {"form": form, "callback": record.get("status_callback")}
        # aliyun
        ok = kind == "delivered"
        code = "DELIVERED" if ok else ("MOBILE_NUMBER_ILLEGAL" if extra.get("permanent")
                                       else "MOBILE_NOT_REACHABLE")
        report = {"phone_number": to, "send_time": _beijing(now), "report_time": _beijing(now + 1),
                  "success": ok, "err_code": code, "err_msg": "用户接收成功" if ok else code,
                  "sms_size": "1", "biz_id": mid, "out_id": key or ""}
        return report

    def _enqueue(self, api: str, item: dict[str, Any], due: float) -> None:
        with self.lock:
            self.generated.add((api, self._event_id(api, item)))
            heapq.heappush(self.queue, _Post(due, next(self.seq), api, [item]))
            self.lock.notify_all()

    def inbound(self, api: str, sender: str, text: str, to: str = "+15005550006") -> None:
        """Post an SMS the customer 'sent' to the web service's inbound route."""
        with self.lock:
            if api == "twilio":
                item = {"inbound": True, "form": {
                    "MessageSid": "SM" + uuid.uuid4().hex, "From": sender, "To": to,
                    "Body": text, "NumSegments": "1", "AccountSid": "AC" + "0" * 32}}
            elif api == "aliyun":
                item = {"phone_number": sender.removeprefix("+86"), "content": text,
                        "send_time": _beijing(time.time()), "dest_code": "1069",
                        "sequence_id": self.rng.randrange(10**9), "sign_name": "CLM"}
            else:
                raise ValueError(f"inbound SMS comes from twilio or aliyun, not {api!r}")
            self._enqueue(api, item, time.time())

    # --- posting ----------------------------------------------------------------------------

    @staticmethod
    def _event_id(api: str, item: dict[str, Any]) -> str:
        """The id the web service stores the event under (its parser's)."""
        if api == "sendgrid":
            return str(item["sg_event_id"])
        if api == "mailgun":
            return f"{item['id']}:{item['event']}"
        if api == "twilio":
            f = item["form"]
            if item.get("inbound"):
                return f"in:{f['MessageSid']}"
            return f"{f['MessageSid']}:{f['MessageStatus']}:{f.get('ErrorCode') or ''}"
        body = json.dumps([item]).encode()
        parsed = (
            ev.parse_aliyun_inbound(body) if "content" in item else ev.parse_aliyun_reports(body)
        )
        return parsed[0].event_id

    def _run(self) -> None:
        self._client = httpx.Client(timeout=self.settings.timeout)
        try:
            while True:
                with self.lock:
                    while not self._stop and (not self.queue or self.queue[0].due > time.time()):
                        wait = self.queue[0].due - time.time() if self.queue else 1.0
                        self.lock.wait(max(0.001, min(wait, 1.0)))
                    if self._stop:
                        return
                    post = heapq.heappop(self.queue)
                    if post.provider == "sendgrid" and post.attempts == 0:
                        # Batch what is due, as SendGrid does.
                        while (len(post.items) < self.settings.batch_size and self.queue
                               and self.queue[0].due <= time.time()
                               and self.queue[0].provider == "sendgrid"
                               and self.queue[0].attempts == 0):
                            post.items += heapq.heappop(self.queue).items
                    self._in_flight = len(post.items)
                self._post(post)
        finally:
            self._client.close()

    def _post(self, post: _Post) -> None:
        s = self.settings
        base = (s.url or "").rstrip("/")
        assert self._client is not None
        try:
            if post.provider == "sendgrid":
                body = json.dumps(post.items).encode()
                ts = str(int(time.time()))
                r = self._client.post(base + "/hooks/sendgrid", content=body, headers={
                    "Content-Type": "application/json",
                    "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                    "X-Twilio-Email-Event-Webhook-Signature": sig.sign_sendgrid(self._private, ts,
                                                                                body)})
            elif post.provider == "mailgun":
                ts, token = str(int(time.time())), uuid.uuid4().hex  # a fresh token per attempt
                body = json.dumps({"signature": {"timestamp": ts, "token": token,
                                                 "signature": sig.sign_mailgun(
                                                     s.mailgun_signing_key, ts, token)},
                                   "event-data": post.items[0]}).encode()
                r = self._client.post(base + "/hooks/mailgun", content=body,
                                      headers={"Content-Type": "application/json"})
            elif post.provider == "twilio":
                item = post.items[0]
                if item.get("inbound"):
                    url = base + "/hooks/twilio/inbound"
                else:
                    given = urlsplit(item.get("callback") or "/hooks/twilio/status")
                    url = base + given.path + (f"?{given.query}" if given.query else "")
                form = item["form"]
                r = self._client.post(url, content=urlencode(form).encode(), headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": sig.twilio_signature(s.twilio_auth_token, url,
                                                               form.items())})
                if item.get("inbound") and r.status_code == 200:
                    with self.lock:
                        self.replies.append({"to": form["From"], "twiml": r.text})
            else:
                r = self._client.post(f"{base}/hooks/aliyun/{s.aliyun_path_token}",
                                      content=json.dumps(post.items, ensure_ascii=False).encode(),
                                      headers={"Content-Type": "application/json"})
            ok = 200 <= r.status_code < 300
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            ok, status = False, type(exc).__name__
        with self.lock:
            self._in_flight = 0
            self.stats["posts"] += 1
            self.stats[f"answer_{status}"] += 1
            if ok:
                for item in post.items:
                    self.acked[(post.provider, self._event_id(post.provider, item))] += 1
                self.stats["acked_posts"] += 1
                return
            if status in ("400", "401", "404", "406", "413"):
                self.stats["refused"] += 1  # providers do retry these; the sandbox does not
                return
            post.attempts += 1
            self.stats["retries"] += 1
            post.due = time.time() + min(s.retry_max, s.retry_base * 2 ** (post.attempts - 1))
            post.seq = next(self.seq)
            heapq.heappush(self.queue, post)
