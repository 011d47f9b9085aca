"""The loyalty evaluation's edges: read what it needs, append its ledger rows, keep each
member's status current, record tier transitions and reward events — all in the caller's
transaction, so a crash leaves either everything or nothing of one evaluation.

Appends are keyed (``points_ledger.key`` is unique and inserted with ON CONFLICT DO NOTHING),
so two racing evaluations, or a rerun after a kill -9, add nothing twice.
"""

from __future__ import annotations

import hashlib
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.db.engine import make_engine, references_trusted, take_write_lock
from clm_core.errors import ConfigError, InputError
from clm_core.journeys.store import gc_paused, read_frame
from clm_core.loyalty import ahead
from clm_core.loyalty.ledger import (
    KIND,
    LEDGER_COLUMNS,
    REVERSED,
    STATUS_COLUMNS,
    WAITING,
    Evaluation,
    Inputs,
    earnings,
    empty_ledger,
    settle,
    whole_points,
)
from clm_core.loyalty.spec import Programme
from clm_core.runs import utcnow

REWARD_EVENT = "loyalty_reward"
# Above this many rows a write goes in bulk mode: the table is locked for the rest of the
# evaluation's transaction (it holds the evaluation lock anyway) and its secondary indexes are
# rebuilt once instead of maintained row by row.
BULK_ROWS = 50_000


@dataclass
class Summary:
    """What one evaluation did, for the command's output and the flow's report."""

    as_of: datetime
    members: int
    evaluated: int  # customers whose points or tier could have changed (all on a full run)
    rows: dict[str, int]  # kind -> rows appended
    points: dict[str, int]  # kind -> points appended
    tier_changes: int
    rewards: int
    tiers: dict[str, int]  # tier -> members
    # CPU seconds of each step (read, compute, write, commit), second processes included, for
    # benchmarks and profiling; not part of what the evaluation did, so two equal evaluations
    # compare equal
    cpu: dict[str, float] = field(default_factory=dict, compare=False)

    def lines(self) -> list[str]:
        added = ", ".join(f"{k} {self.rows[k]:,} ({self.points[k]:+,} points)"
                          for k in sorted(self.rows)) or "nothing new"
        tiers = ", ".join(f"{k} {v:,}" for k, v in self.tiers.items())
        return [f"loyalty as of {self.as_of:%Y-%m-%d %H:%M}: {self.members:,} members ({tiers}); "
                f"{self.evaluated:,} evaluated",
                f"  ledger: {added}",
                f"  tier changes: {self.tier_changes:,}; rewards issued: {self.rewards:,}"]


def _birthday_months(conn: Connection, only: bool) -> pd.DataFrame:
    """Birthday month per customer from the ``birthday`` attribute (YYYY-MM-DD or MM-DD);
    extracted by the database, so customers without one cost nothing."""
    c = t.customers
    birthday = c.c.attributes["birthday"].as_string()
    df = _read(conn, _only(sa.select(c.c.id.label("customer_id"), birthday.label("birthday"))
                           .where(birthday.is_not(None)), c.c.id, only))
    parts = df["birthday"].astype(str).str.split("-")
    month = pd.to_numeric(parts.str[-2], errors="coerce")
    df["birthday_month"] = month.where(month.between(1, 12))
    return df[["customer_id", "birthday_month"]]


_IDS = sa.Table("loyalty_ids", sa.MetaData(), sa.Column("customer_id", sa.Integer,
                                                      primary_key=True),
                prefixes=["TEMPORARY"])


def _read(conn: Connection, query: sa.Select) -> pd.DataFrame:
    return read_frame(conn, query, driver_rows=True)


READ_CHUNK_ROWS = 500_000  # orders fetched at a time: the rows as tuples take 300 bytes each
# Order ids spanned above which a full read shares the orders with a second process.
SPLIT_READ_IDS = 200_000


