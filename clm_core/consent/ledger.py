"""The consent ledger: every change of consent or suppression is one append-only row.

A row says who (customer, or only the address when nobody matches it), which channel and
optionally which topic, ``granted`` or ``withdrawn``, the source (where the change came from),
when it happened (``occurred_at``, the event's own time) and when it was written
(``recorded_at``, wall clock), the evidence and the wording version the person saw.

Current consent derives from the ledger: for a (customer, channel, topic) the row with the
latest ``occurred_at`` wins (ties: the later insert). A change that arrives late, with an older
``occurred_at`` than the current row, is recorded but does not change the current state, so
events apply in the order they happened, not the order they arrived. Without any channel row
the customer's imported consent column stands.

What dispatch reads stays in step with the ledger, in the same transaction as the insert:

- ``customers.consent_<channel>`` (and ``consent_<channel>_at``) mirror the current
  channel-level state;
- a withdrawal from a customer's or provider's signal (unsubscribe, STOP, bounce, complaint,
  provider unsubscribe) adds a ``suppressions`` row for the address; a later grant lifts only
  opt-out suppressions (``unsubscribed``, ``opted_out``), never a bounce or a complaint.

Idempotency: every row has an ``evidence_key`` (a provider event id, or a token id plus the
state it acted on), unique in the table; recording the same key again is a no-op, so a
provider's retry or a second click changes nothing.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from clm_core.db import rowset
from clm_core.db import tables as t
from clm_core.errors import ConsentError
from clm_core.runs import utcnow

L = t.consent_ledger
ACTIONS = ("granted", "withdrawn")
SOURCES = ("import", "unsubscribe", "preferences", "inbound_sms", "bounce", "complaint",
           "provider_unsubscribe", "operator")
ADDRESS_COLUMN = {"email": "email", "sms": "phone"}
# Withdrawals that also suppress the address, and the suppression's reason.
SUPPRESSING = {"unsubscribe": "unsubscribed", "inbound_sms": "opted_out", "bounce": "bounced",
               "complaint": "complained", "provider_unsubscribe": "unsubscribed"}
# Facts about the address rather than the person's wish: they suppress even when they arrive
# after a newer grant, and no grant lifts them.
ADDRESS_FACTS = ("bounce", "complaint")
LIFTED_BY_GRANT = ("unsubscribed", "opted_out")


@dataclass(frozen=True)
class Recorded:
    """A row that was written, and the channel state after it."""

    id: int
    customer_id: int | None
    channel: str
    topic: str | None
    action: str
    current: bool  # the derived consent for (customer, channel, topic) after this row


def record_change(conn: sa.Connection, *, customer_id: int | None, channel: str, action: str,
                  source: str, occurred_at: datetime, evidence_key: str,
                  evidence: Mapping[str, Any] | None = None, topic: str | None = None,
                  address: str | None = None, wording_version: str | None = None,
                  recorded_at: datetime | None = None) -> Recorded | None:
    """Append one change and bring the consent columns and suppressions in line with it.

    Returns None when ``evidence_key`` is already in the ledger (a replay: nothing changes).
    Runs inside the caller's transaction, so the caller's own writes (an event row, a message
    status) commit together with it or not at all.
    """
    _check(channel, action, source, customer_id, address)
    if address is None and customer_id is not None:
        address = conn.scalar(sa.select(t.customers.c[ADDRESS_COLUMN[channel]])
                              .where(t.customers.c.id == customer_id))
    values = {"customer_id": customer_id, "channel": channel, "topic": topic, "action": action,
              "source": source, "address": address, "occurred_at": occurred_at,
              "recorded_at": recorded_at or utcnow(), "evidence_key": evidence_key[:200],
              "evidence": dict(evidence or {}), "wording_version": wording_version}
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    new_id = conn.scalar(dialect_insert(L).values(**values)
                         .on_conflict_do_nothing(index_elements=["evidence_key"]).returning(L.c.id))
    if new_id is None:
        return None
    latest = _latest(conn, customer_id, channel, topic, address)
    current = latest is not None and latest.action == "granted"
    if topic is None:
        _sync_channel(conn, customer_id, channel, address, latest, new_id, source, action)
    return Recorded(int(new_id), customer_id, channel, topic, action, current)


@dataclass(frozen=True)
class Withdrawal:
    """A channel-level withdrawal a provider reported (bounce, complaint, unsubscribe)."""

    customer_id: int | None
    channel: str
    source: str
    address: str
    occurred_at: datetime
    evidence_key: str
    evidence: Mapping[str, Any]


_LEDGER_COLUMNS = (("customer_id", "int"), ("channel", "text"), ("action", "text"),
                   ("source", "text"), ("address", "text"), ("occurred_at", "timestamp"),
                   ("recorded_at", "timestamp"), ("evidence_key", "text"), ("evidence", "json"))


def record_withdrawals(conn: sa.Connection, changes: Sequence[Withdrawal],
                       recorded_at: datetime) -> None:
    """``record_change`` for many channel-level withdrawals at once, with the same effect, in
    a fixed number of statements: one insert of the rows, one read of each subject's current
    row, one update of the consent columns, one insert of the suppressions.

    A webhook batch carries a few of these among hundreds of events; one at a time they cost
    five statements each. Where one batch holds two changes of the same subject, the later
    one's effect depends on the earlier (which is current), so those go through
    ``record_change`` one by one, in order, as before.
    """
    for ch in changes:
        _check(ch.channel, "withdrawn", ch.source, ch.customer_id, ch.address)
    subject = [(ch.customer_id, ch.channel, None if ch.customer_id is not None else ch.address)
               for ch in changes]
    seen = Counter(subject)
    alone = [ch for ch, key in zip(changes, subject) if seen[key] == 1]
    shared = [ch for ch, key in zip(changes, subject) if seen[key] > 1]
    if alone:
        _withdraw_alone(conn, alone, recorded_at)
    for ch in shared:
        record_change(conn, customer_id=ch.customer_id, channel=ch.channel, action="withdrawn",
                      source=ch.source, occurred_at=ch.occurred_at, address=ch.address,
                      evidence_key=ch.evidence_key, evidence=ch.evidence,
                      recorded_at=recorded_at)


def _withdraw_alone(conn: sa.Connection, changes: Sequence[Withdrawal],
                    recorded_at: datetime) -> None:
    """``record_withdrawals`` for changes whose subjects are all different."""
    rows = [{"customer_id": ch.customer_id, "channel": ch.channel, "action": "withdrawn",
             "source": ch.source, "address": ch.address,
             "occurred_at": rowset.stamp(ch.occurred_at), "recorded_at": rowset.stamp(recorded_at),
             "evidence_key": ch.evidence_key[:200], "evidence": dict(ch.evidence)}
            for ch in changes]
    new_ids = {key: int(i) for i, key in rowset.insert_select(
        conn, L, _LEDGER_COLUMNS, rows, ["evidence_key"], ["id", "evidence_key"])}
    new = [(ch, new_ids[ch.evidence_key[:200]]) for ch in changes
           if ch.evidence_key[:200] in new_ids]  # the others are replays: nothing changes
    if not new:
        return
    people = sorted({ch.customer_id for ch, _ in new if ch.customer_id is not None})
    nobody = sorted({ch.address for ch, _ in new if ch.customer_id is None})
    latest = {}
    for r in conn.execute(_latest_heads(conn.dialect.name),
                          {"ids": json.dumps(people), "addresses": json.dumps(nobody)}):
        key = (r.customer_id, r.channel, None if r.customer_id is not None else r.address)
        latest[key] = r
    now = utcnow()
    by_channel: dict[str, list[dict[str, Any]]] = {}
    suppress = []
    for ch, new_id in new:
        head = latest[(ch.customer_id, ch.channel,
                       None if ch.customer_id is not None else ch.address)]
        granted = head.action == "granted"
        if ch.customer_id is not None:
            by_channel.setdefault(ch.channel, []).append(
                {"id": ch.customer_id, "granted": granted,
                 "at": rowset.stamp(head.occurred_at) if granted else None})
        if ch.source in SUPPRESSING and (head.id == new_id or ch.source in ADDRESS_FACTS):
            suppress.append({"channel": ch.channel, "address": ch.address,
                             "customer_id": ch.customer_id, "reason": SUPPRESSING[ch.source],
                             "source": ch.source, "created_at": now})
    for channel, updates in sorted(by_channel.items()):
        conn.execute(_consent_update(conn.dialect.name, channel),
                     {"rows": rowset.dumps(updates), "now": now})
    if suppress:
        conn.execute(_suppress_insert(conn.dialect.name), suppress)


# The statements of ``_withdraw_alone``, built once per dialect: building a windowed select
# costs SQLAlchemy a millisecond or more each time (its compiled form is cached, the
# construction is not), which a webhook batch with a bounce in it would pay per request.

@functools.lru_cache(maxsize=8)
def _latest_heads(dialect: str) -> sa.Select[Any]:
    """Each subject's latest channel-level row (subjects given as JSON ``:ids`` and
    ``:addresses``, the latter for rows without a customer)."""
    ids = sa.text(rowset.values(dialect, "ids", "int")).columns(sa.column("v", sa.Integer))
    anon = sa.text(rowset.values(dialect, "addresses")).columns(sa.column("v", sa.String))
    who = sa.or_(L.c.customer_id.in_(ids),
                 sa.and_(L.c.customer_id.is_(None), L.c.address.in_(anon)))
    rank = sa.func.row_number().over(
        partition_by=(L.c.customer_id, L.c.channel,
                      sa.case((L.c.customer_id.is_(None), L.c.address))),
        order_by=(L.c.occurred_at.desc(), L.c.id.desc()))
    ranked = (sa.select(L.c.id, L.c.customer_id, L.c.channel, L.c.address, L.c.action,
                        L.c.occurred_at, rank.label("n"))
              .where(L.c.topic.is_(None), who).subquery())
    return sa.select(ranked).where(ranked.c.n == 1)


@functools.lru_cache(maxsize=16)
def _consent_update(dialect: str, channel: str) -> sa.TextClause:
    """Set a channel's consent columns from JSON ``:rows`` of (id, granted, at)."""
    if channel not in ADDRESS_COLUMN:  # it becomes part of the column names
        raise ConsentError(f"consent channel {channel!r} is not one of {', '.join(ADDRESS_COLUMN)}")
    c = t.customers
    columns = (("id", "int"), ("granted", "bool"), ("at", "timestamp"))
    return sa.text(
        f"UPDATE {c.name} SET consent_{channel} = r.granted, consent_{channel}_at = r.at, "
        f"updated_at = :now FROM {rowset.source(dialect, columns)} "
        f"WHERE {c.name}.id = r.id").bindparams(sa.bindparam("now", type_=sa.DateTime()))


