"""The engine's edges: read a Snapshot from the database, write a Plan back idempotently, and
keep journey versions.

Writes (``clm_core.journeys.writeback``, set-based) are safe to repeat: enrollments are unique
on (journey, customer, entry_seq) and messages on their idempotency key, both inserted with ON
CONFLICT DO NOTHING, so running an evaluation twice at the same time (or two racing runs)
creates nothing new.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.consent.ledger import withdrawn_topics
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.db.staging import join_memory
from clm_core.errors import Problem, SpecError
from clm_core.journeys.candidates import (
    changeable_enrollments,
    entry_filters,
    segment_candidates,
    tables_named,
)
from clm_core.journeys.engine import (
    ENROLLMENT_COLUMNS,
    TIME_COLUMNS,
    Snapshot,
    empty_enrollments,
)
from clm_core.journeys.fields import ENGAGEMENT_EVENTS, ENGAGEMENT_LOOKBACK_DAYS, FIELDS
from clm_core.journeys.loader import CompiledJourney, load_journey, parse_journey
from clm_core.journeys.model import ProjectPolicy
from clm_core.journeys.writeback import Written, write_plan  # noqa: F401  (re-exported)
from clm_core.lifecycle.features import NOT_PURCHASES
from clm_core.yamlspec import parse_yaml, problems_from_pydantic

LEDGER_STATUSES = ("pending", "deferred", "claimed", "sent", "unknown")
NOT_JOURNEYS = {"lifecycle.yaml", "loyalty.yaml"}  # stage rules and the loyalty programme


def journey_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml")
                  if p.name not in NOT_JOURNEYS and not p.name.startswith("_"))


def project_policy(section: dict) -> ProjectPolicy:
    """The ``[journeys]`` section of clm.toml as a ProjectPolicy (SpecError when invalid)."""
    from pydantic import ValidationError

    from clm_core.yamlspec import Locator

    try:
        return ProjectPolicy.model_validate(section)
    except ValidationError as exc:
        raise SpecError(problems_from_pydantic(exc, Locator("clm.toml [journeys]", {}),
                                               ProjectPolicy)) from None


def duplicate_name(j: CompiledJourney, seen: dict[str, str]) -> list[Problem]:
    """A problem if another file already uses ``j``'s name (``seen``: name -> file)."""
    if j.name not in seen:
        seen[j.name] = j.file
        return []
    line, col = parse_yaml(j.source, j.file)[1].at(("name",))
    return [Problem(j.file, line, col, f"journey name {j.name!r} is already used by "
                    f"{seen[j.name]}; names must be unique")]


def load_journeys(directory: Path, policy: ProjectPolicy) -> list[CompiledJourney]:
    """Every journey file, compiled; all problems of all files raised together."""
    out: list[CompiledJourney] = []
    problems = []
    seen: dict[str, str] = {}
    for path in journey_files(directory):
        try:
            j = load_journey(path, policy)
        except SpecError as exc:
            problems += exc.problems
            continue
        problems += duplicate_name(j, seen)
        out.append(j)
    if problems:
        raise SpecError(problems)
    return out


# --- versions ---------------------------------------------------------------------------------

def _hash(j: CompiledJourney) -> str:
    """Content hash without the status, so pausing a journey does not make a new version."""
    import hashlib

    dump = j.spec.model_dump(mode="json", by_alias=True, exclude={"status"})
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def sync_versions(conn: Connection, journeys: Sequence[CompiledJourney], now: datetime,
                  write: bool = True) -> dict[str, str]:
    """Give each journey its version number: the stored one when the content is unchanged,
    the next one otherwise (stored when ``write``). Returns {journey: 'new'|'changed'|'same'}."""
    v = t.journey_versions
    rows = conn.execute(sa.select(v.c.journey, v.c.version, v.c.content_hash)
                        .where(v.c.journey.in_([j.name for j in journeys]))
                        .order_by(v.c.journey, v.c.version)).all()
    latest = {r.journey: (r.version, r.content_hash) for r in rows}
    outcome = {}
    for j in journeys:
        h = _hash(j)
        version, stored = latest.get(j.name, (0, None))
        if stored == h:
            j.version, outcome[j.name] = version, "same"
            continue
        j.version, outcome[j.name] = version + 1, ("changed" if stored else "new")
        if write and j.spec.status != "draft":  # a racing run may store the same version
            write_frame(conn, v, pd.DataFrame([{
                "journey": j.name, "version": j.version, "content_hash": h, "status": j.spec.status,
                "definition": {"source": j.source, "file": j.file}, "created_at": now}]),
                keys=["journey", "version"])
    return outcome


