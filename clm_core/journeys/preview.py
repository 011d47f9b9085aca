"""``clm preview``: the messages one customer would get from a journey, rendered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.errors import ClmError
from clm_core.journeys.loader import CompiledJourney
from clm_core.journeys.model import SendStep
from clm_core.settings import Settings
from clm_core.suggest import did_you_mean
from clm_core.templating import (
    RenderedEmail,
    RenderedSms,
    TemplateStore,
    configured_store,
    first_name,
    sample_context,
)

SCORE_FIELDS = ("stage", "rfm_segment", "p_alive", "clv_12m", "expected_purchases_90d", "n_orders",
                "total_spend", "avg_order_value", "last_order_at", "days_since_last_order")


@dataclass
class Preview:
    step: str
    channel: str
    template: str
    rendered: RenderedEmail | RenderedSms


def customer_context(db: Engine, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(customer, scores) context parts for an external id (or a numeric id)."""
    c, s = t.customers, t.customer_scores
    where = c.c.external_id == ref
    if ref.isdigit():
        where = sa.or_(where, c.c.id == int(ref))
    with db.connect() as conn:
        row = conn.execute(
            sa.select(c, *[s.c[f] for f in SCORE_FIELDS])
            .select_from(c.outerjoin(s, s.c.customer_id == c.c.id))
            .where(where)
        ).first()
    if row is None:
        raise ClmError(f"no customer {ref!r} (give an external id such as cdnow-00001)")
    m = row._mapping
    name = m["name"] or ""
    customer = {
        "external_id": m["external_id"],
        "name": name,
        "first_name": first_name(name),  # as dispatch addresses them
        "email": m["email"],
        "phone": m["phone"],
        "locale": m["locale"],
        "timezone": m["timezone"],
        "attributes": m["attributes"] or {},
    }
    return customer, {f: m[f] for f in SCORE_FIELDS}


def preview(db: Engine, settings: Settings, journey: CompiledJourney, customer_ref: str,
            step_id: str | None = None, now: datetime | None = None) -> list[Preview]:
    steps = [s for s in journey.spec.steps if isinstance(s, SendStep)]
    if step_id is not None:
        chosen = [s for s in steps if s.id == step_id]
        if not chosen:
            raise ClmError(f"journey {journey.name!r} has no send step {step_id!r}"
                           f"{did_you_mean(step_id, [s.id for s in steps])}")
        steps = chosen
    customer, scores = customer_context(db, customer_ref)
    store = TemplateStore(settings.templates_dir, settings.default_locale)
    now = now or datetime.now()
    out = []
    for step in steps:
        ctx = sample_context(customer["locale"] or settings.default_locale,
                             with_coupon=step.send.coupon is not None, journey=journey.name,
                             step=step.id, now=now, store=configured_store(settings),
                             public_base_url=settings.public_base_url, token="preview")
        ctx["customer"], ctx["scores"] = customer, scores
        coupon = step.send.coupon
        if coupon is not None:
            ctx["coupon"] = {"code": "PREVIEW-CODE", "kind": coupon.kind, "value": coupon.value,
                             "currency": coupon.currency or settings.currency,
                             "expires_at": now + timedelta(days=coupon.expires_in_days or 30)}
        rendered = store.render(step.send.template, step.send.channel, customer["locale"], ctx)
        out.append(Preview(step.id, step.send.channel, step.send.template, rendered))
    return out
