"""Per-customer purchase aggregates, kept in step with the orders in the writers' transaction.

``customer_purchase_aggregates`` holds, for every customer with a purchase, what the features
aggregate from the order history: orders, distinct purchase days (UTC), first and last purchase
time, spend and the first purchase day's spend. Every writer of orders (the CSV importer, the
synthetic and CDNOW loaders) wraps its write in ``following_orders``: the aggregates of the
customers it touched (including the previous owner of an order moved to another customer) are
recomputed from their orders, in the same transaction. A cancellation or refund is a re-import
of the order with its new status, so it is followed the same way.

``purchase_aggregates_state`` records the orders' count and highest id at that moment. When a
write bypassed the maintenance (a script inserting orders, a deleted order), they no longer
match: ``covers`` then says no and the features aggregate the orders as before, and the next
maintained write (or ``clm db rebuild-aggregates``) rebuilds everything.

The aggregates hold every imported order, so they are the features' input only for an as-of
day on or after the last purchase (``covers``); an earlier day reads the orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t

# Orders in these states are not purchases.
NOT_PURCHASES = ("cancelled", "canceled", "refunded", "failed", "pending")
NOT_PURCHASES_SQL = ", ".join(f"'{s}'" for s in NOT_PURCHASES)

# How each database writes an order's UTC calendar day, and a sum of money. SQLite keeps
# NUMERIC(12, 2) as binary floats, whose sum depends on the order of addition; rounded to the
# cent it is the exact sum, so aggregating per day then per customer equals one pass.
DAY_SQL = {"sqlite": "substr({col}, 1, 10)", "postgresql": "CAST({col} AS DATE)"}
MONEY_SQL = {"sqlite": "ROUND({expr}, 2)", "postgresql": "{expr}"}

# A write bringing at least this many orders, and at least this share of those stored,
# rebuilds every customer's aggregates in one pass instead of following customer by customer.
REBUILD_MIN_ORDERS = 100_000
REBUILD_MIN_SHARE = 0.1
_KEY_BATCH = 500  # external ids per IN (...) query
_TOUCHED = "_clm_touched_customers"


def dialect_sql(conn: Connection, which: dict[str, str], **kw: str) -> str:
    """The SQL snippet of ``which`` for ``conn``'s database."""
    return which["postgresql" if conn.dialect.name == "postgresql" else "sqlite"].format(**kw)


_AGGREGATE = """
WITH d AS (
    SELECT o.customer_id, {day} AS day, COUNT(*) AS n, SUM(o.amount) AS spend,
           MIN(o.ordered_at) AS first_at, MAX(o.ordered_at) AS last_at
    FROM orders o
    WHERE o.status NOT IN ({not_purchases}){scope}
    GROUP BY o.customer_id, {day}
), a AS (
    SELECT customer_id, SUM(n) AS n_orders, COUNT(*) AS purchase_days,
           MIN(first_at) AS first_order_at, MAX(last_at) AS last_order_at,
           SUM(spend) AS total_spend, MIN(day) AS first_day
    FROM d GROUP BY customer_id
)
INSERT INTO customer_purchase_aggregates (customer_id, n_orders, purchase_days, first_order_at,
                                          last_order_at, total_spend, first_day_spend)
SELECT a.customer_id, a.n_orders, a.purchase_days, a.first_order_at, a.last_order_at,
       {total}, {first}
FROM a JOIN d ON d.customer_id = a.customer_id AND d.day = a.first_day
ORDER BY a.customer_id
"""
# ORDER BY: the rows are stored in customer order, the order the nightly features read them
# in (a merge join with the customers by key). On PostgreSQL, whose table keeps rows where
# they were inserted, rows rebuilt in the grouping's hash order made that index scan fetch a
# heap page per row: at a million customers 1.1 s against 0.1 s, the features 1.1-1.3 s
# longer. Rows refreshed later go to the end, a day's customers at a time, until the next
# rebuild (``clm db rebuild-aggregates``). SQLite keeps the table in key order whatever the
# insert order.


def _aggregate_sql(conn: Connection, scope: str = "") -> str:
    return _AGGREGATE.format(day=dialect_sql(conn, DAY_SQL, col="o.ordered_at"),
                             not_purchases=NOT_PURCHASES_SQL, scope=scope,
                             total=dialect_sql(conn, MONEY_SQL, expr="a.total_spend"),
                             first=dialect_sql(conn, MONEY_SQL, expr="d.spend"))


def _orders_now(conn: Connection) -> tuple[int, int | None]:
    o = t.orders
    row = conn.execute(sa.select(sa.func.count(), sa.func.max(o.c.id))).one()
    return int(row[0]), (int(row[1]) if row[1] is not None else None)