def load_previous(conn: Connection, keys: Iterable[tuple[str, int]],
                  policy: ProjectPolicy) -> list[CompiledJourney]:
    """Older versions that enrollments still follow (on_edit: stay)."""
    v = t.journey_versions
    out = []
    for name, version in set(keys):
        row = conn.execute(sa.select(v.c.definition).where(v.c.journey == name,
                                                           v.c.version == int(version))).first()
        if row is None:
            continue
        try:
            j = parse_journey(row.definition["source"], f"{name} v{version}", policy)
        except SpecError:  # an old version the current fields no longer accept: let it drain
            continue
        j.version = int(version)
        out.append(j)
    return out


# --- snapshot ---------------------------------------------------------------------------------

def read_frame(conn: Connection, query: sa.Select, driver_rows: bool = False) -> pd.DataFrame:
    """A query's rows as a DataFrame, fast: times come back raw (text on SQLite) and are parsed
    in one vectorised pass per column instead of one Python call per value.

    ``driver_rows``: take the rows straight from the driver's cursor, skipping SQLAlchemy's
    per-row processing (a Row object per row, a Decimal per NUMERIC value on SQLite), which
    costs more than the query itself on millions of rows; numbers then come as the driver
    gives them (float or Decimal) and the caller converts them. Booleans are still booleans
    (SQLite gives 0 and 1): a column without NULLs as bool, else as objects with None."""
    times = []
    flags = []
    cols = []
    for col in query.selected_columns:
        if isinstance(col.type, (sa.DateTime, sa.Date)):
            times.append(col.name)
            col = sa.type_coerce(col, sa.String).label(col.name)
        elif isinstance(col.type, sa.Boolean):
            flags.append(col.name)
        cols.append(col)
    result = conn.execute(query.with_only_columns(*cols))
    keys = list(result.keys())
    if driver_rows:
        # Millions of row tuples would each count toward a garbage collection, and every
        # collection walks all of them: paused, a 5-million-row read takes a third of the time.
        with gc_paused():
            raw = result.cursor.fetchall() if result.cursor is not None else []
            result.close()
            df = pd.DataFrame.from_records(raw, columns=keys) if raw else \
                pd.DataFrame({k: [] for k in keys})
            del raw
        for name in flags:
            df[name] = _booleans(df[name])
    else:
        rows = result.fetchall()
        df = pd.DataFrame({k: list(v) for k, v in zip(keys, zip(*rows))} if rows else
                          {k: [] for k in keys})
    for name in times:
        df[name] = pd.to_datetime(df[name], format="ISO8601").astype("datetime64[ns]")
    return df


def _booleans(s: pd.Series) -> pd.Series:
    """A driver's booleans (True/False, or 1/0 from SQLite) as SQLAlchemy gives them."""
    if s.dtype == bool:
        return s
    if s.notna().all():
        return s.astype(bool)
    return s.map({0: False, 1: True}).astype(object).where(s.notna(), None)


def _json_column(s: pd.Series) -> pd.Series:
    """JSON read as text, parsed once per distinct text (a ledger repeats a few tag lists
    hundreds of thousands of times); NULL as None."""
    texts = pd.unique(s.dropna())
    parsed = {v: json.loads(v) for v in texts}
    return pd.Series([None if v is None else parsed[v] for v in s.where(s.notna(), None)],
                     index=s.index, dtype=object)


def _as_text(col: sa.ColumnElement) -> sa.ColumnElement:
    """A JSON column read as its text (PostgreSQL's jsonb printed by the server)."""
    return sa.type_coerce(sa.cast(col, sa.Text), sa.String).label(col.name)


