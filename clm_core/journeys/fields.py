"""The customer fields journey conditions may use, taken from the schema so they never drift."""

from __future__ import annotations

import sqlalchemy as sa

from clm_core.db import tables as t

_SKIP = {"customer_id", "fit_id", "run_id", "id", "external_id", "attributes", "created_at",
         "updated_at", "recorded_at"}
# Known stage names for "did you mean" hints on entry and goals.
STAGES = ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated")


def _type(col: sa.Column) -> str:
    kind = col.type
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, (sa.DateTime, sa.Date)):
        return "datetime"
    if isinstance(kind, (sa.Integer, sa.Float, sa.Numeric)):
        return "number"
    return "string"


def _columns(table: sa.Table) -> dict[str, str]:
    return {c.name: _type(c) for c in table.columns if c.name not in _SKIP}


# Derived columns the engine adds to every customer row.
DERIVED = {"days_in_stage": "number", "customer_id": "number"}
# Days since the customer's latest engagement event of each kind (none in the look-back: NaN,
# which no comparison matches); written by provider callbacks and tracked clicks.
ENGAGEMENT_EVENTS = ("opened", "clicked")
ENGAGEMENT_LOOKBACK_DAYS = 90
DERIVED.update({f"days_since_{e}": "number" for e in ENGAGEMENT_EVENTS})

# Loyalty fields (points_balance, points_expiring_30d, tier, tier_since, points_to_next_tier,
# ...): empty for customers who are not members.
LOYALTY = {k: v for k, v in _columns(t.loyalty_status).items() if k not in ("as_of", "qualifying")}

FIELDS: dict[str, str] = {**_columns(t.customers), **_columns(t.customer_scores), **LOYALTY,
                          **DERIVED}
