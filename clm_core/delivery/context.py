"""Render contexts for a batch of messages, built with a few SQL queries per batch.

The contract (what templates may use) is the one in ``clm_core.templating``: ``customer``,
``scores``, ``coupon``, ``recommendations``, ``links``, ``store``, ``journey``.

Recommendations: products often bought together with what the customer bought (item-to-item
co-occurrence over order lines), minus what they own, topped up with the most popular
products. The co-occurrence matrix covers the most popular ``catalogue_limit`` products and
is computed once per dispatcher; per batch it is one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.consent.ledger import withdrawn_topics
from clm_core.consent.tokens import Keyring
from clm_core.db import tables as t
from clm_core.delivery.unsubscribe import subscription_links

SCORE_FIELDS = ("stage", "rfm_segment", "p_alive", "clv_12m", "expected_purchases_90d", "n_orders",
                "total_spend", "avg_order_value", "last_order_at", "days_since_last_order")
# The member's points and tier (None for customers who are not members).
LOYALTY_FIELDS = ("points_balance", "points_expiring_30d", "next_expiry_at", "tier", "tier_since",
                  "points_to_next_tier")
CUSTOMER_FIELDS = ("external_id", "name", "email", "phone", "locale", "timezone", "attributes")


def _clean(value: Any) -> Any:
    """NaN/NaT become None and numpy scalars plain Python, so templates see ordinary values."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


class Recommender:
    """Top co-purchased products per customer, popular products as the fallback."""

    def __init__(self, engine: Engine, k: int = 3, catalogue_limit: int = 2000):
        self.engine, self.k = engine, k
        oi, o = t.order_items, t.orders
        with engine.connect() as conn:
            popular = pd.read_sql(
                sa.select(
                    oi.c.sku,
                    sa.func.max(oi.c.product_name).label("name"),
                    sa.func.count(sa.distinct(oi.c.order_id)).label("n"),
                )
                .group_by(oi.c.sku)
                .order_by(sa.text("n DESC"), oi.c.sku)
                .limit(catalogue_limit),
                conn,
            )
            a, b = oi.alias("a"), oi.alias("b")
            pairs = (
                pd.read_sql(
                    sa.select(a.c.sku.label("x"), b.c.sku.label("y"), sa.func.count().label("n"))
                    .select_from(
                        a.join(b, sa.and_(a.c.order_id == b.c.order_id, a.c.sku != b.c.sku))
                    )
                    .where(
                        a.c.sku.in_(popular["sku"].tolist()), b.c.sku.in_(popular["sku"].tolist())
                    )
                    .group_by(a.c.sku, b.c.sku),
                    conn,
                )
                if len(popular)
                else pd.DataFrame(columns=["x", "y", "n"])
            )
        self.skus = popular["sku"].to_numpy()
        self.names = popular["name"].fillna(popular["sku"]).to_numpy()
        self.index = pd.Index(self.skus)
        n = len(self.skus)
        self.co = np.zeros((n, n), dtype=np.float32)
        if len(pairs):
            self.co[self.index.get_indexer(pairs["x"]), self.index.get_indexer(pairs["y"])] = pairs[
                "n"
            ]
        # Popularity breaks ties and fills in for customers with no history.
        self.popularity = popular["n"].to_numpy(dtype=np.float32) / max(
            1.0, float(popular["n"].max() or 1)
        )
        self._orders = o

    def for_customers(self, customer_ids: Sequence[int]) -> dict[int, list[dict[str, str]]]:
        ids = list(dict.fromkeys(customer_ids))
        if not len(self.skus) or not ids:
            return {c: [] for c in ids}
        oi, o = t.order_items, self._orders
        with self.engine.connect() as conn:
            owned = pd.read_sql(sa.select(o.c.customer_id, oi.c.sku).distinct()
                                .select_from(oi.join(o, o.c.id == oi.c.order_id))
                                .where(o.c.customer_id.in_(ids)), conn)
        rows = pd.Index(ids)
        have = np.zeros((len(ids), len(self.skus)), dtype=np.float32)
        col = self.index.get_indexer(owned["sku"])
        keep = col >= 0
        have[rows.get_indexer(owned["customer_id"])[keep], col[keep]] = 1.0
        score = have @ self.co + self.popularity * 1e-3
        score[have > 0] = -1.0
        k = min(self.k, len(self.skus))
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        return {cid: [{"sku": str(self.skus[j]), "name": str(self.names[j])}
                      for j in top[i] if score[i, j] >= 0]  # never what they already own
                for i, cid in enumerate(ids)}


