"""Store provider events once and apply them: message delivery status, engagement events,
suppressions. Everything for one callback request happens in one transaction, and the web
service answers only after it committed, so an event is either stored and applied or not
acknowledged (and the provider sends it again).

1. link: each event to its outbox message, by the key the send carried (SendGrid custom_args
   ``clm_key``, Mailgun ``v:clm_key``, Twilio's StatusCallback query, Aliyun ``OutId``), else
   by the provider's message id; events without a message (inbound SMS, a complaint about an
   old mail) to the customer by address.
2. store: one ``provider_events`` row per provider event id. A replayed or duplicated event
   hits the unique key and is dropped here, so everything after this step runs once per event.
3. status: by meaning, not arrival. ``RANK`` orders the delivery statuses; an event only ever
   raises a message's status (a late ``delivered`` never undoes ``bounced``).
4. engagement: opens and clicks (not machine opens or bot clicks) become ``events`` rows that
   journeys use as entry triggers, branches and goals.
5. suppression: hard bounces, complaints, provider unsubscribes and invalid numbers at once;
   soft bounces once an address has ``soft_bounce_limit`` of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.delivery.outbox import insert_ignore, retrying
from clm_core.feedback.events import TWILIO_OPTED_OUT, ProviderEvent

m, pe = t.messages, t.provider_events

# Delivery status by meaning: a message's status only moves up this list.
RANK = {"deferred": 1, "delivered": 2, "undelivered": 3, "bounced": 4}
ENGAGEMENT = {"opened", "clicked"}
OPTED_OUT_CODES = TWILIO_OPTED_OUT
ADDRESS = {"email": "email", "sms": "phone"}


def status_of(event: ProviderEvent) -> str | None:
    """The delivery status an event gives its message, if any."""
    if event.kind == "bounced":
        return "bounced" if event.permanent else "deferred"
    if event.kind in ("delivered", "deferred", "undelivered"):
        return event.kind
    return None


def suppression_of(event: ProviderEvent) -> str | None:
    """Why an event suppresses its address at once, if it does."""
    if event.kind == "bounced" and event.permanent:
        return "bounced"
    if event.kind == "complained":
        return "complained"
    if event.kind == "unsubscribed":
        return "unsubscribed" if event.channel == "email" else "opted_out"
    if event.kind == "undelivered" and event.permanent:
        return "opted_out" if event.code in OPTED_OUT_CODES else "invalid"
    return None


@dataclass
class Suppression:
    """One address to suppress, with the provider event that is its evidence."""

    channel: str
    address: str
    customer_id: int | None
    reason: str
    provider: str
    event_id: str
    occurred_at: datetime


SuppressFn = Callable[[sa.Connection, Sequence[Suppression], datetime], None]


def suppress_rows(conn: sa.Connection, rows: Sequence[Suppression], now: datetime) -> None:
    """The plain suppression list write (the consent ledger wraps it when present)."""
    insert_ignore(conn, t.suppressions, [
        {"channel": s.channel, "address": s.address, "customer_id": s.customer_id,
         "reason": s.reason, "source": s.provider, "created_at": s.occurred_at} for s in rows],
        ["channel", "address"])


@dataclass
class IngestReport:
    received: int = 0
    stored: int = 0  # new events (the rest were replays or duplicates)
    linked: int = 0  # new events tied to an outbox message
    statuses: int = 0  # messages whose delivery status moved up
    engagement: int = 0  # events rows written
    suppressed: int = 0
    stored_events: list[ProviderEvent] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def event_row_key(event: ProviderEvent) -> str:
    """``events.external_id`` of an engagement event (the provider id may be 100 chars)."""
    return "pe:" + hashlib.sha256(f"{event.provider}\n{event.event_id}".encode()).hexdigest()[:60]


def _dedupe(events: Sequence[ProviderEvent]) -> list[ProviderEvent]:
    seen: dict[tuple[str, str], ProviderEvent] = {}
    for ev in events:
        seen.setdefault((ev.provider, ev.event_id), ev)
    return list(seen.values())


def _link(conn: sa.Connection, events: list[ProviderEvent]) -> dict[int, dict[str, Any]]:
    """Position in ``events`` -> {message_id, customer_id, ...} for those that link."""
    keys = sorted({e.message_key for e in events if e.message_key})
    by_key: dict[str, dict[str, Any]] = {}
    c = t.customers
    # The customer's address on file is the one to suppress: providers write numbers their own
    # way (Aliyun drops +86, so a US and a Chinese number can look alike).
    cols = (m.c.id, m.c.idempotency_key, m.c.customer_id, m.c.channel, m.c.provider_message_id,
            sa.case((m.c.channel == "sms", c.c.phone), else_=c.c.email).label("address"))
    base = sa.select(*cols).join(c, c.c.id == m.c.customer_id)
    for start in range(0, len(keys), 500):
        for r in conn.execute(base.where(m.c.idempotency_key.in_(keys[start:start + 500]))):
            by_key[r.idempotency_key] = dict(r._mapping)
    pmids = sorted(
        {
            e.provider_message_id
            for e in events
            if e.provider_message_id and (not e.message_key or e.message_key not in by_key)
        }
    )
    by_pmid: dict[str, dict[str, Any]] = {}
    for start in range(0, len(pmids), 500):
        for r in conn.execute(base.where(m.c.provider_message_id.in_(pmids[start:start + 500]))):
            by_pmid[r.provider_message_id] = dict(r._mapping)
    links = {}
    for i, ev in enumerate(events):
        hit = by_key.get(ev.message_key or "") or by_pmid.get(ev.provider_message_id or "")
        if hit is not None and hit["channel"] == ev.channel:
            links[i] = hit
    # Events with no message (inbound SMS, an unsubscribe from an old mail): by address.
    for channel, column in ADDRESS.items():
        wanted = sorted({e.address for i, e in enumerate(events)
                         if i not in links and e.channel == channel and e.address})
        found: dict[str, int] = {}
        for start in range(0, len(wanted), 500):
            for cid, address in conn.execute(sa.select(c.c.id, c.c[column]).where(
                    c.c[column].in_(wanted[start:start + 500])).order_by(c.c.id.desc())):
                found[address] = cid
        for i, ev in enumerate(events):
            if i not in links and ev.channel == channel and ev.address in found:
                links[i] = {"id": None, "customer_id": found[ev.address], "address": ev.address}
    return links


def _insert_new(conn: sa.Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert event rows, skipping stored ones; returns (provider, event_id) of the new ones."""
    if not rows:
        return set()
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (insert(pe).on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(pe.c.provider, pe.c.event_id))
    new: set[tuple[str, str]] = set()
    for start in range(0, len(rows), 1000):
        new |= {(r[0], r[1]) for r in conn.execute(stmt, rows[start:start + 1000])}
    return new


