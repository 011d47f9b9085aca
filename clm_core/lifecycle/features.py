"""Per-customer features as of a date: one SQL aggregation, never raw orders in Python.

Purchases are counted by calendar day (UTC), as in the CLV literature and lifetimes: several
orders on one day are one purchase. In the chosen time unit (``day`` or ``week`` = 7 days):

- ``frequency``: purchase days after the first (repeat purchases),
- ``recency``: time from the first to the last purchase day,
- ``T``: time from the first purchase day to the as-of day,
- ``monetary_value``: average spend of the repeat purchase days (0 without repeats).

Orders after the as-of date are ignored; orders on it count. Customers who signed up after the
as-of date and had not ordered by then are left out (they did not exist yet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db.pgread import copy_frame
from clm_core.lifecycle.aggregates import (
    DAY_SQL,
    MONEY_SQL,
    NOT_PURCHASES,  # noqa: F401  (the purchase rule's home for its readers)
    NOT_PURCHASES_SQL,
    covers,
)
from clm_core.lifecycle.history import DEFAULT_RHYTHM, Rhythm

UNIT_DAYS = {"day": 1.0, "week": 7.0}
FETCH_CHUNK = 200_000
SOURCES = ("auto", "orders", "aggregates")

# Everything but the first purchase day's spend comes from one pass over the orders index
# (customer_id, ordered_at); that spend is one index range lookup per repeat buyer. Date
# arithmetic happens in pandas, so the dialects differ only in how a day is written (and in
# SQLite's sums of money being rounded to the cent, see ``aggregates.MONEY_SQL``).
_DIALECT = {
    "sqlite": {"next_day": "date(a.first_order_at, '+1 day')"},
    "postgresql": {"next_day": "CAST(a.first_order_at AS DATE) + 1"},
}

_HISTORY = """WITH a AS (
    SELECT o.customer_id, COUNT(*) AS n_orders, COUNT(DISTINCT {day}) AS purchase_days,
           MIN(o.ordered_at) AS first_order_at, MAX(o.ordered_at) AS last_order_at,
           {total_spend} AS total_spend
    FROM orders o
    WHERE o.ordered_at < :end AND o.status NOT IN ({not_purchases}){order_range}
    GROUP BY o.customer_id
)
"""
_HISTORY_FIRST_DAY = """CASE WHEN a.purchase_days > 1 THEN (
           SELECT {first_day_spend} FROM orders o
           WHERE o.customer_id = a.customer_id AND o.ordered_at >= a.first_order_at
             AND o.ordered_at < {next_day} AND o.status NOT IN ({not_purchases})
       ) ELSE a.total_spend END"""

# ``source``: the CTE above over the orders, or the maintained ``customer_purchase_aggregates``
# (one row per customer, the same values when no purchase is after the as-of day).
_SQL = """{history}SELECT c.id AS customer_id, c.signed_up_at,{customer_columns}
       a.n_orders, a.purchase_days, a.first_order_at, a.last_order_at, a.total_spend,
       {first_day_spend} AS first_day_spend,
       s.stage AS previous_stage, s.stage_since AS previous_stage_since{in_stage}{stored}