def _times(values: tuple[object, ...]) -> np.ndarray:
    """SQLite's text (YYYY-MM-DD HH:MM:SS.ffffff) or the driver's datetimes, as datetime64."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy would move a time with an offset to UTC
            return np.array(values, dtype="datetime64[us]").astype("datetime64[ns]")
    except (ValueError, UserWarning):  # another way of writing times: pandas reads them all
        parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601")
        return parsed.astype("datetime64[ns]").to_numpy()


def _array(dtype: object) -> Callable[[tuple[object, ...]], np.ndarray]:
    return lambda values: np.array(values, dtype=dtype)  # type: ignore[call-overload]


# each column and how its values become an array (amounts: floats on SQLite, Decimals on
# PostgreSQL; points redeemed: whole numbers or None, which numpy makes NaN)
_ORDER_COLUMNS = [("id", _array("int64")), ("customer_id", _array("int64")),
                  ("ordered_at", _times), ("amount", _array(float)), ("currency", _array(object)),
                  ("status", _array(object)), ("points_redeemed", _array(float))]


def _order_columns(result: sa.CursorResult) -> dict[str, np.ndarray]:
    """The rows of ``result`` (the columns of ``_ORDER_COLUMNS``) as typed columns built
    straight from the driver's rows, a chunk at a time: on a whole history of millions of
    orders pandas' inference of each column from the rows costs more than the typed arrays
    do, and all the rows as tuples at once would take gigabytes."""
    parts: list[list[np.ndarray]] = [[] for _ in _ORDER_COLUMNS]
    with gc_paused():  # millions of row tuples: see read_frame
        while result.cursor is not None:
            raw = result.cursor.fetchmany(READ_CHUNK_ROWS)
            if not raw:
                break
            for part, (_, convert), values in zip(parts, _ORDER_COLUMNS, zip(*raw)):
                part.append(convert(values))
            del raw
        result.close()
    return {name: np.concatenate(part) if part else convert(())
            for (name, convert), part in zip(_ORDER_COLUMNS, parts)}


def _orders_frame(pieces: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Orders (id, customer_id, ordered_at, amount, currency, status, points_redeemed) from
    ``_order_columns`` of consecutive id ranges, in their order."""
    cols = {name: np.concatenate([piece[name] for piece in pieces]) if len(pieces) > 1
            else pieces[0][name] for name, _ in _ORDER_COLUMNS}
    codes, values = pd.factorize(cols["status"])
    return pd.DataFrame({
        **cols, "status": pd.Categorical.from_codes(  # a few values, compared often
            codes, categories=pd.Index(values, dtype=object))})


def _read_orders(conn: Connection, query: sa.Select) -> pd.DataFrame:
    return _orders_frame([_order_columns(conn.execute(query))])


def _columns_of(url: str, query: sa.Select) -> dict[str, np.ndarray]:
    """``_order_columns`` of ``query`` over a connection of its own (a second process)."""
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return _order_columns(conn.execute(query))
    finally:
        engine.dispose()


def _read_all_orders(conn: Connection, query: sa.Select) -> pd.DataFrame:
    """Every order. From a large SQLite file the upper half of the ids is read by a second
    process meanwhile (``clm_core.loyalty.ahead``): turning millions of rows into Python
    values is most of the read, and it is the same work on either half. The write lock this
    transaction took first keeps anyone from committing between the two halves' reads."""
    o = t.orders
    low, high = conn.execute(sa.select(sa.func.min(o.c.id), sa.func.max(o.c.id))).one()
    database = conn.engine.url.database
    if (conn.dialect.name != "sqlite" or not database or database == ":memory:"
            or low is None or high - low < SPLIT_READ_IDS or not ahead.usable()):
        return _read_orders(conn, query)
    middle = (low + high) // 2 + 1
    upper = query.where(o.c.id >= middle)
    theirs = ahead.Ahead(_columns_of, conn.engine.url.render_as_string(hide_password=False),
                         upper)
    try:
        mine = _order_columns(conn.execute(query.where(o.c.id < middle)))
        other = theirs.result()
    finally:
        theirs.close()
    return _orders_frame([mine, other if other is not None
                          else _order_columns(conn.execute(upper))])


