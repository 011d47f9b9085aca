"""Render contexts for a batch of messages, built with a few SQL queries per batch.

The contract (what templates may use) is the one in ``clm_core.templating``: ``customer``,
``scores``, ``coupon``, ``recommendations``, ``links``, ``store``, ``journey``.

Recommendations come from ``clm_core.recommend`` (``Recommender``, re-exported here): what the
customer is likely to buy next given what they bought, never what they own, the most popular
products for customers without history. Its counts are read once per dispatcher; per batch it
is one query and one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine

from clm_core.consent.ledger import withdrawn_topics
from clm_core.consent.tokens import Keyring
from clm_core.db import tables as t
from clm_core.delivery.unsubscribe import subscription_links
from clm_core.recommend.recommender import Recommender
from clm_core.templating import first_name

__all__ = ["BatchData", "Recommender", "load_batch", "render_context"]

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


def _no_nan(value: Any) -> Any:
    """``_clean`` for a value as the driver returns it: only a float can be NaN."""
    return None if value.__class__ is float and value != value else value


def _among(conn: sa.Connection, column: sa.ColumnElement[Any], values: Sequence[Any],
           kind: sa.types.TypeEngine[Any]) -> sa.ColumnElement[bool]:
    """``column IN values``; on PostgreSQL as ``= ANY`` of one array parameter. Why: an ``IN``
    list of a batch's 500 ids is 500 placeholders in a statement psycopg parses again for
    every batch (it caches only short ones), a third of loading a batch."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(kind)))
    return column.in_(values)


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
    # Rows as the driver returns them, not through pandas: a DataFrame per query and its
    # conversion back to dictionaries cost more than the queries (a tenth of a dispatch's CPU
    # per message without batching), and every lane loads a batch at the start of a run
    # before anything is sent. NaN still becomes None (``_no_nan``).
    with engine.connect() as conn:
        people = conn.execute(
            sa.select(
                c.c.id, *(c.c[f] for f in CUSTOMER_FIELDS), c.c.consent_email, c.c.consent_sms
            ).where(_among(conn, c.c.id, ids, sa.Integer()))
        ).all()
        scores = conn.execute(sa.select(s.c.customer_id, *(s.c[f] for f in SCORE_FIELDS))
                              .where(_among(conn, s.c.customer_id, ids, sa.Integer()))).all()
        addresses = sorted({a for p in people for a in (p.email, p.phone) if a})
        suppressed = (
            {
                (ch, a)
                for ch, a in conn.execute(
                    sa.select(sup.c.channel, sup.c.address)
                    .where(_among(conn, sup.c.address, addresses, sa.String()))
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
                                         .where(_among(conn, lo.c.customer_id, ids,
                                                       sa.Integer())))}
        coupons = {r.idempotency_key: dict(r._mapping) for r in conn.execute(
            sa.select(cp.c.idempotency_key, cp.c.code, cp.c.kind, cp.c.value, cp.c.currency,
                      cp.c.expires_at).where(_among(conn, cp.c.idempotency_key, keys, sa.String()))
        )}
    n = len(CUSTOMER_FIELDS)
    customers = {int(p[0]): dict(zip(CUSTOMER_FIELDS, map(_no_nan, p[1:n + 1]))) for p in people}
    for cust in customers.values():
        cust["first_name"] = first_name(cust["name"])
        cust["attributes"] = cust["attributes"] or {}
    consent = {int(p[0]): (bool(p[n + 1]), bool(p[n + 2])) for p in people}
    score_map = {int(r[0]): dict(zip(SCORE_FIELDS, map(_no_nan, r[1:]))) for r in scores}
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