FROM customers c
LEFT JOIN {source} a ON a.customer_id = c.id
LEFT JOIN customer_scores s ON s.customer_id = c.id{rerun}
WHERE (a.customer_id IS NOT NULL OR c.signed_up_at IS NULL OR c.signed_up_at < :end){customer_range}
ORDER BY c.id
"""


# The first purchase after the stored stage began (e.g. a churned customer's comeback). On a
# rerun of an as-of day that already has transitions, "the stored stage" is the one before
# that day (as ``transitions.rules_view`` restores it): when the latest earlier transition's
# stage began, or nothing when there is none. The customer's first and last purchase (``a``,
# over the same purchases) answer it for nearly everyone: none after the stage began when the
# last is not after it, the first when even that is after it. Only a customer who bought both
# before and after costs an index range lookup (a million lookups took most of the features'
# time); still, it is computed only when the rules use it.
_SINCE = "CASE WHEN r.customer_id IS NULL THEN s.stage_since ELSE r.since END"
_IN_STAGE = """,
       CASE WHEN a.last_order_at IS NULL OR {since} IS NULL OR a.last_order_at <= {since}
                 THEN NULL
            WHEN a.first_order_at > {since} THEN a.first_order_at
            ELSE (SELECT MIN(o.ordered_at) FROM orders o
                  WHERE o.customer_id = c.id AND o.ordered_at < :end
                    AND o.status NOT IN ({not_purchases}) AND o.ordered_at > {since})
       END AS first_order_in_stage_at"""
_RERUN = """
LEFT JOIN (
    SELECT DISTINCT st.customer_id, (SELECT b.stage_since FROM stage_transitions b
                                     WHERE b.customer_id = st.customer_id AND b.as_of < st.as_of
                                     ORDER BY b.as_of DESC, b.id DESC LIMIT 1) AS since
    FROM stage_transitions st WHERE st.as_of = :day
) r ON r.customer_id = c.id"""
IN_STAGE_FIELDS = {"first_order_in_stage_at", "days_since_first_order_in_stage"}

# What the stored score row was computed from, for a scoring that rewrites only the columns
# that move with the day of most rows (``pipeline.score``): whether its purchase columns still
# equal the customer's purchases (and so do the columns made from them alone), and the stored
# values that other inputs decide too (the models' time unit, the first day's spend, the spend
# model, the store's RFM ranks). Compared in the database, the purchase columns cost one number
# a row to read.
_STORED = """,
       CASE WHEN s.customer_id IS NOT NULL AND s.n_orders = COALESCE(a.n_orders, 0)
                 AND s.purchase_days = COALESCE(a.purchase_days, 0)
                 AND s.total_spend = COALESCE(a.total_spend, 0)
                 AND {same_first} AND {same_last} THEN 1 ELSE 0 END AS stored_purchases,
       s.recency AS stored_recency, s.monetary_value AS stored_monetary_value,
       s.expected_aov AS stored_expected_aov,
       COALESCE(s.r_score, 0) * 100 + COALESCE(s.f_score, 0) * 10 + COALESCE(s.m_score, 0)
           AS stored_rfm"""
STORED_COLUMNS = ("stored_purchases", "stored_recency", "stored_monetary_value",
                  "stored_expected_aov", "stored_rfm")
_SAME = {"sqlite": "{a} IS {b}", "postgresql": "{a} IS NOT DISTINCT FROM {b}"}

# Customer columns stage rules may use; fetched only when the rules use them.
CUSTOMER_COLUMNS = {"country": "string", "locale": "string", "timezone": "string",
                    "consent_email": "bool", "consent_sms": "bool"}


def _sql(dialect: str, customer_columns: Iterable[str] = (), ranged: bool = False,
         aggregated: bool = False, stored: bool = False) -> str:
    """The features' query; ``aggregated``: from ``customer_purchase_aggregates``;
    ``stored``: with the ``STORED_COLUMNS``."""
    db = "postgresql" if dialect == "postgresql" else "sqlite"
    d = _DIALECT[db]
    money = MONEY_SQL[db]
    wanted = set(customer_columns)
    extra = "".join(f" c.{name}," for name in CUSTOMER_COLUMNS if name in wanted)
    in_stage = bool(wanted & IN_STAGE_FIELDS)
    history = "" if aggregated else _HISTORY.format(
        day=DAY_SQL[db].format(col="o.ordered_at"), not_purchases=NOT_PURCHASES_SQL,
        total_spend=money.format(expr="SUM(o.amount)"),
        order_range=" AND o.customer_id >= :lo AND o.customer_id < :hi" if ranged else "")
    first_day = "a.first_day_spend" if aggregated else _HISTORY_FIRST_DAY.format(
        **d, not_purchases=NOT_PURCHASES_SQL, first_day_spend=money.format(expr="SUM(o.amount)"))
    return _SQL.format(
        history=history,
        source="customer_purchase_aggregates" if aggregated else "a",
        first_day_spend=first_day,
        customer_columns=extra,
        in_stage=_IN_STAGE.format(not_purchases=NOT_PURCHASES_SQL, since=_SINCE)
        if in_stage else "",
        rerun=_RERUN if in_stage else "",
        stored=_STORED.format(**{f"same_{k}": _SAME[db].format(a=f"s.{k}_order_at",
                                                                 b=f"a.{k}_order_at")
                                 for k in ("first", "last")}) if stored else "",
        customer_range=" AND c.id >= :lo AND c.id < :hi" if ranged else "",
    )


def day_end(as_of: date) -> datetime:
    """The first instant after the as-of day: orders before it count."""
    return datetime.combine(as_of, datetime.min.time()) + timedelta(days=1)


def _params(as_of: date) -> dict[str, object]:
    return {"end": day_end(as_of), "day": as_of}


def _statement(sql: str) -> sa.TextClause:
    """The features' query (``_sql``) with its time parameters typed."""
    stmt = sa.text(sql).bindparams(sa.bindparam("end", type_=sa.DateTime()))
    if ":day" in sql:
        stmt = stmt.bindparams(sa.bindparam("day", type_=sa.Date()))
    return stmt