def _only(query: sa.Select, column: sa.ColumnElement, ids: bool) -> sa.Select:
    """Restrict ``query`` to the customers in the temporary id table (when there is one)."""
    return query.where(column.in_(sa.select(_IDS.c.customer_id))) if ids else query


def changed_customers(conn: Connection, now: datetime) -> list[int] | None:
    """Customers whose points or tier can differ from what is stored: new or late orders since
    the last evaluation, pending orders, cancelled or refunded orders not yet reversed, points
    that expire, grace periods that end, tier windows that lose an order, and adjustments.
    None (everyone) on the first evaluation or when the clock goes back (a backfill)."""
    state = conn.execute(sa.select(t.loyalty_state)).first()
    if state is None or now < state.last_now:
        return None
    o, lg, st = t.orders, t.points_ledger, t.loyalty_status
    rev = lg.alias("rev")
    earned = lg.alias("earned")
    parts = [
        # new orders, and every order from the oldest one that was pending last time (a pending
        # order that completed since earns now; pending orders are recent, so this is short)
        sa.select(o.c.customer_id).where(
            o.c.id >= min(state.order_watermark + 1, state.pending_watermark),
            o.c.ordered_at <= now),
        sa.select(o.c.customer_id).where(o.c.ordered_at > state.last_now, o.c.ordered_at <= now),
        sa.select(o.c.customer_id).where(o.c.status.in_(WAITING), o.c.ordered_at <= now),
        sa.select(o.c.customer_id)
        .select_from(o.join(earned, sa.and_(earned.c.order_id == o.c.id,
                                            earned.c.kind == "earn")))
        .where(o.c.status.in_(REVERSED),
               ~sa.exists().where(rev.c.order_id == o.c.id, rev.c.kind == "reverse")),
        # one pass over the statuses (the grace and review times have no index of their own)
        sa.select(st.c.customer_id).where(sa.or_(st.c.next_expiry_at <= now,
                                                 st.c.tier_grace_until <= now,
                                                 st.c.tier_review_at <= now,
                                                 st.c.expiring_review_at <= now)),
        sa.select(lg.c.customer_id).where(lg.c.id > state.ledger_watermark),
    ]
    found: set[int] = set()
    for part in parts:
        found.update(conn.execute(part).scalars())
    return sorted(found)