_RANK_SQL = sa.case({k: v for k, v in RANK.items()}, value=m.c.delivery_status, else_=0)


def _apply_statuses(conn: sa.Connection, best: dict[int, tuple[str, datetime]]) -> int:
    if not best:
        return 0
    stmt = (sa.update(m).where(m.c.id == sa.bindparam("_id"), _RANK_SQL < sa.bindparam("_rank"))
            .values(delivery_status=sa.bindparam("_status"),
                    delivery_at=sa.bindparam("_at", type_=sa.DateTime())))
    params = [{"_id": mid, "_rank": RANK[s], "_status": s, "_at": at}
              for mid, (s, at) in sorted(best.items())]
    return int(conn.execute(stmt, params).rowcount or 0)


def _soft_bounce_suppressions(conn: sa.Connection, events: list[ProviderEvent],
                              customers: dict[str, int | None], limit: int) -> list[Suppression]:
    soft = {e.address: e for e in events
            if e.kind == "bounced" and not e.permanent and e.address}
    if not soft or limit <= 0:
        return []
    counts: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
        sa.select(pe.c.address, sa.func.count()).where(
            pe.c.address.in_(sorted(soft)), pe.c.kind == "bounced", pe.c.permanent.is_(False))
        .group_by(pe.c.address)).all())
    return [Suppression(e.channel, a, customers.get(a), "soft_bounced", e.provider, e.event_id,
                        e.occurred_at) for a, e in soft.items() if counts.get(a, 0) >= limit]