def _mark(conn: Connection, orders: int | None = None) -> None:
    """Record that the aggregates follow the orders as they are now; ``orders``: their count,
    when the caller knows it (counting passes over every order: at fifty million, seconds
    each time; the highest id is one seek in the key's index)."""
    if orders is None:
        n, top = _orders_now(conn)
    else:
        n, top = orders, conn.scalar(sa.select(sa.func.max(t.orders.c.id)))
    s = t.purchase_aggregates_state
    conn.execute(s.delete())
    conn.execute(s.insert().values(id=1, orders=n, max_order_id=top))


def in_step(conn: Connection, orders_now: tuple[int, int | None] | None = None) -> bool:
    """Whether the aggregates follow every order stored (no write bypassed them since);
    ``orders_now``: the orders' count and highest id, when the caller has them."""
    s = t.purchase_aggregates_state
    state = conn.execute(sa.select(s.c.orders, s.c.max_order_id).where(s.c.id == 1)).first()
    return state is not None and (int(state[0]), state[1]) == (orders_now or _orders_now(conn))


def covers(conn: Connection, end: datetime) -> bool:
    """Whether the aggregates equal the features' aggregation of the purchases before ``end``:
    they follow every order, and none of them is on or after ``end``."""
    if not in_step(conn):
        return False
    a = t.customer_purchase_aggregates
    last = conn.execute(sa.select(sa.func.max(a.c.last_order_at))).scalar()
    return last is None or pd.Timestamp(last) < pd.Timestamp(end)


def rebuild(conn: Connection) -> int:
    """Recompute every customer's aggregates from the orders; the number of customers."""
    conn.execute(t.customer_purchase_aggregates.delete())
    conn.exec_driver_sql(_aggregate_sql(conn))
    _mark(conn)
    return int(conn.scalar(sa.select(sa.func.count())
                           .select_from(t.customer_purchase_aggregates)) or 0)


def refresh(conn: Connection, customer_ids: Iterable[int]) -> int:
    """Recompute the aggregates of ``customer_ids`` from their orders (one index range per
    customer); the number of customers recomputed."""
    ids = sorted({int(i) for i in customer_ids})
    if not ids:
        return 0
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {_TOUCHED} "
                             "(customer_id integer PRIMARY KEY) ON COMMIT DROP")
    else:
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {_TOUCHED} "
                             "(customer_id integer PRIMARY KEY)")
    conn.exec_driver_sql(f"DELETE FROM {_TOUCHED}")
    conn.execute(sa.text(f"INSERT INTO {_TOUCHED} (customer_id) VALUES (:id)"),
                 [{"id": i} for i in ids])
    touched = f"SELECT customer_id FROM {_TOUCHED}"
    conn.exec_driver_sql(
        f"DELETE FROM customer_purchase_aggregates WHERE customer_id IN ({touched})")
    conn.exec_driver_sql(_aggregate_sql(conn, f" AND o.customer_id IN ({touched})"))
    return len(ids)


def _owners(conn: Connection, external_ids: list[str]) -> set[int]:
    """The customers the stored orders with these external ids belong to now."""
    o = t.orders
    owners: set[int] = set()
    for i in range(0, len(external_ids), _KEY_BATCH):
        batch = external_ids[i:i + _KEY_BATCH]
        owners.update(r[0] for r in conn.execute(
            sa.select(o.c.customer_id).distinct().where(o.c.external_id.in_(batch))))
    return owners


@contextmanager
def following_orders(conn: Connection, orders: pd.DataFrame,
                     new: int | None = None) -> Iterator[None]:
    """Keep the aggregates in step with the write of ``orders`` (columns external_id and
    customer_id) that the ``with`` block makes on ``conn``, in its transaction.

    The customers touched are those of the written rows and the current owners of their
    external ids (an order re-imported under another customer leaves its old one). A large
    write, or aggregates that no longer follow the orders, rebuilds them all instead.

    ``new``: how many of ``orders`` the write inserts (their external ids not stored yet), when
    the caller knows: the count after it is then the count before plus those, where a second
    count would pass over every order again. Should another writer slip in between, the count
    recorded is off, the aggregates no longer count as in step, and the next maintained write
    rebuilds them: a slower night, never a wrong one.
    """
    now = _orders_now(conn)
    n_stored = now[0]
    whole = (not in_step(conn, now)
             or (len(orders) >= REBUILD_MIN_ORDERS and len(orders) >= REBUILD_MIN_SHARE * n_stored))
    before: set[int] = set()
    if not whole and n_stored:
        before = _owners(conn, orders["external_id"].dropna().astype(str).unique().tolist())
    yield
    if whole:
        rebuild(conn)
        return
    refresh(conn, before | set(orders["customer_id"].dropna().astype("int64").tolist()))
    _mark(conn, None if new is None else n_stored + new)