def read_inputs(conn: Connection, prog: Programme, now: datetime,
                ids: list[int] | None = None) -> Inputs:
    """What the evaluation needs, for every customer or only for ``ids``."""
    only = ids is not None
    if only:
        _IDS.create(conn, checkfirst=True)
        conn.execute(sa.delete(_IDS))
        if ids:
            conn.execute(_IDS.insert(), [{"customer_id": i} for i in ids])
    o = t.orders
    # The currency only when the programme earns in some currencies: millions of strings
    # read for nothing cost time and memory.
    currency = o.c.currency if prog.earning.currencies else sa.null().label("currency")
    query = sa.select(o.c.id, o.c.customer_id, o.c.ordered_at, o.c.amount, currency,
                      o.c.status, o.c.points_redeemed)
    # Some customers: through their index, up to now. Everyone: the whole table in one pass,
    # the few orders after now dropped here; in SQL the time condition would make SQLite walk
    # the ordered_at index and fetch every row from a random place in the table (most of a
    # first evaluation's time on a store larger than the page cache).
    orders = _read_orders(conn, _only(query.where(o.c.ordered_at <= now), o.c.customer_id,
                                      True)) if only else _read_all_orders(conn, query)
    if not only:
        orders = orders[orders["ordered_at"] <= pd.Timestamp(now)].reset_index(drop=True)
    if any(b.sku_prefix for b in prog.bonuses):
        i = t.order_items
        skus = _read(conn, _only(sa.select(i.c.order_id, i.c.sku)
                                  .select_from(i.join(o, o.c.id == i.c.order_id)),
                                  o.c.customer_id, only))
    else:
        skus = pd.DataFrame({"order_id": pd.Series(dtype="int64"), "sku": pd.Series(dtype=object)})
    customers = _birthday_months(conn, only) if any(b.birthday_month for b in prog.bonuses) else \
        pd.DataFrame({"customer_id": pd.Series(dtype="int64"),
                      "birthday_month": pd.Series(dtype=float)})
    lg = t.points_ledger
    ledger = _read(conn, _only(sa.select(*[lg.c[c] for c in LEDGER_COLUMNS]),
                                lg.c.customer_id, only))
    if ledger.empty:
        ledger = empty_ledger()
    for col in ("occurred_at", "expires_at"):
        ledger[col] = pd.to_datetime(ledger[col])
    ledger["order_id"] = ledger["order_id"].astype(float)
    ledger["points"] = ledger["points"].astype("int64")
    ledger["kind"] = ledger["kind"].astype(KIND)
    st = t.loyalty_status
    status = _read(conn, _only(sa.select(*[st.c[c] for c in STATUS_COLUMNS]),
                                st.c.customer_id, only))
    if only:
        _IDS.drop(conn)
    return Inputs(orders, skus, customers, ledger, status)


def save_state(conn: Connection, now: datetime) -> None:
    """Remember how far this evaluation got (ids only grow, so a watermark is exact)."""
    o, lg, state = t.orders, t.points_ledger, t.loyalty_state
    order_wm = conn.execute(sa.select(sa.func.coalesce(sa.func.max(o.c.id), 0))
                            .where(o.c.ordered_at <= now)).scalar()
    pending_wm = conn.execute(sa.select(sa.func.min(o.c.id))
                              .where(o.c.status.in_(WAITING))).scalar()
    ledger_wm = conn.execute(sa.select(sa.func.coalesce(sa.func.max(lg.c.id), 0))).scalar()
    write_frame(conn, state, pd.DataFrame([{
        "id": 1, "order_watermark": order_wm, "last_now": now, "ledger_watermark": ledger_wm,
        "pending_watermark": pending_wm if pending_wm is not None else int(order_wm or 0) + 1}]),
        keys=["id"], update=["order_watermark", "pending_watermark", "ledger_watermark",
                             "last_now"])


def _key_order(keys: pd.Series) -> list[int] | None:
    """Positions of ``keys`` in the order of the unique key index (byte order of their UTF-8,
    which is Python's order of str), so that millions of rows extend the index at its end
    instead of all over a tree larger than the page cache (several times faster); None when
    they are in that order already, as the evaluation emits them (checked pairwise, in one
    numpy pass: no permutation of millions of positions is built for nothing)."""
    values = keys.to_numpy(dtype=object)
    if len(values) < 2 or bool((values[1:] >= values[:-1]).all()):
        return None
    return sorted(range(len(values)), key=values.tolist().__getitem__)


def _ledger_rows(rows: pd.DataFrame, recorded: datetime, run_id: str | None,
                 bulk: bool) -> pd.DataFrame:
    """New ledger rows as written: nullable order ids, the recording time and run; in a bulk
    write in key order."""
    out = rows.copy(deep=False)
    out["order_id"] = out["order_id"].astype("Int64")
    out["recorded_at"], out["run_id"] = recorded, run_id
    if bulk:
        order = _key_order(out["key"])
        if order is not None:
            out = out.iloc[order]
    return out