@functools.lru_cache(maxsize=8)
def _suppress_insert(dialect: str) -> Any:
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return dialect_insert(t.suppressions).on_conflict_do_nothing(
        index_elements=["channel", "address"])


def _check(channel: str, action: str, source: str, customer_id: int | None,
           address: str | None) -> None:
    if channel not in ADDRESS_COLUMN:
        raise ConsentError(f"consent channel {channel!r} is not one of {', '.join(ADDRESS_COLUMN)}")
    if action not in ACTIONS:
        raise ConsentError(f"consent action {action!r} is not one of {', '.join(ACTIONS)}")
    if source not in SOURCES:
        raise ConsentError(f"consent source {source!r} is not one of {', '.join(SOURCES)}")
    if customer_id is None and not address:
        raise ConsentError("a consent change needs a customer or an address")


def _subject(customer_id: int | None, channel: str, topic: str | None,
             address: str | None) -> sa.ColumnElement[bool]:
    who = L.c.customer_id == customer_id if customer_id is not None else sa.and_(
        L.c.customer_id.is_(None), L.c.address == address)
    what = L.c.topic.is_(None) if topic is None else L.c.topic == topic
    return sa.and_(who, L.c.channel == channel, what)


def _latest(conn: sa.Connection, customer_id: int | None, channel: str, topic: str | None,
            address: str | None) -> Any:
    """The current row (id, action, source, occurred_at) for the subject, or None."""
    return conn.execute(sa.select(L.c.id, L.c.action, L.c.source, L.c.occurred_at)
                        .where(_subject(customer_id, channel, topic, address))
                        .order_by(L.c.occurred_at.desc(), L.c.id.desc()).limit(1)).first()


