"""The outbox dispatcher: claim due messages in batches, re-check consent and suppression,
issue coupons first, render, send through the channel's provider, and commit every outcome.

Several lanes (claim -> prepare -> send -> commit loops) run at once in one event loop, so one
batch's slow provider calls overlap the next batch's database work. Database calls run in
threads, but for each wave's writes, which run from the event loop where the database allows
it (``wave_writes``); provider calls are async (httpx). Every outcome is committed before its
batch counts as done; a crash leaves claimed rows that ``outbox.recover_expired`` resolves
safely.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from clm_core.consent.tokens import CLICK, Keyring, load_keyring
from clm_core.db import tables as t
from clm_core.delivery import outbox
from clm_core.delivery.config import DeliveryConfig
from clm_core.delivery.context import BatchData, Recommender, load_batch, render_context
from clm_core.delivery.model import Outbound, Outcome, Provider, SendResult
from clm_core.delivery.outbox import Resolution
from clm_core.delivery.providers import build_provider
from clm_core.delivery.providers.sms import content_digest
from clm_core.delivery.quiet import QuietHoursCheck
from clm_core.delivery.unsubscribe import one_click_headers
from clm_core.delivery.wave_writes import WaveWrites, open_wave_writes
from clm_core.errors import TemplateRenderError
from clm_core.feedback import guard
from clm_core.feedback.config import WebhookConfig, load_webhook_config
from clm_core.feedback.guard import GuardReport
from clm_core.journeys.store import project_policy
from clm_core.runs import utcnow
from clm_core.settings import Settings, redact
from clm_core.templating import RenderedEmail, TemplateStore
from clm_core.tracking import load_tracking_config, rewrite_links

log = logging.getLogger("clm.delivery")

ADDRESS = {"email": "email", "sms": "phone"}
MIN_WAVE = 32  # messages per mark-sending/commit round trip, at least
CONSENT = {"email": 0, "sms": 1}


@dataclass
class DispatchReport:
    """What one dispatcher (or, merged, every dispatch chunk of a run) did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    retried: int = 0  # rescheduled after a transient failure
    released: int = 0  # handed back untouched (provider halted)
    deferred: int = 0  # retries due inside quiet hours, moved to their end
    recovered: outbox.Recovered = field(default_factory=outbox.Recovered)
    lost_leases: int = 0  # outcomes another dispatcher had already resolved
    halted: dict[str, str] = field(default_factory=dict)  # channel -> why
    deliverability: GuardReport | None = None  # complaint and bounce rates at the start
    errors: Counter[str] = field(default_factory=Counter)  # "provider code" of every failure
    elapsed: float = 0.0
    chunks_failed: int = 0  # dispatch chunks that crashed (merged reports of a flow run)

    def merge(self, other: DispatchReport) -> None:
        """Add another dispatcher's report to this one (chunks ran side by side: the elapsed
        time is the longest, not the sum)."""
        for name in ("claimed", "sent", "failed", "unknown", "skipped", "retried", "released",
                     "deferred", "lost_leases", "chunks_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.recovered.requeued += other.recovered.requeued
        self.recovered.unknown += other.recovered.unknown
        self.halted.update(other.halted)
        # Every chunk checks the same rates at its start; the first one's are kept.
        self.deliverability = self.deliverability or other.deliverability
        self.errors.update(other.errors)
        self.elapsed = max(self.elapsed, other.elapsed)

    def totals(self) -> dict[str, Any]:
        """The counts, as stored in the run's summary (JSON)."""
        return {"claimed": self.claimed, "sent": self.sent, "failed": self.failed,
                "unknown": self.unknown, "skipped": self.skipped, "retried": self.retried,
                "released": self.released, "deferred": self.deferred,
                "halted": dict(self.halted), "chunks_failed": self.chunks_failed,
                "deliverability": (self.deliverability.as_dict() if self.deliverability
                                   else None)}

    def count(self, rows: list[Resolution]) -> None:
        for r in rows:
            if r.error_code and r.status != "sent":
                self.errors[f"{r.provider or ''} {r.error_code}".strip()] += 1
            if r.status == "pending":
                if r.reason == "provider_halted":
                    self.released += 1
                else:
                    self.retried += 1
            else:
                setattr(self, r.status, getattr(self, r.status) + 1)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    def summary(self) -> str:
        text = (f"claimed {self.claimed:,}: sent {self.sent:,}, failed {self.failed:,}, "
                f"unknown {self.unknown:,}, skipped {self.skipped:,}, retry later {self.retried:,}")
        if self.deferred:
            text += f", deferred past quiet hours {self.deferred:,}"
        if self.released:
            text += f", waiting for a halted channel {self.released:,}"
        if self.recovered.requeued or self.recovered.unknown:
            text += (f"; expired leases: {self.recovered.requeued:,} requeued, "
                     f"{self.recovered.unknown:,} marked unknown")
        text += f" in {self.elapsed:.1f}s ({self.rate:,.0f} sent/s)"
        if self.errors:
            text += "; errors: " + ", ".join(
                f"{code} x{n:,}" for code, n in self.errors.most_common(5)
            )
        if self.deliverability and self.deliverability.warnings:
            text += "; deliverability: " + "; ".join(self.deliverability.warnings)
        return text


def coupon_code(key: bytes, message_key: str) -> str:
    """A code derived from the message key with the secret: stable across retries (so issuing
    is idempotent) and not guessable from the key."""
    digest = hmac.new(key, b"coupon:" + message_key.encode(), hashlib.sha256).digest()
    raw = base64.b32encode(digest).decode()[:8]
    return f"CLM-{raw[:4]}-{raw[4:]}"


class Dispatcher:
    def __init__(self, engine: Engine, settings: Settings, config: DeliveryConfig,
                 templates: TemplateStore | None = None, *, signing_key: bytes,
                 owner: str | None = None, providers: dict[str, Provider] | None = None,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None,
                 throttle: Callable[[str], Awaitable[None]] | None = None,
                 keyring: Keyring | None = None, guard: WebhookConfig | None = None):
        """``throttle(provider)`` is awaited before each HTTP request (SMTP transaction) to
        ``provider``, however many messages the request carries: the flows pass one that takes
        a slot of a Prefect global rate limit shared by every worker, so the limit counts what
        the provider counts. Each provider's own token bucket still applies in this process.
        ``keyring`` signs the links in messages (default: ``[tokens]`` of the settings)."""
        self.reader = self.writer = engine
        self.throttle = throttle
        self.guard = guard if guard is not None else load_webhook_config(settings, config)
        self.settings, self.config = settings, config
        # A run renders the templates as they were when it started (compiled once each).
        self.templates = templates or TemplateStore(settings.templates_dir,
                                                    settings.default_locale, reload=False)
        self.key = signing_key
        self.keyring = keyring or load_keyring(settings)
        self.tracking = load_tracking_config(settings)
        self.owner = owner or f"dispatch-{uuid.uuid4().hex[:12]}"
        self._given_providers = providers
        self.providers: dict[str, Provider] = {}
        self.clock, self.rng = clock, rng or random.Random()
        self.lease = timedelta(seconds=config.lease_seconds)
        self.store = {"name": config.store_name, "url": config.store_url}
        self.recommender: Recommender | None = None
        self.report = DispatchReport()
        self._claims = 0
        self.quiet = QuietHoursCheck(engine, project_policy(settings.section("journeys")),
                                     settings.default_timezone)
        self._renewed: dict[str, datetime] = {}  # claim (owner) -> when its lease was last set
        self.waves = WaveWrites(engine)  # the run's writer (``run`` opens it)

    # --- the run ------------------------------------------------------------------------

    async def run(self, limit: int | None = None, wait: float = 0.0) -> DispatchReport:
        """Send what is due; keep going while more becomes due within ``wait`` seconds."""
        started = time.perf_counter()
        self._remaining = limit if limit is not None else float("inf")
        self._wait = wait
        self.providers = self._given_providers or {
            ch: build_provider(cfg) for ch, cfg in self.config.channels.items()}
        if self.throttle is not None:
            for provider in self.providers.values():
                provider.gate = functools.partial(self.throttle, provider.name)
        self.writer = outbox.writer_engine(self.reader, pinged=False)
        self.waves = open_wave_writes(self.writer)
        try:
            # Orders up to the run's clock only: a dispatch on a simulated clock never recommends
            # from purchases that have not happened yet. The four steps before the first claim
            # depend on none of each other: side by side, so the first messages go sooner.
            self.recommender, *_ = await asyncio.gather(
                asyncio.to_thread(Recommender, self.reader, as_of=self.clock()),
                self._check_deliverability(), self._recover(),
                self.waves.start(max(1, self.config.lanes)))
            await asyncio.gather(*(self._lane() for _ in range(max(1, self.config.lanes))))
        finally:
            if self._given_providers is None:
                await asyncio.gather(*(p.aclose() for p in self.providers.values()))
            await self.waves.aclose()
            if self.writer is not self.reader:
                self.writer.dispose()
            self.report.elapsed = time.perf_counter() - started
        return self.report

    async def _check_deliverability(self) -> None:
        """Complaint and bounce rates first: a channel over the limit, or halted before and
        not resumed, sends nothing in this run (its messages stay pending)."""
        report = await asyncio.to_thread(guard.check, self.writer, self.config, self.guard,
                                         self.clock())
        self.report.deliverability = report
        for warning in report.warnings:
            log.warning("deliverability: %s", warning)
        for channel, why in (await asyncio.to_thread(guard.halted, self.writer)).items():
            self.report.halted.setdefault(channel, why)

    async def _recover(self) -> None:
        idempotent = [ch for ch, p in self.providers.items() if p.idempotent]
        got = await asyncio.to_thread(outbox.recover_expired, self.writer, self.clock(), idempotent)
        self.report.recovered.requeued += got.requeued
        self.report.recovered.unknown += got.unknown
        if got.unknown:
            log.warning("%d messages were being sent when their dispatcher stopped: marked unknown",
                        got.unknown)

    async def _lane(self) -> None:
        while self._remaining > 0:
            n = int(min(self.config.batch_size, self._remaining))
            self._remaining -= n
            # Each claim has its own lease token, so a lane never acts on rows that another
            # lane (even of this process) re-claimed after their lease ran out.
            self._claims += 1
            owner = f"{self.owner}-{self._claims}"
            now = self.clock()
            rows = await asyncio.to_thread(outbox.claim, self.writer, owner, n, now,
                                           self.lease, list(self.report.halted))
            self._renewed[owner] = now
            self._remaining += n - len(rows)
            if not rows:
                if await self._idle():
                    continue
                return
            self.report.claimed += len(rows)
            await self._process(rows, owner)

    async def _idle(self) -> bool:
        """Nothing due now: wait for what becomes due within the wait window, if anything."""
        if self._wait <= 0:
            return False
        await self._recover()
        nxt = await asyncio.to_thread(outbox.next_due, self.reader, list(self.report.halted))
        if nxt is None:
            return False
        delay = (nxt - self.clock()).total_seconds()
        if delay > self._wait:
            return False
        await asyncio.sleep(min(max(delay, 0.05), 1.0))
        return True

    # --- one batch ----------------------------------------------------------------------

    async def _process(self, rows: list[dict[str, Any]], owner: str) -> None:
        keeper = asyncio.create_task(self._keep_lease([r["id"] for r in rows], owner))
        try:
            await self._process_claimed(rows, owner)
        finally:
            keeper.cancel()
            self._renewed.pop(owner, None)

    async def _keep_lease(self, ids: list[int], owner: str) -> None:
        """Renew the batch's lease every third of it while the batch is worked on (waiting
        for rate-limit slots can take longer than one lease); a dead dispatcher stops renewing,
        so its claims still run out."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            now = self.clock()
            await asyncio.to_thread(outbox.renew, self.writer, owner, ids, now, self.lease)
            self._renewed[owner] = now

    async def _process_claimed(self, rows: list[dict[str, Any]], owner: str) -> None:
        data = await asyncio.to_thread(load_batch, self.reader, rows, self.recommender)
        outcomes: list[Resolution] = []
        ready = []
        for row in rows:
            skip = self._precheck(row, data)
            if skip is not None:
                outcomes.append(skip)
            else:
                ready.append(row)
        quiet = await asyncio.to_thread(
            self.quiet.deferrals, ready,
            {r["customer_id"]: data.customers[r["customer_id"]]["timezone"] for r in ready},
            self.clock())
        if quiet:
            # A retry that backoff moved into quiet hours waits for their end (not an attempt).
            outcomes += [Resolution(i, "deferred", "quiet_hours", send_after=until, attempted=False)
                         for i, until in quiet.items()]
            ready = [r for r in ready if r["id"] not in quiet]
        coupon_failures = await self._issue_coupons([r for r in ready if r["coupon"]], data)
        outcomes += coupon_failures.values()
        by_channel: dict[str, list[dict[str, Any]]] = {}
        for row in ready:
            if row["id"] not in coupon_failures:
                by_channel.setdefault(row["channel"], []).append(row)
        await self._commit(outcomes, owner)  # skipped, deferred and coupon failures
        await asyncio.gather(*(self._send(ch, items, data, owner, [r["id"] for r in rows])
                               for ch, items in by_channel.items()))

    def _precheck(self, row: dict[str, Any], data: BatchData) -> Resolution | None:
        """Consent and suppression, checked again just before sending."""
        channel = row["channel"]
        customer = data.customers.get(row["customer_id"])
        if channel not in self.config.channels:
            return Resolution(row["id"], "failed", "unknown_channel", error_code="channel",
                       error_message=f"no provider configured for channel {channel!r}")
        if customer is None:
            return Resolution(row["id"], "skipped", "customer_missing")
        if channel in ADDRESS:
            address = customer[ADDRESS[channel]]
            if not address:
                return Resolution(row["id"], "skipped", f"no_{ADDRESS[channel]}")
            if not data.consent[row["customer_id"]][CONSENT[channel]]:
                return Resolution(row["id"], "skipped", "no_consent")
            if (channel, address) in data.suppressed:
                return Resolution(row["id"], "skipped", "suppressed")
            opted_out = data.withdrawn_topics.get(row["customer_id"], set())
            if any((channel, tag) in opted_out for tag in row["tags"] or ()):
                return Resolution(row["id"], "skipped", "no_consent_topic")
        return None

    async def _issue_coupons(
        self, rows: list[dict[str, Any]], data: BatchData
    ) -> dict[int, Resolution]:
        """Issue each step's coupon before its message, idempotently on the message key."""
        todo = [r for r in rows if r["idempotency_key"] not in data.coupons]
        if not todo:
            return {}
        provider = self.providers["coupon"]
        now = self.clock()
        specs: dict[str, dict[str, Any]] = {}
        batch = []
        for r in todo:
            spec = r["coupon"] or {}
            days = spec.get("expires_in_days")
            # From the row's creation, so a retried request carries identical parameters.
            expires = (r["created_at"] + timedelta(days=float(days))) if days else None
            specs[r["idempotency_key"]] = {
                "code": coupon_code(self.key, r["idempotency_key"]),
                "kind": spec.get("kind", "percent"),
                "value": spec.get("value", 0),
                "currency": spec.get("currency") or self.settings.currency,
                "expires_at": expires,
            }
            batch.append(
                Outbound(
                    key=r["idempotency_key"],
                    to=data.customers[r["customer_id"]]["external_id"],
                    channel="coupon",
                    data={
                        **specs[r["idempotency_key"]],
                        "expires_at": int(expires.timestamp()) if expires else None,
                        "customer": data.customers[r["customer_id"]]["external_id"],
                    },
                )
            )
        results = await self._provider_send(provider, batch)
        failures: dict[int, Resolution] = {}
        issued = []
        for r, res in zip(todo, results):
            if res.outcome is Outcome.SENT:
                spec = specs[r["idempotency_key"]]
                issued.append(
                    {
                        "code": spec["code"],
                        "idempotency_key": r["idempotency_key"],
                        "customer_id": r["customer_id"],
                        "message_id": r["id"],
                        "provider": provider.name,
                        "provider_ref": res.provider_message_id,
                        "kind": spec["kind"],
                        "value": spec["value"],
                        "currency": spec["currency"],
                        "expires_at": spec["expires_at"],
                        "status": "issued",
                        "created_at": now,
                    }
                )
                data.coupons[r["idempotency_key"]] = spec
            else:
                failures[r["id"]] = self._outcome(r, res, provider, prefix="coupon_")
        if issued:
            await asyncio.to_thread(self._store_coupons, issued)
        return failures

    def _store_coupons(self, rows: list[dict[str, Any]]) -> None:
        with self.writer.begin() as conn:
            outbox.insert_ignore(conn, t.coupons, rows, ["idempotency_key"])

    def _render(self, row: dict[str, Any], data: BatchData) -> Outbound:
        customer = data.customers[row["customer_id"]]
        tags = list(row["tags"] or [])
        channel = row["channel"]
        context = render_context(row, data, keyring=self.keyring, issued_at=self.clock(),
                                 public_base_url=self.settings.public_base_url, store=self.store)
        if channel == "webhook":
            return Outbound(key=row["idempotency_key"], to=customer["external_id"], channel=channel,
                            template=row["template"], tags=tags,
                            data={k: context[k] for k in ("customer", "coupon", "journey")})
        rendered = self.templates.render(row["template"], channel, customer["locale"], context)
        msg = Outbound(key=row["idempotency_key"], to=customer[ADDRESS[channel]], channel=channel,
                       template=row["template"], tags=tags, text=rendered.text)
        if isinstance(rendered, RenderedEmail):
            msg.subject, msg.html = rendered.subject, rendered.html
            if self.tracking.tracks(row["journey"]) and msg.html:
                msg.html = self._track_clicks(msg.html, row, customer["external_id"])
            if "transactional" not in tags:  # marketing email: RFC 8058 one-click unsubscribe
                msg.headers = one_click_headers(context["links"]["unsubscribe"])
        else:
            msg.data = {"segments": rendered.segments, "encoding": rendered.encoding}
        return msg

    def _track_clicks(self, body: str, row: dict[str, Any], customer: str) -> str:
        base = self.settings.public_base_url.rstrip("/")
        issued = self.clock()
        return rewrite_links(body, lambda url: f"{base}/c/" + self.keyring.sign(
            CLICK, row["channel"], customer, issued, message=row["idempotency_key"], url=url), base)

    async def _provider_send(self, provider: Provider, batch: list[Outbound]) -> list[SendResult]:
        return await provider.send(batch)

    async def _send(self, channel: str, items: list[dict[str, Any]], data: BatchData, owner: str,
                    batch_ids: list[int]) -> None:
        """Send in waves of what the provider takes at once; each wave is marked ``sending``
        just before and its outcomes committed right after, so a crash leaves at most one wave
        per lane whose fate is unknown.

        Each wave is rendered just before it is marked (a template that fails is recorded
        with the wave's outcomes). Rendering a whole batch first kept the event loop from
        everything else meanwhile, some 30 ms for 500 SMS: the requests in flight finished and
        the provider's slots stood idle until it was done, at every batch a lane claimed."""
        provider = self.providers[channel]
        step = max(1, provider.max_batch)
        # A provider that deduplicates takes waves big enough to keep database round trips
        # few; for one that does not, a wave is what it really has in flight (its concurrency).
        # A lane marks its wave while other lanes' waves are in flight (the mark is a database
        # round trip that would otherwise leave the provider idle), so each lane still has at
        # most one wave marked and not committed. The lanes' requests then queue for the
        # provider's slots (first come, first served): a wave's requests start one by one as
        # the waves before them finish theirs. Were the next wave to wait for the whole of
        # the last one (a lock per channel), the provider's slots would drain at every wave:
        # the slowest request of a wave would leave the other slots idle, and without batching
        # a wave is only a few requests.
        if provider.idempotent:
            wave = max(step, provider.concurrency, MIN_WAVE)
        else:
            wave = step * max(1, provider.concurrency)
        # A wave's outcomes are committed in the transaction that marks the lane's next wave
        # (one database call a wave), or on their own after the last wave.
        done: list[Resolution] = []
        for start in range(0, len(items), wave):
            if channel in self.report.halted:
                done += [self._halted(row, None, provider) for row in items[start:start + wave]]
                continue
            part: list[tuple[dict[str, Any], Outbound]] = []
            for row in items[start:start + wave]:
                try:
                    part.append((row, self._render(row, data)))
                except TemplateRenderError as exc:
                    done.append(Resolution(row["id"], "failed", "render_error",
                                           error_code="template",
                                           error_message=redact(str(exc))[:1000]))
            if not part:
                continue
            digests = ({r["id"]: content_digest(msg.to, msg.text or "") for r, msg in part}
                       if channel == "sms" else None)
            # The rest of the batch is renewed with the wave when a third of its lease has
            # passed since it was last set (as the keeper does), not on every wave.
            now = self.clock()
            renew = now - self._renewed.get(owner, now - self.lease) >= self.lease / 3
            ids = [r["id"] for r, _ in part]
            rest = batch_ids if renew else []
            if done:
                updated, held = await self.waves.record_and_mark(owner, done, ids, rest, now,
                                                                 self.lease, digests)
                self._counted(done, updated)
                done = []
            else:
                held = await self.waves.mark(owner, ids, rest, now, self.lease, digests)
            if renew:
                self._renewed[owner] = now
            self.report.lost_leases += len(part) - len(held)
            part = [(r, msg) for r, msg in part if r["id"] in held]
            chunks = [part[i:i + step] for i in range(0, len(part), step)]
            results: list[SendResult] = []
            for got in await asyncio.gather(*(self._provider_send(provider, [m for _, m in c])
                                              for c in chunks)):
                results += got
            done = [self._outcome(row, res, provider, address=msg.to)
                    for (row, msg), res in zip(part, results)]
        await self._commit(done, owner)

    async def _commit(self, outcomes: list[Resolution], owner: str) -> None:
        if not outcomes:
            return
        updated = await self.waves.record(owner, outcomes, self.clock())
        self._counted(outcomes, updated)

    def _counted(self, outcomes: list[Resolution], updated: int) -> None:
        self.report.lost_leases += len(outcomes) - updated
        self.report.count(outcomes)

    # --- outcomes -----------------------------------------------------------------------

    def _backoff(self, attempts: int, retry_after: float | None) -> timedelta:
        """Exponential backoff with full jitter around it, never sooner than Retry-After."""
        base = min(self.config.backoff_max, self.config.backoff_base * 2 ** max(0, attempts - 1))
        delay = base * self.rng.uniform(0.5, 1.5)
        return timedelta(seconds=max(delay, retry_after or 0.0))

    def _halted(
        self, row: dict[str, Any], res: SendResult | None, provider: Provider
    ) -> Resolution:
        if res is not None and row["channel"] not in self.report.halted:
            self.report.halted[row["channel"]] = f"{provider.name}: {res.code}: {res.message}"
            log.error("provider %s refuses all sends (%s): channel %s stopped for this run",
                      provider.name, res.code, row["channel"])
        # Not an attempt: the provider refused the channel as a whole, not this message.
        return Resolution(row["id"], "pending", "provider_halted", provider=provider.name,
                          error_code=res.code if res else None,
                          error_message=redact(res.message or "")[:1000] if res else None,
                          send_after=self.clock() + timedelta(seconds=self.config.backoff_base),
                          attempted=False)

    def _outcome(self, row: dict[str, Any], res: SendResult, provider: Provider, prefix: str = "",
                 address: str | None = None) -> Resolution:
        now = self.clock()
        common: dict[str, Any] = {"provider": provider.name, "error_code": res.code,
                  "error_message": redact(res.message or "")[:1000] or None}
        if res.outcome is Outcome.SENT:
            return Resolution(row["id"], "sent", "sent", provider=provider.name,
                              provider_message_id=res.provider_message_id, sent_at=now)
        if res.halt:
            return self._halted(row, res, provider)
        if res.outcome is Outcome.REJECTED:
            suppress = None
            if address and row["channel"] in ADDRESS:
                suppress = (row["channel"], address, row["customer_id"], res.suppress or "invalid")
            return Resolution(row["id"], "failed",
                              f"{prefix}recipient_{res.suppress or 'rejected'}",
                              suppress=suppress, **common)
        if res.outcome is Outcome.PERMANENT:
            return Resolution(row["id"], "failed", f"{prefix}permanent_error", **common)
        # Transient.
        if res.ambiguous and not provider.idempotent:
            return Resolution(row["id"], "unknown", f"{prefix}outcome_unknown", **common)
        if row["attempts"] >= self.config.max_attempts:
            return Resolution(row["id"], "failed", f"{prefix}retries_exhausted", **common)
        return Resolution(row["id"], "pending", f"{prefix}retry_scheduled",
                          send_after=now + self._backoff(row["attempts"], res.retry_after),
                          **common)