def write_evaluation(conn: Connection, earned: pd.DataFrame,
                     rest: Evaluation | Callable[[], Evaluation],
                     run_id: str | None) -> Evaluation:
    """Write an evaluation: its earning rows, then the rest (``rest``: computed, or a function
    that waits for it, so that it can still be computing while the earning rows are written;
    their keys sort before the rest's). Returns the rest."""
    recorded = utcnow()
    done: list[Evaluation] = [rest] if isinstance(rest, Evaluation) else []
    # A first evaluation writes the whole history: in bulk, the earning rows and the later
    # ones under one lock and one index rebuild (the rest counted when it is known already).
    bulk = len(earned) + (len(done[0].rows) if done else 0) > BULK_ROWS

    def later() -> Iterator[pd.DataFrame]:
        if not done:
            assert callable(rest)
            done.append(rest())
        # In key order, the rows come kind by kind (and bonus rule by rule): each run is one
        # statement with its kind, reason and the like as literals.
        yield _ledger_rows(done[0].rows, recorded, run_id, bulk)

    write_frame(conn, t.points_ledger, _ledger_rows(earned, recorded, run_id, bulk),
                keys=["key"], bulk=bulk, runs_by=["kind", "reason"], then=later())
    if not done:  # nothing was written, so the rest was not asked for
        list(later())
    ev = done[0]
    if not ev.status.empty:
        write_frame(conn, t.loyalty_status, ev.status, keys=["customer_id"],
                    update=[c for c in STATUS_COLUMNS if c != "customer_id"],
                    bulk=len(ev.status) > BULK_ROWS)
    if not ev.transitions.empty:
        tr = ev.transitions.copy(deep=False)
        tr["recorded_at"], tr["run_id"] = recorded, run_id
        write_frame(conn, t.tier_transitions, tr, bulk=len(tr) > BULK_ROWS)
    if not ev.rewards.empty:
        # The event a reward journey enters on; its id is the ledger key, so it exists once.
        events = pd.DataFrame({
            "external_id": "loyalty:" + ev.rewards["key"],
            "customer_id": ev.rewards["customer_id"].astype("int64"),
            "event_type": REWARD_EVENT, "occurred_at": ev.rewards["occurred_at"],
            "properties": [{"reward": r, "ledger_key": k}
                           for r, k in zip(ev.rewards["reward"], ev.rewards["key"])]})
        write_frame(conn, t.events, events, keys=["external_id"])
    return ev


def _tally(frames: list[pd.DataFrame]) -> tuple[dict[str, int], dict[str, int]]:
    """Rows and points by kind over ``frames`` of ledger rows."""
    rows: dict[str, int] = {}
    points: dict[str, int] = {}
    for frame in frames:
        if frame.empty:
            continue
        by_kind = frame.groupby("kind", observed=True)
        for kind, n in by_kind.size().items():
            rows[str(kind)] = rows.get(str(kind), 0) + int(n)
        for kind, p in by_kind["points"].sum().items():
            points[str(kind)] = points.get(str(kind), 0) + int(p)
    return rows, points


