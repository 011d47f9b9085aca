"""Provider callback routes: verify as the provider signs, parse, store and apply in one
transaction, then answer. Routes are thin; the work is in ``clm_core.feedback``.

    POST /hooks/sendgrid              SendGrid Event Webhook (ECDSA-signed JSON array)
    POST /hooks/mailgun               Mailgun webhooks (HMAC-signed, one event per request)
    POST /hooks/twilio/status         Twilio status callbacks (X-Twilio-Signature)
    POST /hooks/twilio/inbound        Twilio inbound SMS (X-Twilio-Signature), answers TwiML
    GET|POST /hooks/aliyun/{token}    Aliyun SmsReport and SmsUp pushes (unguessable path)

Answers: 401 for a bad signature or path, 400 for a malformed body, 413 for a body over the
limit (each with nothing stored), 200 only after the events are committed. A database failure
is a 5xx, which every provider retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import xml.sax.saxutils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from clm_core.consent import keywords, ledger
from clm_core.consent.config import load_consent_config
from clm_core.delivery.config import DeliveryConfig, load_delivery_config
from clm_core.errors import CallbackError, ConfigError, SignatureError
from clm_core.feedback import events as ev
from clm_core.feedback import signatures as sig
from clm_core.feedback.config import WebhookConfig, load_webhook_config
from clm_core.feedback.events import ProviderEvent
from clm_core.feedback.ingest import IngestReport, SuppressFn, Suppression, ingest, suppress_rows
from clm_core.runs import utcnow
from clm_core.web.app import Web

log = logging.getLogger("clm.web.hooks")

# Called inside the ingest transaction with the inbound SMS stored for the first time; returns
# the confirmation text to reply with (at most one), or None.
InboundFn = Callable[[sa.Connection, list[ProviderEvent]], str | None]


# The ledger's source for each suppression reason of a provider event.
LEDGER_SOURCE = {"bounced": "bounce", "soft_bounced": "bounce", "invalid": "bounce",
                 "complained": "complaint", "unsubscribed": "provider_unsubscribe",
                 "opted_out": "provider_unsubscribe"}


def suppress_through_ledger(conn: sa.Connection, rows: list[Suppression] | Any,
                            now: datetime) -> None:
    """Hard bounces, complaints and provider unsubscribes withdraw the channel in the consent
    ledger (which adds the suppression), with the provider event as evidence; the evidence
    key makes a replay a no-op."""
    ledger.record_withdrawals(conn, [
        ledger.Withdrawal(s.customer_id, s.channel, LEDGER_SOURCE[s.reason], s.address,
                          s.occurred_at, f"{s.provider}:{s.event_id}",
                          {"provider": s.provider, "provider_event_id": s.event_id,
                           "reason": s.reason}) for s in rows], now)


def routes(web: Web) -> list[BaseRoute]:
    """The callback routes of ``clm serve`` (see ``clm_core.web.app``)."""
    delivery: DeliveryConfig | None
    try:
        delivery = load_delivery_config(web.settings)
    except ConfigError as exc:  # the web service runs without a usable [delivery] too
        log.warning("webhooks: [delivery] unusable (%s): sandbox defaults do not apply", exc)
        delivery = None
    consent = load_consent_config(web.settings)
    store = str(web.settings.section("delivery").get("store_name", DeliveryConfig.store_name))

    def inbound(conn: sa.Connection, new: list[ProviderEvent]) -> str | None:
        reply = None
        for e in new:
            got = keywords.apply_inbound(conn, phone=e.address or "", text=e.detail.get("text", ""),
                                         received_at=e.occurred_at, event_id=e.event_id,
                                         provider=e.provider, config=consent, store=store)
            reply = reply or got.reply
        return reply

    hooks = Webhooks(web.writer, load_webhook_config(web.settings, delivery),
                     public_base_url=web.base_url, suppress=suppress_through_ledger,
                     inbound=inbound, in_use=frozenset(
                         p.kind for p in (delivery.channels.values() if delivery else [])))
    return hooks.routes()


def _safe_path(request: Request) -> str:
    """The path for logs: Aliyun's path carries its secret token."""
    path = request.url.path
    return "/hooks/aliyun/<redacted>" if path.startswith("/hooks/aliyun/") else path


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Job:
    """One request's events on their way into the database, and what it answers with."""

    events: list[ProviderEvent]
    report: IngestReport | None = None
    reply: str | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Requests that arrive together are written together: one transaction for all the batches
    waiting when the writer is free (group commit).

    Each request's thread queues its job and takes the writer lock; whoever holds it writes
    every queued job in one transaction, so the threads behind it find theirs committed (or
    failed, with the same error) when they get the lock and return at once. A request still
    answers only after the transaction that holds its events committed. Why: a commit, its
    statements and their set-up cost the same for 100 events as for 400, and on SQLite, which
    has one writer at a time, waiting requests queue on a lock here instead of polling the
    file's lock in SQLite's busy handler (which sleeps for growing intervals meanwhile).
    """

    def __init__(self, write: Callable[[list[_Job]], None]) -> None:
        self.write = write
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()

    def run(self, job: _Job) -> None:
        with self._queue_lock:
            self._queue.append(job)
        with self._writer:
            if not job.done:
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                try:
                    self.write(jobs)
                except BaseException as exc:  # every request of the group fails with it
                    for j in jobs:
                        j.error = exc
                    raise
                finally:
                    for j in jobs:
                        j.done = True
        if job.error is not None:
            raise job.error


@dataclass
class Webhooks:
    engine: Engine
    config: WebhookConfig
    public_base_url: str | None = None
    suppress: SuppressFn = suppress_rows
    inbound: InboundFn | None = None
    in_use: frozenset[str] = frozenset({"sendgrid", "mailgun", "twilio", "aliyun"})  # to warn about

    def __post_init__(self) -> None:
        self.sendgrid_key = (sig.load_sendgrid_key(self.config.sendgrid_public_key)
                             if self.config.sendgrid_public_key else None)
        self.tokens = sig.TokenMemory(self.config.mailgun_max_age)
        self._group = GroupCommit(self._ingest_group)

    def _ingest_group(self, jobs: list[_Job]) -> None:
        """Store and apply the events of every request in ``jobs`` in one transaction; each
        job's report counts what its own request brought (a duplicate of an event an earlier
        request of the group carried is not new to it), and each inbound SMS request gets its
        own reply."""
        owner: dict[tuple[str, str], int] = {}
        for i, job in enumerate(jobs):
            for e in job.events:
                owner.setdefault((e.provider, e.event_id), i)

        def on_new(conn: sa.Connection, new: list[ProviderEvent], _links: Any) -> None:
            # runs again if the transaction is retried: each run starts afresh
            inbound: dict[int, list[ProviderEvent]] = {}
            for e in new:
                if e.kind == "inbound":
                    inbound.setdefault(owner[(e.provider, e.event_id)], []).append(e)
            for i, job in enumerate(jobs):
                job.reply = (self.inbound(conn, inbound[i])
                             if self.inbound is not None and i in inbound else None)

        report = ingest(self.engine, [e for job in jobs for e in job.events], utcnow(),
                        soft_bounce_limit=self.config.soft_bounce_limit,
                        suppress=self.suppress, on_new=on_new)
        stored = [0] * len(jobs)
        for e in report.stored_events:
            stored[owner[(e.provider, e.event_id)]] += 1
        for job, n in zip(jobs, stored):
            job.report = IngestReport(received=len(job.events), stored=n)
            if not n:  # nothing of it was new in the attempt that committed
                job.reply = None

    def routes(self) -> list[BaseRoute]:
        out: list[BaseRoute] = []
        if self.sendgrid_key is not None:
            out.append(Route("/hooks/sendgrid", self.sendgrid, methods=["POST"]))
        if self.config.mailgun_signing_key:
            out.append(Route("/hooks/mailgun", self.mailgun, methods=["POST"]))
        if self.config.twilio_auth_token:
            out += [Route("/hooks/twilio/status", self.twilio_status, methods=["POST"]),
                    Route("/hooks/twilio/inbound", self.twilio_inbound, methods=["POST"])]
        if self.config.aliyun_path_token:
            out.append(Route("/hooks/aliyun/{token}", self.aliyun, methods=["GET", "POST"]))
        missing = [p for p in self.config.missing() if p in self.in_use]
        if missing:
            log.warning("no callback route for %s: no verification secret configured "
                        "([webhooks] in clm.toml)", ", ".join(missing))
        return out

    # --- shared ----------------------------------------------------------------------------

    async def _handle(self, request: Request,
                      parse: Callable[[bytes], list[ProviderEvent]],
                      answer: Callable[[IngestReport, str | None], Response],
                      on_reject: Callable[[], None] | None = None) -> Response:
        try:
            body = await _body(request, self.config.max_body_bytes)
        except _TooLarge:
            return PlainTextResponse("body too large\n", status_code=413)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            events = parse(body)
        except SignatureError as exc:
            log.warning("%s %s: 401: %s", request.method, _safe_path(request), exc)
            return PlainTextResponse("signature verification failed\n", status_code=401)
        except CallbackError as exc:
            log.warning("%s %s: 400: %s", request.method, _safe_path(request), exc)
            if on_reject is not None:
                on_reject()
            return PlainTextResponse(f"{exc}\n", status_code=400)
        job = _Job(events)
        try:
            await asyncio.to_thread(self._group.run, job)
        except Exception:
            if on_reject is not None:
                on_reject()
            raise
        assert job.report is not None  # set by the group that committed it
        return answer(job.report, job.reply)

    @staticmethod
    def _ok(report: IngestReport, _reply: str | None) -> Response:
        return JSONResponse({"received": report.received, "stored": report.stored})

    # --- providers -------------------------------------------------------------------------

    async def sendgrid(self, request: Request) -> Response:
        signature = request.headers.get("x-twilio-email-event-webhook-signature")
        timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp")
        assert self.sendgrid_key is not None

        def parse(body: bytes) -> list[ProviderEvent]:
            sig.verify_sendgrid(self.sendgrid_key, signature, timestamp, body)  # type: ignore[arg-type]
            return ev.parse_sendgrid(body)

        return await self._handle(request, parse, self._ok)

    async def mailgun(self, request: Request) -> Response:
        token: list[str] = []

        def parse(body: bytes) -> list[ProviderEvent]:
            block, event = ev.mailgun_signature_block(body)
            parts = [str(block.get(k, "")) for k in ("timestamp", "token", "signature")]
            sig.verify_mailgun(self.config.mailgun_signing_key or "", *parts,
                               now=sig.now_seconds(), max_age=self.config.mailgun_max_age,
                               memory=self.tokens)
            token.append(parts[1])
            return [ev.parse_mailgun(event)]

        def forget() -> None:  # nothing stored: the provider's retry may carry the same token
            for t_ in token:
                self.tokens.forget(t_)

        return await self._handle(request, parse, self._ok, on_reject=forget)

    def _twilio_form(self, request: Request, body: bytes) -> dict[str, str]:
        items = ev.parse_form(body)
        given = request.headers.get("x-twilio-signature")
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        urls = [str(request.url)]
        if self.public_base_url:
            urls.insert(0, self.public_base_url.rstrip("/") + path)
        for url in urls:  # behind a proxy Twilio signed the public URL
            try:
                sig.verify_twilio(self.config.twilio_auth_token or "", url, items, given)
                return dict(items)
            except SignatureError:
                continue
        raise SignatureError("X-Twilio-Signature missing or does not match")

    async def twilio_status(self, request: Request) -> Response:
        query = dict(request.query_params)

        def parse(body: bytes) -> list[ProviderEvent]:
            return [ev.parse_twilio_status(self._twilio_form(request, body), query, utcnow())]

        return await self._handle(request, parse, self._ok)

    async def twilio_inbound(self, request: Request) -> Response:
        def parse(body: bytes) -> list[ProviderEvent]:
            return [ev.parse_twilio_inbound(self._twilio_form(request, body), utcnow())]

        def answer(_report: IngestReport, reply: str | None) -> Response:
            inner = f"<Message>{xml.sax.saxutils.escape(reply)}</Message>" if reply else ""
            return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>',
                            media_type="application/xml")

        return await self._handle(request, parse, answer)

    async def aliyun(self, request: Request) -> Response:
        try:
            sig.verify_path_token(self.config.aliyun_path_token or "", request.path_params["token"])
        except SignatureError:
            return PlainTextResponse("not found\n", status_code=404)
        if request.method == "GET":  # Aliyun's connectivity check
            return JSONResponse({"code": 0, "msg": "成功"})

        def parse(body: bytes) -> list[ProviderEvent]:
            try:
                items = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                items = None  # the report parser says what is wrong
            if isinstance(items, list) and items and all(
                    isinstance(i, dict) and "content" in i for i in items):
                return ev.parse_aliyun_inbound(body)
            return ev.parse_aliyun_reports(body)

        def answer(_report: IngestReport, _reply: str | None) -> Response:
            return JSONResponse({"code": 0, "msg": "接收成功"})

        return await self._handle(request, parse, answer)