def _fetch(conn: Connection, sql: str, params: dict[str, object]) -> pd.DataFrame:
    stmt = _statement(sql)
    if ":day" not in sql:
        params = {k: v for k, v in params.items() if k != "day"}
    if conn.dialect.name == "postgresql":
        compiled = stmt.compile(dialect=conn.dialect)
        frame = copy_frame(conn, compiled.string, {k: params[k] for k in compiled.params},
                           order_by=["customer_id"])
        if frame is not None:
            return frame
    result = conn.execute(stmt, params)
    columns = list(result.keys())
    # Plain DBAPI tuples (a DataFrame from SQLAlchemy Row objects is many times slower), in
    # chunks so the Python rows never all exist at once.
    frames = []
    while rows := result.cursor.fetchmany(FETCH_CHUNK):
        frames.append(pd.DataFrame(rows, columns=columns))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _timestamps(s: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s):
        return s
    return pd.to_datetime(s, format="ISO8601")


def _days(delta: pd.Series) -> pd.Series:
    return (delta / pd.Timedelta(days=1)).astype("float64")


@dataclass(frozen=True)
class Features:
    """Features of every customer as of a date, plus store-level metrics."""

    frame: pd.DataFrame
    as_of: date
    time_unit: str
    typical_gap_days: float


def customer_features(conn: Connection, as_of: date, time_unit: str = "day",
                      customer_columns: Iterable[str] = (), ids: tuple[int, int] | None = None,
                      typical_gap: float | None = None,
                      rhythm: Rhythm = DEFAULT_RHYTHM, source: str = "auto",
                      stored: bool = False) -> Features:
    """One row per customer (prospects included) with order metrics and lifetimes' summary,
    plus the named ``CUSTOMER_COLUMNS`` (and with ``stored`` the ``STORED_COLUMNS``).

    ``ids``: only customers with ``lo <= id < hi`` (a chunk); ``typical_gap``: the store's
    rhythm computed over every customer, which one chunk cannot compute for itself;
    ``rhythm``: how that is measured (with its default for a store with few repeat buyers).
    ``source``: ``auto`` reads the maintained purchase aggregates when they cover the as-of
    day (``aggregates.covers``) and aggregates the orders otherwise; ``orders`` always
    aggregates the orders; ``aggregates`` insists on the aggregates (ValueError when they do
    not cover the day). Both give the same features.
    """
    if time_unit not in UNIT_DAYS:
        raise ValueError(f"time unit must be one of {', '.join(UNIT_DAYS)}, got {time_unit!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    params = _params(as_of) | ({"lo": ids[0], "hi": ids[1]} if ids else {})
    aggregated = source != "orders" and covers(conn, day_end(as_of))
    if source == "aggregates" and not aggregated:
        raise ValueError(f"the purchase aggregates do not cover {as_of}: orders were written "
                         "after it, or without maintaining them (clm db rebuild-aggregates)")
    sql = _sql(conn.dialect.name, customer_columns, ranged=ids is not None, aggregated=aggregated,
               stored=stored)
    raw = _fetch(conn, sql, params)
    return features_from_aggregates(raw, as_of, time_unit, typical_gap, rhythm)


def features_from_aggregates(raw: pd.DataFrame, as_of: date, time_unit: str = "day",
                             typical_gap: float | None = None,
                             rhythm: Rhythm = DEFAULT_RHYTHM) -> Features:
    """The features of customers from their purchase aggregates as of ``as_of`` (pure).

    ``raw`` has one row per customer: customer_id, signed_up_at, n_orders, purchase_days,
    first_order_at, last_order_at, total_spend, first_day_spend (NULL aggregates for a
    prospect), previous_stage, previous_stage_since, and optionally the ``CUSTOMER_COLUMNS``
    and first_order_in_stage_at. The SQL above produces it from the orders; a replay that keeps
    the aggregates in memory (``clm_core.backtest``) passes its own, so both compute every
    feature with this one function.
    """
    if time_unit not in UNIT_DAYS:
        raise ValueError(f"time unit must be one of {', '.join(UNIT_DAYS)}, got {time_unit!r}")
    unit = UNIT_DAYS[time_unit]
    f = pd.DataFrame({"customer_id": raw["customer_id"].astype("int64")})
    n_orders = pd.to_numeric(raw["n_orders"]).astype("float64")
    days = pd.to_numeric(raw["purchase_days"]).astype("float64")
    total = pd.to_numeric(raw["total_spend"]).astype("float64")
    first_spend = pd.to_numeric(raw["first_day_spend"]).astype("float64")
    f["n_orders"] = n_orders.fillna(0).astype("int64")
    f["purchase_days"] = days.fillna(0).astype("int64")
    f["first_order_at"] = _timestamps(raw["first_order_at"])
    f["last_order_at"] = _timestamps(raw["last_order_at"])
    f["total_spend"] = total.fillna(0.0)
    f["avg_order_value"] = total / n_orders
    today = pd.Timestamp(as_of)
    first_day, last_day = f["first_order_at"].dt.normalize(), f["last_order_at"].dt.normalize()
    span = _days(last_day - first_day)
    age = _days(today - first_day)
    f["days_since_first_order"] = age
    f["days_since_last_order"] = _days(today - last_day)
    repeats = days - 1
    f["frequency"] = repeats
    f["recency"] = span / unit
    f["T"] = age / unit
    f["monetary_value"] = np.where(
        repeats > 0, (total - first_spend) / repeats.where(repeats > 0), 0.0
    )
    f.loc[days.isna(), "monetary_value"] = np.nan
    f["repeat_avg_value"] = f["monetary_value"].where(repeats > 0)
    f["signed_up_at"] = _timestamps(raw["signed_up_at"])
    f["days_since_signup"] = _days(today - f["signed_up_at"])
    for col, kind in CUSTOMER_COLUMNS.items():
        if col in raw:
            f[col] = (
                raw[col].fillna(False).astype(bool) if kind == "bool" else raw[col].astype(object)
            )
    f["previous_stage"] = raw["previous_stage"].astype(object)
    f["previous_stage_since"] = _timestamps(raw["previous_stage_since"])
    f["days_in_stage"] = _days(today - f["previous_stage_since"])
    if "first_order_in_stage_at" in raw:
        f["first_order_in_stage_at"] = _timestamps(raw["first_order_in_stage_at"])
        f["days_since_first_order_in_stage"] = _days(
            today - f["first_order_in_stage_at"].dt.normalize()
        )
    for col in STORED_COLUMNS:
        if col in raw:
            f[col] = pd.to_numeric(raw[col]).astype("float64")
    gap = rhythm.of(span, repeats) if typical_gap is None else typical_gap
    f["typical_gap_days"] = gap
    return Features(f, as_of, time_unit, gap)


def holdout_purchases(conn: Connection, calibration_end: date, holdout_end: date) -> pd.Series:
    """Purchase days per customer after the calibration end, up to the holdout end."""
    day = DAY_SQL["postgresql" if conn.dialect.name == "postgresql" else "sqlite"].format(
        col="o.ordered_at")
    sql = (f"SELECT o.customer_id, COUNT(DISTINCT {day}) AS n FROM orders o "
           f"WHERE o.ordered_at >= :start AND o.ordered_at < :end "
           f"AND o.status NOT IN ({NOT_PURCHASES_SQL}) "
           f"GROUP BY o.customer_id")
    stmt = sa.text(sql).bindparams(sa.bindparam("start", type_=sa.DateTime()),
                                   sa.bindparam("end", type_=sa.DateTime()))
    rows = conn.execute(stmt, {"start": day_end(calibration_end), "end": day_end(holdout_end)})
    data = rows.fetchall()
    return pd.Series([r[1] for r in data], index=[r[0] for r in data], dtype="float64")