def _sync_channel(conn: sa.Connection, customer_id: int | None, channel: str,
                  address: str | None, latest: Any, new_id: int, source: str,
                  action: str) -> None:
    """Consent column and suppressions after a channel-level row (see the module docstring)."""
    if latest is None:
        return
    granted = latest.action == "granted"
    now = utcnow()
    if customer_id is not None:
        c = t.customers
        conn.execute(sa.update(c).where(c.c.id == customer_id).values(
            {f"consent_{channel}": granted,
             f"consent_{channel}_at": latest.occurred_at if granted else None,
             "updated_at": now}))
    if not address:
        return
    sup = t.suppressions
    is_current = latest.id == new_id
    if action == "withdrawn" and source in SUPPRESSING and (is_current or source in ADDRESS_FACTS):
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(dialect_insert(sup).values(
            channel=channel, address=address, customer_id=customer_id,
            reason=SUPPRESSING[source], source=source, created_at=now,
        ).on_conflict_do_nothing(index_elements=["channel", "address"]))
    elif granted and is_current:
        conn.execute(sa.delete(sup).where(sup.c.channel == channel, sup.c.address == address,
                                          sup.c.reason.in_(LIFTED_BY_GRANT)))


def head_id(conn: sa.Connection, customer_id: int, channel: str, topic: str | None = None) -> int:
    """Id of the current row for (customer, channel, topic), 0 if none: a state-relative part
    of an evidence key, so the same token acts once per state it finds."""
    latest = _latest(conn, customer_id, channel, topic, None)
    return int(latest.id) if latest is not None else 0


