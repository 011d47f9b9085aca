"""Store provider events once and apply them: message delivery status, engagement events,
suppressions. Everything for one callback request (or for several that arrived together: the
web service's group commit) happens in one transaction, and the web service answers only after
it committed, so an event is either stored and applied or not acknowledged (and the provider
sends it again). Each step is a fixed number of statements whatever the batch's size
(``clm_core.db.rowset``): on PostgreSQL one set-based statement with the rows bound as one JSON
parameter; on SQLite, which runs in this process, the writes are one prepared statement run for
each row, which costs less than SQLite unpacking JSON. Their text is written once per dialect
and run on the DBAPI cursor: nothing is compiled per batch or per event.

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

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import rowset
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


class Link(NamedTuple):
    """What an event is tied to: its outbox message (if any), customer, and the customer's
    address on file for the channel (providers write numbers their own way: Aliyun drops +86,
    so a US and a Chinese number can look alike)."""

    message_id: int | None
    customer_id: int | None
    address: str | None


@functools.lru_cache(maxsize=8)
def _link_sql(dialect: str) -> dict[str, str]:
    """The link queries in the driver's parameter style, written once per dialect: each takes
    its list as one JSON parameter (``:keys``), so its text and prepared plan are the same for
    every batch and SQLAlchemy compiles nothing."""
    listed = rowset.values(dialect)
    base = ("SELECT messages.id, messages.idempotency_key, messages.provider_message_id, "
            "messages.customer_id, messages.channel, CASE WHEN messages.channel = 'sms' "
            "THEN customers.phone ELSE customers.email END AS address "
            "FROM messages JOIN customers ON customers.id = messages.customer_id ")
    out = {"key": base + f"WHERE messages.idempotency_key IN ({listed})",
           "pmid": base + f"WHERE messages.provider_message_id IN ({listed})"}
    for channel, column in ADDRESS.items():
        out[channel] = (f"SELECT id, {column} FROM customers WHERE {column} IN ({listed}) "
                        f"ORDER BY id DESC")
    return {k: rowset.driver_sql(dialect, v) for k, v in out.items()}


_Hit = tuple[int, str | None, str | None, int, str, str | None]  # a row of the key/pmid query


def _link(conn: sa.Connection, events: list[ProviderEvent]) -> dict[int, Link]:
    """Position in ``events`` -> its :class:`Link`, for those that link."""
    sql = _link_sql(conn.dialect.name)
    keys = sorted({e.message_key for e in events if e.message_key})
    by_key: dict[str, _Hit] = {}
    if keys:
        for r in rowset.execute(conn, sql["key"], {"keys": json.dumps(keys)}):
            by_key[r[1]] = r  # type: ignore[assignment]
    pmids = sorted({e.provider_message_id for e in events if e.provider_message_id
                    and (not e.message_key or e.message_key not in by_key)})
    by_pmid: dict[str, _Hit] = {}
    if pmids:
        for r in rowset.execute(conn, sql["pmid"], {"keys": json.dumps(pmids)}):
            by_pmid[r[2]] = r  # type: ignore[assignment]
    links: dict[int, Link] = {}
    for i, ev in enumerate(events):
        hit = by_key.get(ev.message_key or "") or by_pmid.get(ev.provider_message_id or "")
        if hit is not None and hit[4] == ev.channel:
            links[i] = Link(hit[0], hit[3], hit[5])
    # Events with no message (inbound SMS, an unsubscribe from an old mail): by address.
    for channel in ADDRESS:
        wanted = sorted({e.address for i, e in enumerate(events)
                         if i not in links and e.channel == channel and e.address})
        if not wanted:
            continue
        found: dict[str, int] = {}
        for cid, address in rowset.execute(conn, sql[channel], {"keys": json.dumps(wanted)}):
            found[address] = cid  # the lowest id last: it wins, as before
        for i, ev in enumerate(events):
            if i not in links and ev.channel == channel and ev.address in found:
                links[i] = Link(None, found[ev.address], ev.address)
    return links


# provider_events columns written per event, and their rowset types
EVENT_COLUMNS = (("provider", "text"), ("event_id", "text"), ("kind", "text"),
                 ("channel", "text"), ("occurred_at", "timestamp"), ("recorded_at", "timestamp"),
                 ("message_id", "int"), ("customer_id", "int"), ("address", "text"),
                 ("permanent", "bool"), ("machine", "bool"), ("code", "text"),
                 ("detail", "json"))
ENGAGEMENT_COLUMNS = (("external_id", "text"), ("customer_id", "int"), ("event_type", "text"),
                      ("occurred_at", "timestamp"), ("properties", "json"))


def _insert_new(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> set[tuple[str, str]]:
    """Insert event rows (tuples in ``EVENT_COLUMNS`` order), skipping stored ones; returns
    (provider, event_id) of the new ones. The unique key decides what is new, so two requests
    racing with the same event store it once."""
    return {(r[0], r[1]) for r in rowset.insert_rows(
        conn, pe, EVENT_COLUMNS, rows, ["provider", "event_id"], ["provider", "event_id"])}


_RANK_SQL = "CASE messages.delivery_status {} ELSE 0 END".format(
    " ".join(f"WHEN '{k}' THEN {v}" for k, v in RANK.items()))
_STATUS_COLUMNS = (("id", "int"), ("rank", "int"), ("status", "text"), ("at", "timestamp"))


@functools.lru_cache(maxsize=8)
def _status_sql(dialect: str) -> str:
    if dialect == "sqlite":  # in process: one prepared statement per message is cheapest
        return ("UPDATE messages SET delivery_status = :status, delivery_at = :at "
                f"WHERE messages.id = :id AND {_RANK_SQL} < :rank")
    return rowset.driver_sql(dialect, (
        f"UPDATE messages SET delivery_status = r.status, delivery_at = r.at "
        f"FROM {rowset.source(dialect, _STATUS_COLUMNS)} "
        f"WHERE messages.id = r.id AND {_RANK_SQL} < r.rank"))


def _apply_statuses(conn: sa.Connection, best: dict[int, tuple[str, datetime]]) -> int:
    """Raise each message's delivery status to the best new one, never lower it: the rank is
    compared in the database (a concurrent request's higher status, committed first, wins);
    one ``UPDATE ... FROM`` for the batch on PostgreSQL."""
    if not best:
        return 0
    rows = [{"id": mid, "rank": RANK[s], "status": s, "at": rowset.stamp(at)}
            for mid, (s, at) in sorted(best.items())]
    sql = _status_sql(conn.dialect.name)
    if conn.dialect.name == "sqlite":
        return rowset.executemany(conn, sql, rows)
    return len(rowset.execute(conn, sql + " RETURNING messages.id", {"rows": rowset.dumps(rows)}))


@functools.lru_cache(maxsize=8)
def _soft_bounce_sql(dialect: str) -> str:
    """Soft bounces stored per address, for the addresses of the JSON list ``:keys``."""
    return rowset.driver_sql(dialect, (
        "SELECT address, count(*) FROM provider_events "
        f"WHERE address IN ({rowset.values(dialect)}) AND kind = 'bounced' "
        "AND NOT permanent GROUP BY address"))


def _soft_bounce_suppressions(conn: sa.Connection, events: list[ProviderEvent],
                              customers: dict[str, int | None], limit: int) -> list[Suppression]:
    soft = {e.address: e for e in events
            if e.kind == "bounced" and not e.permanent and e.address}
    if not soft or limit <= 0:
        return []
    sql = _soft_bounce_sql(conn.dialect.name)
    counts = {a: int(n) for a, n in rowset.execute(conn, sql, {"keys": json.dumps(sorted(soft))})}
    return [Suppression(e.channel, a, customers.get(a), "soft_bounced", e.provider, e.event_id,
                        e.occurred_at) for a, e in soft.items() if counts.get(a, 0) >= limit]


NewFn = Callable[[sa.Connection, list[ProviderEvent], dict[int, Link]], None]


@retrying
def ingest(engine: Engine, events: Sequence[ProviderEvent], recorded_at: datetime, *,
           soft_bounce_limit: int = 3, suppress: SuppressFn = suppress_rows,
           on_new: NewFn | None = None) -> IngestReport:
    """Store and apply ``events`` in one transaction. ``on_new(conn, new, links)`` runs inside
    it for the events stored for the first time (inbound SMS keywords use it)."""
    report = IngestReport(received=len(events))
    unique = _dedupe(events)
    with engine.begin() as conn:
        links = _link(conn, unique)
        recorded = rowset.stamp(recorded_at)
        none = Link(None, None, None)
        rows = []
        for i, e in enumerate(unique):
            link = links.get(i, none)
            rows.append((e.provider, e.event_id, e.kind, e.channel, rowset.stamp(e.occurred_at),
                         recorded, link.message_id, link.customer_id, link.address or e.address,
                         e.permanent, e.machine, e.code, e.detail or None))
        new_ids = _insert_new(conn, rows)
        fresh = [i for i, e in enumerate(unique) if (e.provider, e.event_id) in new_ids]
        new = [unique[i] for i in fresh]
        new_links = {j: links[i] for j, i in enumerate(fresh) if i in links}
        report.stored = len(new)
        report.stored_events = new
        report.linked = sum(1 for link in new_links.values() if link.message_id is not None)

        best: dict[int, tuple[str, datetime]] = {}
        engagement, immediate = [], []
        customers: dict[str, int | None] = {}
        for j, ev in enumerate(new):
            link = new_links.get(j, none)
            mid, cid = link.message_id, link.customer_id
            if link.address and link.address != ev.address:
                ev = replace(ev, address=link.address)
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
                engagement.append((event_row_key(ev), cid, ev.kind, rowset.stamp(ev.occurred_at),
                                   props))
            reason = suppression_of(ev)
            if reason and ev.address:
                immediate.append(Suppression(ev.channel, ev.address, cid, reason, ev.provider,
                                             ev.event_id, ev.occurred_at))
        report.statuses = _apply_statuses(conn, best)
        if engagement:
            rowset.insert_rows(conn, t.events, ENGAGEMENT_COLUMNS, engagement, ["external_id"])
            report.engagement = len(engagement)
        immediate += _soft_bounce_suppressions(conn, new, customers, soft_bounce_limit)
        if immediate:
            suppress(conn, immediate, recorded_at)
            report.suppressed = len(immediate)
        if on_new is not None and new:
            on_new(conn, new, new_links)
    return report