def _cpu_seconds() -> float:
    """CPU seconds of this process and of the second processes it has waited for."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def run_loyalty(engine: Engine, prog: Programme, now: datetime, run_id: str | None = None,
                full: bool = False) -> Summary:
    """One evaluation as of ``now`` in one transaction: only the customers whose points or tier
    can have changed since the last one (``full``: everyone; the results are the same)."""
    # Every customer and order a ledger row names was read in this transaction under the
    # write lock: SQLite need not look each one up again (half the time of a bulk write).
    cpu: dict[str, float] = {}
    clock = [_cpu_seconds()]

    def step(name: str) -> None:
        clock.append(_cpu_seconds())
        cpu[name] = clock[-1] - clock[-2]

    at = pd.Timestamp(now)
    with engine.connect() as conn, references_trusted(conn), conn.begin():
        if conn.dialect.name == "postgresql":  # one evaluation at a time: watermarks are shared
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('clm-loyalty'))"))
        take_write_lock(conn)  # it reads, then writes: on SQLite hold the lock from the start
        ids = None if full else changed_customers(conn, now)
        inp = read_inputs(conn, prog, now, ids)
        step("read")
        earned = earnings(prog, inp, at)
        # The rest of the evaluation, in a second process while the earning rows are written
        # when they are many (a first evaluation), else here and now.
        later = ahead.Ahead(settle, prog, inp, at, earned) \
            if len(earned) >= ahead.MIN_ROWS and ahead.usable() else None
        rest: Evaluation | Callable[[], Evaluation] = settle(prog, inp, at, earned) \
            if later is None else (lambda: later.result() or settle(prog, inp, at, earned))
        step("compute")
        try:
            ev = write_evaluation(conn, earned, rest, run_id)
        finally:
            if later is not None:
                later.close()
        save_state(conn, now)
        st = t.loyalty_status
        counts: dict[str, int] = dict(conn.execute(sa.select(st.c.tier, sa.func.count())
                                   .group_by(st.c.tier)).all())
        step("write")
    step("commit")
    if later is not None:  # it ended during the write, but its work was computing
        cpu["compute"] += later.cpu
        cpu["write"] -= later.cpu
    rows, points = _tally([earned, ev.rows])
    order = [n for n in prog.tier_names() if n in counts]
    return Summary(now, sum(counts.values()), len(ev.status), rows, points,
                   len(ev.transitions), len(ev.rewards), {n: int(counts[n]) for n in order},
                   cpu)


def adjust(engine: Engine, customer_ref: str, points: float, reason: str, now: datetime,
           adjustment_id: str | None = None) -> dict[str, object]:
    """An operator's adjustment: one ``adjust`` row with the reason. ``adjustment_id`` makes a
    repeated command (a retry after a timeout) a no-op; by default it is derived from the
    customer, points, reason and time, so the same command at the same ``now`` adds once."""
    if not reason.strip():
        raise ConfigError("an adjustment needs a reason (--reason)")
    try:
        pts = whole_points(points)
    except ValueError as exc:
        raise InputError(f"points {points!r}: {exc}") from None
    if pts == 0:
        raise InputError("an adjustment of 0 points changes nothing")
    c = t.customers
    with engine.begin() as conn:
        cid = conn.execute(sa.select(c.c.id).where(c.c.external_id == customer_ref)).scalar()
        if cid is None and customer_ref.isdigit():
            cid = conn.execute(sa.select(c.c.id).where(c.c.id == int(customer_ref))).scalar()
        if cid is None:
            raise InputError(f"no customer {customer_ref!r} (give the external id or the id)")
        digest = hashlib.sha256(reason.encode()).hexdigest()[:12]
        ident = adjustment_id or f"{cid}:{pts}:{now:%Y%m%dT%H%M%S}:{digest}"
        key = f"adjust:{ident}"[:128]
        row = pd.DataFrame([{"key": key, "customer_id": cid, "kind": "adjust", "points": pts,
                             "order_id": None, "occurred_at": now, "expires_at": None,
                             "reason": reason[:200], "recorded_at": utcnow(), "run_id": None}])
        added = write_frame(conn, t.points_ledger, row, keys=["key"])
        lg = t.points_ledger
        balance = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(lg.c.points), 0))
                               .where(lg.c.customer_id == cid)).scalar()
        conn.execute(sa.update(t.loyalty_status).where(t.loyalty_status.c.customer_id == cid)
                     .values(points_balance=balance))
    return {"customer_id": cid, "points": pts, "added": bool(added), "balance": int(balance or 0),
            "key": key}


def ledger_of(engine: Engine, customer_id: int) -> pd.DataFrame:
    lg = t.points_ledger
    with engine.connect() as conn:
        return read_frame(conn, sa.select(lg.c.key, lg.c.kind, lg.c.points, lg.c.occurred_at,
                                      lg.c.expires_at, lg.c.reason)
                      .where(lg.c.customer_id == customer_id)
                      .order_by(lg.c.occurred_at, lg.c.id))