def current_consent(conn: sa.Connection, customer_id: int, channel: str,
                    topic: str | None = None) -> bool:
    """Whether the customer currently consents to ``channel`` (and ``topic``, if given).

    A topic needs the channel: withdrawing a channel withdraws all its topics; a topic with no
    row of its own follows the channel.
    """
    latest = _latest(conn, customer_id, channel, None, None)
    if latest is not None:
        granted = latest.action == "granted"
    else:
        granted = bool(conn.scalar(sa.select(t.customers.c[f"consent_{channel}"])
                                   .where(t.customers.c.id == customer_id)))
    return granted and (topic is None or topic_choice(conn, customer_id, channel, topic))


def topic_choice(conn: sa.Connection, customer_id: int, channel: str, topic: str) -> bool:
    """The customer's own choice for a topic, whatever the channel: True unless withdrawn."""
    row = _latest(conn, customer_id, channel, topic, None)
    return row is None or row.action == "granted"


@dataclass(frozen=True)
class ConsentState:
    """One customer's consent per channel and the topics they withdrew from, per channel."""

    channels: dict[str, bool]
    withdrawn_topics: dict[str, set[str]]

    def wants(self, channel: str, topic: str) -> bool:
        """The topic's own choice, shown on the preferences page even while the channel is off."""
        return topic not in self.withdrawn_topics.get(channel, set())

    def allows(self, channel: str, topic: str | None = None) -> bool:
        if not self.channels.get(channel, False):
            return False
        return topic is None or topic not in self.withdrawn_topics.get(channel, set())