_frame = read_frame


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (what is built there holds no cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _times(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    for c in cols:
        if c in df:
            df[c] = pd.to_datetime(df[c], format="ISO8601").astype("datetime64[ns]")
    return df


# what the engine itself reads besides the journeys' conditions
ENGINE_FIELDS = (
    "stage",
    "stage_since",
    "timezone",
    "consent_email",
    "consent_sms",
    "email",
    "phone",
)


def field_column(name: str) -> sa.Column | None:
    """The stored column of a condition field (None for one the engine derives)."""
    c, s, lo = t.customers, t.customer_scores, t.loyalty_status
    return s.c.get(name) if name in s.c else c.c.get(name) if name in c.c else lo.c.get(name)


def load_customers(conn: Connection, fields: Iterable[str] | None = None,
                   where: sa.ColumnElement | None = None) -> pd.DataFrame:
    """Scored customers with the given condition fields (default: all) and the contact fields,
    indexed by customer_id; only those ``where`` holds when given (it may name the columns
    of customers, customer_scores and loyalty_status)."""
    c, s, lo = t.customers, t.customer_scores, t.loyalty_status
    wanted = [n for n in FIELDS if n in set(fields or FIELDS) | set(ENGINE_FIELDS)]
    cols = [col for col in map(field_column, wanted) if col is not None]  # None: derived
    joined = s.join(c, c.c.id == s.c.customer_id)
    # loyalty fields: empty for non-members
    if lo in {col.table for col in cols} | tables_named(where):
        joined = joined.outerjoin(lo, lo.c.customer_id == s.c.customer_id)
    query = sa.select(s.c.customer_id, *cols).select_from(joined)
    df = _frame(conn, query if where is None else query.where(where), driver_rows=True)
    sup = _frame(conn, sa.select(t.suppressions.c.channel, t.suppressions.c.address))
    for ch, addr in (("email", "email"), ("sms", "phone")):
        df[f"suppressed_{ch}"] = df[addr].isin(sup.loc[sup["channel"] == ch, "address"])
    return df.set_index("customer_id")


def _needed_table(conn: Connection, ids: sa.CompoundSelect) -> sa.Table:
    """The customer ids of ``ids`` (a union: each once) in a temporary table (read by two
    queries; dropped by the caller, and on PostgreSQL at the latest when the transaction ends).

    PostgreSQL creates it from the query (``CREATE TABLE ... AS``), which may run in parallel
    workers where an ``INSERT ... SELECT`` may not: at a million customers 2.5-3.0 s against
    3.7-4.1 s. Its readers hash it, so it needs no key there; SQLite's look its rows up by key.

    The planner still ran the enrollments' part alone: it takes the per-journey ``CASE`` to
    keep half of the active enrollments (437,684 of 875,368 in a settled store, where it kept
    67,075), and at its default price for each row a worker hands back
    (``parallel_tuple_cost`` 0.1) that misjudged half outprices the parallel plan. Priced at
    0.01 for this statement, the scan and the hash joins of the customers' rows are shared by
    two workers and the leader: 2.0-2.3 s against 2.8-3.3 s."""
    name = "_clm_needed"
    table = sa.Table(name, sa.MetaData(), sa.Column("customer_id", sa.Integer, primary_key=True))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        query = ids.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        with join_memory(conn, parallel_tuple_cost="0.01"):
            conn.exec_driver_sql(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {query}",
                                 query.construct_params())
        conn.exec_driver_sql(f"ANALYZE {name}")  # row estimates for the joins that read it
        return table
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} (customer_id INTEGER PRIMARY KEY)")
    conn.execute(sa.insert(table).from_select(["customer_id"], ids))
    return table


def active_versions(conn: Connection) -> dict[tuple[str, int], datetime]:
    """The (journey, version) pairs active enrollments follow, each with its earliest entry.

    Asked of every stored version (an enrollment follows one: ``sync_versions`` stores it
    before anyone enters it), each a seek in the enrollments' (status, journey, version,
    entered_at) index: a grouping of the active enrollments reads them all, at a million
    customers 0.6 s on PostgreSQL and 1-1.7 s on SQLite, against well under a millisecond."""
    e, v = t.journey_enrollments, t.journey_versions
    earliest = sa.select(sa.func.min(e.c.entered_at)).where(
        e.c.status == "active", e.c.journey == v.c.journey, e.c.journey_version == v.c.version
    ).scalar_subquery()  # typed as entered_at: read back as a datetime on SQLite too
    return {(name, int(version)): first for name, version, first in conn.execute(
        sa.select(v.c.journey, v.c.version, earliest)) if first is not None}


def earliest_entries(conn: Connection,
                     active: dict[tuple[str, int], datetime] | None = None) -> dict[str, datetime]:
    """Each journey's earliest entry among its active enrollments (from ``active_versions``,
    read when not given)."""
    out: dict[str, datetime] = {}
    for (name, _), at in (active_versions(conn) if active is None else active).items():
        out[name] = at if name not in out else min(out[name], at)
    return out


def _most_may_change(conn: Connection, now: datetime, moves: int) -> bool:
    """Whether steps due and stage moves alone reach half the scored customers (as on the
    nights after a store's first scoring, when every customer has just moved into a stage and
    been enrolled): then picking out who may change costs more than it saves, and one read of
    everyone is quicker. Two counts by index."""
    e, s = t.journey_enrollments, t.customer_scores
    due = conn.scalar(sa.select(sa.func.count()).select_from(e).where(
        e.c.status == "active", e.c.step_due_at <= now)) or 0
    scored = conn.scalar(sa.select(sa.func.count()).select_from(s)) or 0
    return due + moves >= scored / 2


def _unindexed(col: sa.ColumnElement) -> sa.ColumnElement:
    """``col`` behind SQLite's unary ``+``, its documented way to keep a term from choosing an
    index. The ledger's read of the customers an evaluation may change otherwise walks the
    status index over every message in a ledger status and looks each one's customer up in
    the temporary table (of which the planner knows nothing); kept from the status index, it
    finds those customers' messages by the customer index: at a million customers (80,000
    chosen, 136,000 of 944,000 messages read) 0.26 s against 1.26 s. PostgreSQL plans this
    by its statistics."""
    return sa.sql.expression.UnaryExpression(col, operator=sa.sql.operators.custom_op("+"),
                                             type_=col.type)


Part = tuple[int | None, int | None]  # customer ids lo <= id < hi; None: no bound
EVERYONE: Part = (None, None)


def _in(col: sa.ColumnElement, part: Part) -> list[sa.ColumnElement]:
    """The conditions that keep ``col`` (a customer id) inside ``part`` (none for everyone)."""
    lo, hi = part
    return [*([] if lo is None else [col >= lo]), *([] if hi is None else [col < hi])]


@dataclass
class _Triggers:
    """The rows that may enter someone: stage moves into a stage a journey is entered by,
    tier moves, entry events; each inside the longest entry window."""

    moved: sa.Select
    tiered: sa.Select
    triggered: sa.Select
    by_stage: bool
    by_tier: bool
    by_event: bool
    within: pd.Timedelta
    entry_types: list[str]

    @classmethod
    def of(cls, journeys: Sequence[CompiledJourney], now: datetime) -> _Triggers:
        within = max((j.spec.entry.within for j in journeys), default=pd.Timedelta(days=7))
        tr, tt, ev = t.stage_transitions, t.tier_transitions, t.events
        # Only moves into a stage some journey is entered by: the first scoring records a
        # move for every customer, and a week of them would otherwise be read every night.
        entered_by = sorted({j.spec.entry.stage.to for j in journeys if j.spec.entry.stage})
        types = sorted({j.spec.entry.event.type for j in journeys if j.spec.entry.event})
        return cls(
            moved=sa.select(tr.c.customer_id, tr.c.from_stage, tr.c.to_stage,
                            tr.c.transitioned_at).where(
                tr.c.transitioned_at > now - within, tr.c.transitioned_at <= now,
                tr.c.to_stage.in_(entered_by)),
            tiered=sa.select(tt.c.customer_id, tt.c.from_tier, tt.c.to_tier,
                             tt.c.transitioned_at).where(
                tt.c.transitioned_at > now - within, tt.c.transitioned_at <= now),
            triggered=sa.select(ev.c.customer_id).where(
                ev.c.event_type.in_(types), ev.c.occurred_at > now - within,
                ev.c.occurred_at <= now),
            by_stage=bool(entered_by), by_tier=any(j.spec.entry.tier is not None
                                                   for j in journeys),
            by_event=bool(types), within=within, entry_types=types)

    def who(self) -> list[sa.Select]:
        """The customer ids of every trigger row some journey uses."""
        return [q.with_only_columns(q.selected_columns[0]) for q, used in (
            (self.moved, self.by_stage), (self.triggered, self.by_event),
            (self.tiered, self.by_tier)) if used]


@dataclass
class Scope:
    """Whom an evaluation reads: the customers it may change, in a temporary table
    (``clm_core.journeys.candidates``), or everyone (``needed`` None); and how many they are,
    so that a big evaluation reads and plans them part by part (``parts``)."""

    needed: sa.Table | None
    customers: int
    triggers: _Triggers

    def parts(self, conn: Connection, size: int) -> list[Part]:
        """Customer id ranges of at most about ``size`` of the scope's customers each, which
        together cover every id: one part, EVERYONE, when the scope fits in one. The engine
        decides customer by customer, so planning the parts one after the other plans what
        one pass would, with a part's rows in memory at a time instead of everyone's (at a
        million customers, right after the first scoring, 2.3 GB in one pass)."""
        k = -(-self.customers // max(size, 1))
        if k <= 1:
            return [EVERYONE]
        step = -(-self.customers // k)  # customers a part, the last one the rest
        col = (self.needed if self.needed is not None else t.customer_scores).c.customer_id
        # Each cut is the id ``step`` places past the one before, found from it in the key's
        # index: the whole walk steps over each id once (ntile over the ids took 2.8 s on
        # SQLite at a million; an offset from the start each time grows with the parts).
        cuts: list[int] = []
        while len(cuts) < k - 1:
            query = sa.select(col).order_by(col).offset(step).limit(1)
            cut = conn.scalar(query if not cuts else query.where(col >= cuts[-1]))
            if cut is None:
                break
            cuts.append(int(cut))
        bounds: list[int | None] = [None, *cuts, None]
        return list(zip(bounds[:-1], bounds[1:]))

    def close(self, conn: Connection) -> None:
        if self.needed is not None:
            conn.exec_driver_sql(f"DROP TABLE {self.needed.name}")
            self.needed = None


def evaluation_scope(conn: Connection, journeys: Sequence[CompiledJourney], now: datetime,
                     entered: dict[str, datetime] | None = None) -> Scope:
    """Whom an evaluation at ``now`` must read. ``entered``: ``earliest_entries``, when the
    caller has read them already."""
    trig = _Triggers.of(journeys, now)
    moves = conn.scalar(sa.select(sa.func.count()).select_from(trig.moved.subquery())) \
        if trig.by_stage else 0
    segments = entry_filters(journeys, field_column, now)
    if segments is None or _most_may_change(conn, now, moves or 0):
        return Scope(None, conn.scalar(sa.select(sa.func.count()).select_from(
            t.customer_scores)) or 0, trig)
    needed = _needed_table(conn, sa.union(
        changeable_enrollments(journeys, now, field_column,
                               entered if entered is not None else earliest_entries(conn)),
        *segment_candidates(segments, apart=conn.dialect.name == "postgresql"),
        *trig.who()))
    return Scope(needed, conn.scalar(sa.select(sa.func.count()).select_from(needed)) or 0, trig)


def load_snapshot(conn: Connection, journeys: Sequence[CompiledJourney], now: datetime,
                  policy: ProjectPolicy,
                  entered: dict[str, datetime] | None = None, *,
                  scope: Scope | None = None, part: Part = EVERYONE) -> Snapshot:
    """What an evaluation at ``now`` reads: the customers of ``scope`` (``evaluation_scope``,
    made and dropped here when not given) whose ids are in ``part``, with everything of
    theirs the engine weighs. ``entered``: ``earliest_entries``, when the caller has read them
    already."""
    own = scope is None
    if scope is None:
        scope = evaluation_scope(conn, journeys, now, entered)
    try:
        return _snapshot(conn, journeys, now, policy, scope, part)
    finally:
        if own:
            scope.close(conn)


def _snapshot(conn: Connection, journeys: Sequence[CompiledJourney], now: datetime,
              policy: ProjectPolicy, scope: Scope, part: Part) -> Snapshot:
    names = sorted({j.name for j in journeys})
    needed, trig = scope.needed, scope.triggers
    tr, tt, ev = t.stage_transitions, t.tier_transitions, t.events
    transitions = _times(_frame(conn, trig.moved.where(*_in(tr.c.customer_id, part)),
                                driver_rows=True), ["transitioned_at"])
    among = None if needed is None else sa.select(needed.c.customer_id)
    e = t.journey_enrollments
    mine = sa.and_(e.c.journey.in_(names), *_in(e.c.customer_id, part),
                   *([] if among is None else [e.c.customer_id.in_(among)]))
    latest = sa.select(e.c.journey, e.c.customer_id, sa.func.max(e.c.entry_seq).label("seq")) \
        .where(mine).group_by(e.c.journey, e.c.customer_id).subquery()
    # The engine state's two times are taken out of the JSON by the database (json_extract,
    # ->>): parsing hundreds of thousands of documents in Python costs seconds.
    cols = [e.c[c] for c in ENROLLMENT_COLUMNS if c in e.c] + [
        e.c.state["trigger_at"].as_string().label("trigger_at"),
        e.c.state["unmatched_at"].as_string().label("unmatched_at")]
    enr = _frame(conn, sa.select(*cols).join(latest, sa.and_(
        e.c.journey == latest.c.journey, e.c.customer_id == latest.c.customer_id,
        e.c.entry_seq == latest.c.seq)).where(mine), driver_rows=True)
    if enr.empty:
        enr = empty_enrollments()
    else:
        enr = _times(enr, TIME_COLUMNS)
        enr["is_control"] = enr["is_control"].astype(bool)
    active_since = enr.loc[enr["status"] == "active", "entered_at"].min()
    since = now - trig.within
    if pd.notna(active_since):
        since = min(since, active_since.to_pydatetime())
    types = set(trig.entry_types) | {g.event.type for j in journeys for g in j.spec.goals
                                     if g.event}
    used = set().union(*(j.fields for j in journeys)) if journeys else set()
    engaged = sorted(e for e in ENGAGEMENT_EVENTS if f"days_since_{e}" in used)
    lookback = now - pd.Timedelta(days=ENGAGEMENT_LOOKBACK_DAYS)
    wanted = sa.or_(sa.and_(ev.c.event_type.in_(sorted(types)), ev.c.occurred_at > since),
                    sa.and_(ev.c.event_type.in_(engaged), ev.c.occurred_at > lookback))
    events = _times(_frame(conn, sa.select(ev.c.customer_id, ev.c.event_type, ev.c.occurred_at)
                           .where(wanted, ev.c.occurred_at <= now,
                                  *_in(ev.c.customer_id, part))), ["occurred_at"])
    o = t.orders
    wants_orders = pd.notna(active_since) and any(g.order for j in journeys for g in j.spec.goals)
    # Order goals count purchases only, as the features do (not cancelled, refunded, pending).
    orders = _times(
        _frame(
            conn,
            sa.select(o.c.customer_id, o.c.ordered_at, o.c.amount).where(
                o.c.ordered_at > (active_since.to_pydatetime() if wants_orders else now),
                o.c.ordered_at <= now,
                o.c.status.not_in(NOT_PURCHASES),
                *_in(o.c.customer_id, part),
            ),
        ),
        ["ordered_at"],
    )
    orders["amount"] = orders["amount"].astype(float)
    m = t.messages
    windows = [c.window for c in policy.caps] + [c.window for j in journeys
                                                 for c in j.spec.contact_policy.caps]
    horizon = now - max(windows, default=pd.Timedelta(days=7))
    at = sa.func.coalesce(m.c.sent_at, m.c.send_after)
    status: sa.ColumnElement = m.c.status
    if among is not None and conn.dialect.name == "sqlite":
        status = _unindexed(status)  # found by customer instead (``_unindexed``)
    counted = [status.in_(LEDGER_STATUSES), at > horizon, *_in(m.c.customer_id, part)]
    if among is not None:  # caps only weigh the messages of those who may be sent one
        counted.append(m.c.customer_id.in_(among))
    ledger = _times(_frame(conn, sa.select(m.c.customer_id, m.c.channel, _as_text(m.c.tags),
                                           at.label("at")).where(*counted),
                           driver_rows=True), ["at"])
    ledger["tags"] = _json_column(ledger["tags"]).map(lambda v: v or [])
    if len(transitions) == 0:
        transitions = Snapshot(pd.DataFrame()).transitions
    tiers = Snapshot(pd.DataFrame()).tier_transitions
    if trig.by_tier:
        found = _times(_frame(conn, trig.tiered.where(*_in(tt.c.customer_id, part))),
                       ["transitioned_at"])
        tiers = found if len(found) else tiers
    fields = set().union(*(j.fields for j in journeys)) if journeys else set()
    if trig.by_tier:
        fields.add("tier")  # a tier trigger checks the customer is still in the tier
    # Topics withdrawn on the preferences page: few rows, read whole (one query).
    withdrawn = Snapshot(pd.DataFrame()).withdrawn_topics
    rows = [(cid, channel, topic)
            for cid, pairs in withdrawn_topics(conn, None).items() for channel, topic in pairs]
    if rows:
        withdrawn = pd.DataFrame(rows, columns=["customer_id", "channel", "topic"])
    s = t.customer_scores
    whose = [*_in(s.c.customer_id, part), *([] if among is None else [s.c.customer_id.in_(among)])]
    customers = load_customers(conn, fields, sa.and_(*whose) if whose else None)
    return Snapshot(
        customers=customers,
        enrollments=enr,
        transitions=transitions,
        tier_transitions=tiers,
        events=events,
        orders=orders,
        ledger=ledger,
        withdrawn_topics=withdrawn,
    )