@retrying
def ingest(engine: Engine, events: Sequence[ProviderEvent], recorded_at: datetime, *,
           soft_bounce_limit: int = 3, suppress: SuppressFn = suppress_rows,
           on_new: Callable[[sa.Connection, list[ProviderEvent], dict[int, dict[str, Any]]],
                            None] | None = None) -> IngestReport:
    """Store and apply ``events`` in one transaction. ``on_new(conn, new, links)`` runs inside
    it for the events stored for the first time (inbound SMS keywords use it)."""
    report = IngestReport(received=len(events))
    unique = _dedupe(events)
    with engine.begin() as conn:
        links = _link(conn, unique)
        rows = [{"provider": e.provider, "event_id": e.event_id, "kind": e.kind,
                 "channel": e.channel, "occurred_at": e.occurred_at, "recorded_at": recorded_at,
                 "message_id": links.get(i, {}).get("id"),
                 "customer_id": links.get(i, {}).get("customer_id"),
                 "address": links.get(i, {}).get("address") or e.address,
                 "permanent": e.permanent, "machine": e.machine, "code": e.code,
                 "detail": e.detail or None} for i, e in enumerate(unique)]
        new_ids = _insert_new(conn, rows)
        fresh = [i for i, e in enumerate(unique) if (e.provider, e.event_id) in new_ids]
        new = [unique[i] for i in fresh]
        new_links = {j: links[i] for j, i in enumerate(fresh) if i in links}
        report.stored = len(new)
        report.stored_events = new
        report.linked = sum(1 for j in new_links if new_links[j].get("id") is not None)

        best: dict[int, tuple[str, datetime]] = {}
        engagement, immediate = [], []
        customers: dict[str, int | None] = {}
        for j, ev in enumerate(new):
            link = new_links.get(j, {})
            mid, cid = link.get("id"), link.get("customer_id")
            if link.get("address") and link["address"] != ev.address:
                ev = replace(ev, address=link["address"])
                new[j] = ev
            if ev.address:
                customers.setdefault(ev.address, cid)
            status = status_of(ev)
            if status and mid is not None:
                cur = best.get(mid)
                if cur is None or RANK[status] > RANK[cur[0]]:
                    best[mid] = (status, ev.occurred_at)
            if ev.kind in ENGAGEMENT and not ev.machine and cid is not None:
                props = {"message_id": mid, "provider": ev.provider}
                if ev.detail.get("url"):
                    props["url"] = ev.detail["url"]
                engagement.append({"external_id": event_row_key(ev), "customer_id": cid,
                                   "event_type": ev.kind, "occurred_at": ev.occurred_at,
                                   "properties": props})
            reason = suppression_of(ev)
            if reason and ev.address:
                immediate.append(Suppression(ev.channel, ev.address, cid, reason, ev.provider,
                                             ev.event_id, ev.occurred_at))
        report.statuses = _apply_statuses(conn, best)
        if engagement:
            insert_ignore(conn, t.events, engagement, ["external_id"])
            report.engagement = len(engagement)
        immediate += _soft_bounce_suppressions(conn, new, customers, soft_bounce_limit)
        if immediate:
            suppress(conn, immediate, recorded_at)
            report.suppressed = len(immediate)
        if on_new is not None and new:
            on_new(conn, new, new_links)
    return report