def consent_state(conn: sa.Connection, customer_id: int) -> ConsentState:
    c = t.customers
    row = conn.execute(sa.select(c.c.consent_email, c.c.consent_sms)
                       .where(c.c.id == customer_id)).first()
    channels = {ch: current_consent(conn, customer_id, ch) for ch in ADDRESS_COLUMN} if row else {}
    topics = withdrawn_topics(conn, [customer_id]).get(customer_id, set())
    by_channel: dict[str, set[str]] = {}
    for ch, topic in topics:
        by_channel.setdefault(ch, set()).add(topic)
    return ConsentState(channels, by_channel)


def withdrawn_topics(conn: sa.Connection,
                     customer_ids: Iterable[int] | None) -> dict[int, set[tuple[str, str]]]:
    """(channel, topic) pairs each customer currently withdrew from, for a batch of customers
    (None: every customer, as planning reads them): one query, the latest row per (customer,
    channel, topic)."""
    ids = None if customer_ids is None else list(customer_ids)
    if ids is not None and not ids:
        return {}
    rank = sa.func.row_number().over(partition_by=(L.c.customer_id, L.c.channel, L.c.topic),
                                     order_by=(L.c.occurred_at.desc(), L.c.id.desc()))
    which = [L.c.topic.is_not(None), L.c.customer_id.is_not(None)]
    if ids is not None:
        which.append(L.c.customer_id.in_(ids))
    ranked = (sa.select(L.c.customer_id, L.c.channel, L.c.topic, L.c.action, rank.label("n"))
              .where(*which).subquery())
    out: dict[int, set[tuple[str, str]]] = {}
    for cid, channel, topic in conn.execute(
            sa.select(ranked.c.customer_id, ranked.c.channel, ranked.c.topic)
            .where(ranked.c.n == 1, ranked.c.action == "withdrawn")):
        out.setdefault(int(cid), set()).add((channel, topic))
    return out


def history(conn: sa.Connection, customer_id: int) -> list[dict[str, Any]]:
    """Every ledger row of a customer, oldest first (for explain-style output and audits)."""
    return [dict(r._mapping) for r in conn.execute(
        sa.select(L).where(L.c.customer_id == customer_id).order_by(L.c.occurred_at, L.c.id))]


def after_import(conn: sa.Connection) -> int:
    """Reconcile consent columns an import just overwrote with the ledger; returns customers
    touched.

    An import writes the store's consent flags straight into the columns. Where that turned a
    channel back on for someone whose latest ledger row withdrew it, the later of the two wins:
    a withdrawal after the file's consent time stands (the column is turned off again, so a
    re-import never undoes an unsubscribe or a STOP), while consent the store recorded after
    the withdrawal (the person opted in again at checkout) becomes an ``import`` row.
    """
    touched = 0
    c = t.customers
    for channel in ADDRESS_COLUMN:
        flag, at = c.c[f"consent_{channel}"], c.c[f"consent_{channel}_at"]
        later = L.alias("later")
        newer = sa.exists().where(
            later.c.customer_id == L.c.customer_id, later.c.channel == L.c.channel,
            later.c.topic.is_(None),
            sa.or_(later.c.occurred_at > L.c.occurred_at,
                   sa.and_(later.c.occurred_at == L.c.occurred_at, later.c.id > L.c.id)))
        rows = conn.execute(
            sa.select(c.c.id, at.label("consent_at"), L.c.occurred_at)
            .select_from(c.join(L, L.c.customer_id == c.c.id))
            .where(flag, L.c.channel == channel, L.c.topic.is_(None), L.c.action == "withdrawn",
                   ~newer)).all()
        for row in rows:
            touched += 1
            if row.consent_at is not None and row.consent_at > row.occurred_at:
                record_change(conn, customer_id=row.id, channel=channel, action="granted",
                              source="import", occurred_at=row.consent_at,
                              evidence_key=f"import:{channel}:{row.id}:{row.consent_at.isoformat()}",
                              evidence={"consent_at_in_file": row.consent_at.isoformat()})
            else:
                conn.execute(sa.update(c).where(c.c.id == row.id).values(
                    {f"consent_{channel}": False, f"consent_{channel}_at": None}))
    return touched
