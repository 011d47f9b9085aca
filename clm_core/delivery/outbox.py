"""The outbox state machine, in SQL: claim, mark sending, record outcomes, recover leases.

    pending/deferred (send_after <= now)
        -> claimed (lease_owner, lease_expires_at, attempts + 1; reason 'claimed')
        -> claimed, reason 'sending' (just before the provider call)
        -> sent | failed | skipped | unknown | pending again with a later send_after

A lease that runs out is resolved by ``recover_expired``: a message whose send had not started
goes back to pending; one whose send had started is resent only where the provider honours our
idempotency key, otherwise it becomes ``unknown`` for an operator (never resent silently). The
owner of a lease may still record its real outcome over ``unknown``.

On PostgreSQL the claim is ``FOR UPDATE SKIP LOCKED``, so dispatchers never claim the same
row; on SQLite every write transaction here is ``BEGIN IMMEDIATE`` (one writer at a time).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from clm_core.db import rowset
from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.delivery.outbox_sql import RECORD_COLUMNS, mark_sql, record_and_mark_pg, record_sql

m = t.messages
P = ParamSpec("P")
R = TypeVar("R")
DUE = ("pending", "deferred")

CLAIM_COLUMNS = (m.c.id, m.c.idempotency_key, m.c.customer_id, m.c.journey, m.c.journey_version,
                 m.c.step_id, m.c.channel, m.c.template, m.c.coupon, m.c.tags, m.c.attempts,
                 m.c.created_at)


_RETRY_CODES = {"40P01", "40001"}  # deadlock detected, serialization failure


def retrying(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a write transaction again when the database aborted it for a deadlock (PostgreSQL
    updates rows of concurrent claims in different orders) or a busy SQLite file; an aborted
    transaction changed nothing, so running it again is safe. Also when the connection was
    lost (the dispatcher's writer does not test connections before use; see
    ``writer_engine``): the transaction may then have committed, but every write here is
    conditional on the rows' state and lease, so running it again changes nothing more (at
    worst a count: recorded rows found already recorded count as lost leases)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(8):
            try:
                return fn(*args, **kwargs)
            except sa.exc.OperationalError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                busy = "database is locked" in str(exc.orig)
                if attempt == 7 or not (code in _RETRY_CODES or busy
                                        or exc.connection_invalidated):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    return wrapper


def writer_engine(engine: Engine, *, pinged: bool = True) -> Engine:
    """An engine for the outbox's write transactions: on SQLite each one is ``BEGIN IMMEDIATE``,
    so a claim takes the write lock before it reads (no lost upgrade between processes).

    ``pinged=False``, for a writer used without pause for one run and disposed after it (the
    dispatcher's): on PostgreSQL an engine of its own whose connections are not tested on
    checkout. The test is a round trip, and the dispatcher checks a connection out for every
    wave of a few messages, itself one round trip; a connection lost anyway (a server restart)
    fails its statement, is dropped, and ``retrying`` runs the statement again."""
    if engine.dialect.name != "sqlite":
        if pinged:
            return engine
        return make_engine(engine.url.render_as_string(hide_password=False),
                           pool_pre_ping=False)
    writer = make_engine(engine.url.render_as_string(hide_password=False))

    @sa.event.listens_for(writer, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(writer, "begin")
    def _begin_immediate(conn: sa.Connection) -> None:
        # On the driver's connection: through ``exec_driver_sql`` (a statement's whole
        # execution context) this cost as much as the rest of a wave's transaction. A busy
        # database is raised as SQLAlchemy raises it, for the retries.
        raw = conn.connection.dbapi_connection
        assert raw is not None
        try:
            raw.execute("BEGIN IMMEDIATE")
        except conn.dialect.loaded_dbapi.Error as exc:
            raise rowset.wrapped(conn, "BEGIN IMMEDIATE", (), exc) from exc

    return writer


@retrying
def claim(engine: Engine, owner: str, limit: int, now: datetime, lease: timedelta,
          exclude_channels: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due messages for ``owner``; returns their rows."""
    due = (sa.select(m.c.id)
           .where(m.c.status.in_(DUE), m.c.send_after <= now)
           .order_by(m.c.send_after, m.c.id)
           .limit(limit))
    excluded = list(exclude_channels)
    if excluded:
        due = due.where(m.c.channel.not_in(excluded))
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (sa.update(m)
            .where(m.c.id.in_(due.scalar_subquery()))
            .values(status="claimed", reason="claimed", lease_owner=owner,
                    lease_expires_at=now + lease, attempts=m.c.attempts + 1, updated_at=now)
            .returning(*CLAIM_COLUMNS))
    with engine.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    rows.sort(key=lambda r: r["id"])
    return rows


@retrying
def mark_sending(engine: Engine, owner: str, ids: Sequence[int], batch_ids: Sequence[int],
                 now: datetime, lease: timedelta,
                 digests: dict[int, str] | None = None) -> set[int]:
    """From here on the provider may have the messages ``ids``: a lost lease is no longer safe
    to resend on a provider without idempotency. Renews the lease of ``ids`` and of the rest of
    the claimed batch ``batch_ids`` (the dispatcher passes the batch only when its lease is due
    for renewal: renewing hundreds of rows for every wave of a few messages cost more than the
    sends); returns the ids still held, and only those may be sent (the others' lease ran out
    and another dispatcher may have them). ``digests`` (id -> content digest) are stored with
    the mark, in the same statement, so a message whose outcome becomes unknown can be found in
    the provider's list."""
    if not ids:
        return set()
    if engine.dialect.name == "postgresql" and plain_wave(ids, batch_ids):
        # One statement is a transaction of its own (committed before its answer comes back):
        # no BEGIN and COMMIT round trips while the provider waits for the wave.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return _mark(conn, owner, ids, batch_ids, now, lease, digests or {})
    with engine.begin() as conn:
        return _mark(conn, owner, ids, batch_ids, now, lease, digests or {})


def plain_wave(ids: Sequence[int] = (), batch_ids: Sequence[int] = (),
               outcomes: Sequence[Resolution] = ()) -> bool:
    """Whether a wave's write is the usual one, which a single statement (or, on SQLite, a
    few on the event loop's connection) can do: no lease of the batch's other rows to renew
    (``batch_ids`` within the wave ``ids``) and no suppression to insert with its outcomes.
    Anything else takes the full transaction of ``mark_sending`` or ``record_and_mark``."""
    return not set(batch_ids) - set(ids) and not any(o.suppress for o in outcomes)


@retrying
def record_and_mark(engine: Engine, owner: str, outcomes: Sequence[Resolution], ids: Sequence[int],
                    batch_ids: Sequence[int], now: datetime, lease: timedelta,
                    digests: dict[int, str] | None = None) -> tuple[int, set[int]]:
    """``record`` the outcomes of a lane's last wave and ``mark_sending`` its next one, in one
    transaction: what the two calls do, one commit and one trip to the database's thread
    instead of two. Still at most one wave of the lane is marked and not recorded (the
    next one is marked only as the last one's outcomes are committed). Returns the rows
    recorded and the ids still held."""
    if (engine.dialect.name == "postgresql" and ids and outcomes
            and plain_wave(ids, batch_ids, outcomes)):
        # The usual wave: one statement, a transaction of its own (no BEGIN and COMMIT round
        # trips). Suppressions and the batch's lease renewal take the transaction below.
        params = record_and_mark_params(owner, outcomes, ids, now, lease, digests or {})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            [(updated, marked)] = rowset.execute(conn, record_and_mark_pg(), params)
        return int(updated), set(marked or ())
    with engine.begin() as conn:
        updated = _record(conn, owner, outcomes, now)
        return updated, _mark(conn, owner, ids, batch_ids, now, lease, digests or {})


def _mark(conn: sa.Connection, owner: str, ids: Sequence[int], batch_ids: Sequence[int],
          now: datetime, lease: timedelta, digests: dict[int, str]) -> set[int]:
    if not ids:
        return set()
    dialect = conn.dialect.name
    if dialect == "postgresql":
        params = mark_params(owner, ids, now, lease, digests)
        got = {r[0] for r in rowset.execute(conn, mark_sql(dialect), params)}
    else:
        counts = rowset.execute_each(conn, mark_sql(dialect),
                                     mark_rows(owner, ids, now, lease, digests))
        got = {i for i, n in zip(ids, counts) if n}
    rest = sorted(set(batch_ids) - set(ids))
    if rest:
        conn.execute(sa.update(m).where(m.c.id.in_(rest), m.c.lease_owner == owner,
                                        m.c.status == "claimed")
                     .values(lease_expires_at=now + lease))
    return got


def mark_params(owner: str, ids: Sequence[int], now: datetime, lease: timedelta,
                digests: dict[int, str]) -> dict[str, Any]:
    """PostgreSQL: the parameters of ``mark_sql`` for the wave ``ids``."""
    return {"ids": list(ids), "digests": [digests.get(i) for i in ids], "owner": owner,
            "expires": now + lease, "now": now}


def mark_rows(owner: str, ids: Sequence[int], now: datetime, lease: timedelta,
              digests: dict[int, str]) -> list[tuple[Any, ...]]:
    """SQLite: the parameters of ``mark_sql``, one tuple per message of the wave ``ids``."""
    at, until = rowset.stamp(now), rowset.stamp(now + lease)
    return [(until, at, digests.get(i), i, owner) for i in ids]


def record_and_mark_params(owner: str, outcomes: Sequence[Resolution], ids: Sequence[int],
                           now: datetime, lease: timedelta,
                           digests: dict[int, str]) -> dict[str, Any]:
    """PostgreSQL: the parameters of ``record_and_mark_pg``."""
    return {**_record_params(outcomes), **mark_params(owner, ids, now, lease, digests)}


@retrying
def renew(engine: Engine, owner: str, ids: Sequence[int], now: datetime, lease: timedelta) -> int:
    """Extend the lease of the claimed ``ids`` this owner still holds: a batch that waits for
    rate-limit slots (or issues many coupons) stays its owner's while it makes progress."""
    if not ids:
        return 0
    with engine.begin() as conn:
        return int(conn.execute(sa.update(m).where(
            m.c.id.in_(list(ids)), m.c.lease_owner == owner, m.c.status == "claimed")
            .values(lease_expires_at=now + lease)).rowcount)


@dataclass
class Resolution:
    """The new state of one claimed message (``send_after`` None keeps the old one)."""

    id: int
    status: str
    reason: str
    provider: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    sent_at: datetime | None = None
    send_after: datetime | None = None
    suppress: tuple[str, str, int, str] | None = None  # channel, address, customer_id, reason
    # False when the provider never acted on the message (its channel is halted: a revoked
    # key, no rate-limit slot): the claim gives its attempt back, so an outage spends none.
    attempted: bool = True


@retrying
def record(engine: Engine, owner: str, outcomes: Sequence[Resolution], now: datetime) -> int:
    """Commit outcomes (and suppressions) in one transaction; returns rows updated. Rows whose
    lease this owner lost to a resend are left alone; ``unknown`` ones get the real outcome."""
    if not outcomes:
        return 0
    with engine.begin() as conn:
        return _record(conn, owner, outcomes, now)


def _record(conn: sa.Connection, owner: str, outcomes: Sequence[Resolution], now: datetime) -> int:
    if not outcomes:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        updated = rowset.rowcount(conn, record_sql(dialect), record_params(owner, outcomes, now))
    else:
        updated = rowset.executemany(conn, record_sql(dialect), record_rows(owner, outcomes, now))
    suppressions = [{"channel": c, "address": a, "customer_id": cid, "reason": r,
                     "source": o.provider, "created_at": now}
                    for o in outcomes if o.suppress for c, a, cid, r in [o.suppress]]
    if suppressions:
        insert_ignore(conn, t.suppressions, suppressions, ["channel", "address"])
    return updated


def record_params(owner: str, outcomes: Sequence[Resolution], now: datetime) -> dict[str, Any]:
    """PostgreSQL: the parameters of ``record_sql``."""
    return {**_record_params(outcomes), "now": now, "owner": owner}


def record_rows(owner: str, outcomes: Sequence[Resolution],
                now: datetime) -> list[tuple[Any, ...]]:
    """SQLite: the parameters of ``record_sql``, one tuple per outcome."""
    at = rowset.stamp(now)
    return [(o.status, o.reason, o.send_after and rowset.stamp(o.send_after), o.provider,
             o.provider_message_id, o.error_code, o.error_message,
             o.sent_at and rowset.stamp(o.sent_at), 0 if o.attempted else 1, at, o.id, owner)
            for o in outcomes]


def _record_params(outcomes: Sequence[Resolution]) -> dict[str, Any]:
    """PostgreSQL: the outcomes as one array per column of ``RECORD_COLUMNS``."""
    columns = zip(*[(o.id, o.status, o.reason, o.send_after, o.provider, o.provider_message_id,
                     o.error_code, o.error_message, o.sent_at, 0 if o.attempted else 1)
                    for o in outcomes])
    return {name: list(values) for (name, _), values in zip(RECORD_COLUMNS, columns)}


def insert_ignore(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]],
                  keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO NOTHING on either backend."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(dialect_insert(table).on_conflict_do_nothing(index_elements=keys), rows)


