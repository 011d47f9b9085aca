"""``Recommender``: the store's counts read with a few SQL queries, scored by ``model``.

Dispatch builds one per run and asks it for the customers of each batch
(``for_customers(ids)`` -> up to ``k`` ``{"sku", "name"}`` per customer). Only purchases count
(an order whose status is not one of ``lifecycle.features.NOT_PURCHASES``), only orders that
have items, and only orders placed before ``as_of`` when one is given.

The counts are aggregated in the database (per SKU, per consecutive pair of a customer's
orders), so memory stays at the ``catalogue_limit`` x ``catalogue_limit`` matrix however many
orders the store has; the in-memory twin ``model.counts_from_lines`` gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.db import tables as t
from clm_core.lifecycle.features import NOT_PURCHASES
from clm_core.recommend.model import DECAY, ItemModel, recency_weights

CATALOGUE_LIMIT = 2000


def purchases(as_of: datetime | None = None, with_items: bool = True) -> sa.ColumnElement[bool]:
    """The orders that count: purchases with items, placed before ``as_of`` when given
    (``with_items=False`` where a join with ``order_items`` already ensures items)."""
    o, items = t.orders, t.order_items.alias("has_items")
    cond = sa.or_(o.c.status.is_(None), o.c.status.not_in(NOT_PURCHASES))
    if with_items:
        cond = sa.and_(cond, sa.exists().where(items.c.order_id == o.c.id))
    return cond if as_of is None else sa.and_(cond, o.c.ordered_at < as_of)


def read_lines(conn: Connection, as_of: datetime | None = None,
               customers: Sequence[int] | None = None) -> pd.DataFrame:
    """Order lines of purchases: customer_id, order_id, ordered_at, sku, product_name."""
    o, oi = t.orders, t.order_items
    query = (sa.select(o.c.customer_id, oi.c.order_id, o.c.ordered_at, oi.c.sku,
                       oi.c.product_name)
             .select_from(oi.join(o, o.c.id == oi.c.order_id))
             .where(purchases(as_of, with_items=False)))
    if customers is not None:
        query = query.where(o.c.customer_id.in_(list(customers)))
    lines = pd.read_sql(query, conn)
    lines["sku"] = lines["sku"].astype(str)
    return lines


def read_counts(conn: Connection, limit: int = CATALOGUE_LIMIT, as_of: datetime | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """``ItemModel.from_counts`` arguments aggregated in SQL."""
    o, oi = t.orders, t.order_items
    bought = purchases(as_of)
    popular = pd.read_sql(
        sa.select(oi.c.sku, sa.func.max(oi.c.product_name).label("name"),
                  sa.func.count(sa.distinct(oi.c.order_id)).label("n"))
        .select_from(oi.join(o, o.c.id == oi.c.order_id))
        .where(purchases(as_of, with_items=False)).group_by(oi.c.sku)
        .order_by(sa.text("n DESC"), oi.c.sku).limit(limit), conn)
    orders = conn.execute(sa.select(sa.func.count()).select_from(o).where(bought)).scalar() or 0
    empty = pd.DataFrame({"x": [], "y": [], "n": []})
    if popular.empty:
        return popular, empty, pd.DataFrame({"sku": [], "n": []}), int(orders)
    skus = popular["sku"].tolist()
    # Each purchase and the customer's next one (LEAD: the next by time, then id).
    nxt = (sa.select(o.c.id.label("id"),
                     sa.func.lead(o.c.id).over(partition_by=o.c.customer_id,
                                               order_by=(o.c.ordered_at, o.c.id)).label("next_id"))
           .where(bought).subquery("nxt"))
    a, b = oi.alias("a"), oi.alias("b")
    anchors = pd.read_sql(
        sa.select(a.c.sku, sa.func.count(sa.distinct(a.c.order_id)).label("n"))
        .select_from(a.join(nxt, nxt.c.id == a.c.order_id))
        .where(nxt.c.next_id.is_not(None), a.c.sku.in_(skus)).group_by(a.c.sku), conn)
    pairs = pd.read_sql(
        sa.select(a.c.sku.label("x"), b.c.sku.label("y"),
                  sa.func.count(sa.distinct(a.c.order_id)).label("n"))
        .select_from(a.join(nxt, nxt.c.id == a.c.order_id)
                     .join(b, b.c.order_id == nxt.c.next_id))
        .where(a.c.sku.in_(skus), b.c.sku.in_(skus)).group_by(a.c.sku, b.c.sku), conn)
    return popular, pairs, anchors, int(orders)


class Recommender:
    """What each customer is likely to buy next; not what they already own unless the store's
    orders show it is rebought (``repeats=False``: never); the most popular products for
    customers without history (see ``clm_core.recommend.model``)."""

    def __init__(self, engine: Engine, k: int = 3, catalogue_limit: int = CATALOGUE_LIMIT,
                 as_of: datetime | None = None, shrink: float | None = None, decay: float = DECAY,
                 repeats: bool = True):
        self.engine, self.k, self.as_of, self.decay = engine, k, as_of, decay
        self.repeats = repeats
        with engine.connect() as conn:
            self.model = ItemModel.from_counts(*read_counts(conn, catalogue_limit, as_of),
                                               shrink=shrink)

    @property
    def skus(self) -> Any:
        return self.model.skus

    def for_customers(self, customer_ids: Sequence[int]) -> dict[int, list[dict[str, str]]]:
        ids = list(dict.fromkeys(customer_ids))
        if not len(self.model.skus) or not ids:
            return {c: [] for c in ids}
        with self.engine.connect() as conn:
            lines = read_lines(conn, self.as_of, ids)
        top = self.model.top(ids, recency_weights(lines, self.decay), self.k,
                             owned=lines[["customer_id", "sku"]], repeats=self.repeats)
        return {cid: [{"sku": str(self.model.skus[j]), "name": str(self.model.names[j])}
                      for j in top[i] if j >= 0]
                for i, cid in enumerate(ids)}
