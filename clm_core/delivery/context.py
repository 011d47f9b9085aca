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
        cust["first_name"] = first_name(cust["name"])
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