@dataclass
class BatchData:
    """Per-customer rows for one batch, keyed by customer id."""

    customers: dict[int, dict[str, Any]]
    scores: dict[int, dict[str, Any]]
    consent: dict[int, tuple[bool, bool]]  # (email, sms)
    suppressed: set[tuple[str, str]]  # (channel, address)
    withdrawn_topics: dict[int, set[tuple[str, str]]]  # customer -> (channel, topic) opted out
    coupons: dict[str, dict[str, Any]]  # by message idempotency key
    recommendations: dict[int, list[dict[str, str]]]
    loyalty: dict[int, dict[str, Any]] = field(default_factory=dict)


def load_batch(
    engine: Engine, rows: Sequence[dict[str, Any]], recommender: Recommender | None
) -> BatchData:
    ids = sorted({r["customer_id"] for r in rows})
    keys = [r["idempotency_key"] for r in rows]
    c, s, sup, cp = t.customers, t.customer_scores, t.suppressions, t.coupons
    with engine.connect() as conn:
        people = pd.read_sql(
            sa.select(
                c.c.id, *(c.c[f] for f in CUSTOMER_FIELDS), c.c.consent_email, c.c.consent_sms
            ).where(c.c.id.in_(ids)),
            conn,
        )
        scores = pd.read_sql(sa.select(s.c.customer_id, *(s.c[f] for f in SCORE_FIELDS))
                             .where(s.c.customer_id.in_(ids)), conn)
        addresses = [a for a in pd.concat([people["email"], people["phone"]]).dropna().unique()]
        suppressed = (
            {
                (ch, a)
                for ch, a in conn.execute(
                    sa.select(sup.c.channel, sup.c.address).where(sup.c.address.in_(addresses))
                )
            }
            if addresses
            else set()
        )
        topics = withdrawn_topics(conn, ids)
        lo = t.loyalty_status
        loyalty = {int(r.customer_id): {f: _clean(getattr(r, f)) for f in LOYALTY_FIELDS}
                   for r in conn.execute(sa.select(lo.c.customer_id,
                                                   *(lo.c[f] for f in LOYALTY_FIELDS))
                                         .where(lo.c.customer_id.in_(ids)))}
        coupons = {r.idempotency_key: dict(r._mapping) for r in conn.execute(
            sa.select(cp.c.idempotency_key, cp.c.code, cp.c.kind, cp.c.value, cp.c.currency,
                      cp.c.expires_at).where(cp.c.idempotency_key.in_(keys)))}
    records = people.astype(object).where(people.notna(), None).to_dict("records")
    customers = {int(p["id"]): {f: _clean(p[f]) for f in CUSTOMER_FIELDS} for p in records}
    for cust in customers.values():
        name = cust["name"] or ""
        cust["first_name"] = name.split()[0] if name else ""
        cust["attributes"] = cust["attributes"] or {}
    consent = {int(p["id"]): (bool(p["consent_email"]), bool(p["consent_sms"])) for p in records}
    score_map = {int(r["customer_id"]): {f: _clean(r[f]) for f in SCORE_FIELDS}
                 for r in scores.to_dict("records")}
    recs = recommender.for_customers(ids) if recommender else {}
    return BatchData(customers, score_map, consent, suppressed, topics, coupons, recs, loyalty)


def render_context(row: dict[str, Any], data: BatchData, *, keyring: Keyring, issued_at: datetime,
                   public_base_url: str, store: dict[str, str]) -> dict[str, Any]:
    """The template context for one outbox row (the contract in ``clm_core.templating``)."""
    cid = row["customer_id"]
    customer = data.customers[cid]
    links = subscription_links(keyring, public_base_url, row["channel"], customer["external_id"],
                               issued_at)
    coupon = data.coupons.get(row["idempotency_key"])
    return {
        "customer": customer,
        "scores": data.scores.get(cid, {f: None for f in SCORE_FIELDS}),
        "loyalty": data.loyalty.get(cid, {f: None for f in LOYALTY_FIELDS}),
        "coupon": None if coupon is None else {
            "code": coupon["code"], "kind": coupon["kind"], "value": _number(coupon["value"]),
            "currency": coupon["currency"], "expires_at": coupon["expires_at"]},
        "recommendations": data.recommendations.get(cid, []),
        "links": {**links, "shop": store["url"]},
        "store": store,
        "journey": {"name": row["journey"], "step": row["step_id"]},
    }


def _number(value: Any) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number