@dataclass
class Recovered:
    requeued: int = 0
    unknown: int = 0


@retrying
def recover_expired(engine: Engine, now: datetime, idempotent_channels: Iterable[str]) -> Recovered:
    """Resolve claims whose lease ran out without an outcome (the dispatcher died or hung)."""
    expired = sa.and_(m.c.status == "claimed", m.c.lease_expires_at < now)
    safe = sa.or_(m.c.reason != "sending", m.c.channel.in_(list(idempotent_channels)))
    with engine.begin() as conn:
        requeued = conn.execute(sa.update(m).where(expired, safe).values(
            status="pending", reason="lease_expired_requeued", lease_owner=None,
            lease_expires_at=None, updated_at=now)).rowcount
        unknown = conn.execute(sa.update(m).where(expired, m.c.reason == "sending").values(
            status="unknown", reason="lease_expired_while_sending", error_code="lease_expired",
            error_message="the dispatcher stopped while sending; the provider may or may not have "
                          "accepted this message and does not deduplicate, so it is not resent "
                          "automatically (check the provider, then `clm dispatch --retry-unknown`)",
            lease_expires_at=None, updated_at=now)).rowcount
    return Recovered(requeued, unknown)


@retrying
def requeue(engine: Engine, now: datetime, status: str = "unknown",
            ids: Sequence[int] | None = None) -> int:
    """An operator's decision: send ``unknown`` messages again (after checking the provider),
    or ``failed`` ones after fixing the cause (a revoked key, a broken template). Attempts
    restart; consent and suppressions are checked again before sending."""
    if status not in ("unknown", "failed"):
        raise ValueError(f"only unknown or failed messages can be requeued, not {status!r}")
    cond = m.c.status == status
    if ids is not None:
        cond = sa.and_(cond, m.c.id.in_(list(ids)))
    with engine.begin() as conn:
        return conn.execute(sa.update(m).where(cond).values(
            status="pending", reason=f"operator_retry_{status}", send_after=now, attempts=0,
            lease_owner=None, updated_at=now)).rowcount


def next_due(engine: Engine, exclude_channels: Iterable[str] = ()) -> datetime | None:
    """When the next message becomes due, or a lease runs out (None: nothing left to do)."""
    excluded = list(exclude_channels)
    due = sa.select(sa.func.min(m.c.send_after)).where(m.c.status.in_(DUE))
    if excluded:
        due = due.where(m.c.channel.not_in(excluded))
    lease = sa.select(sa.func.min(m.c.lease_expires_at)).where(m.c.status == "claimed")
    with engine.connect() as conn:
        times = [conn.scalar(due), conn.scalar(lease)]
    times = [x for x in times if x is not None]
    return min(times) if times else None
