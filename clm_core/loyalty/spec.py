"""The loyalty programme language: pydantic models of ``journeys/loyalty.yaml``.

The same models validate the file (``clm validate``), generate the editors' JSON Schema
(``journeys/loyalty.schema.json``) and drive the ledger. A programme has earning rules, bonus
rules, expiry, tiers and rewards; everything is optional except the earning rate and one tier.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from clm_core.errors import Problem, SpecError
from clm_core.journeys.model import ID_PATTERN, Duration, Spec
from clm_core.yamlspec import Locator, load_yaml, problems_from_pydantic

LOYALTY_FILE = "loyalty.yaml"
SCHEMA_FILE = "loyalty.schema.json"


class Earning(Spec):
    """Points for completed orders: ``points_per_unit`` per currency unit of the order amount."""

    points_per_unit: Decimal = Field(gt=0, description="points per currency unit spent")
    rounding: Literal["down", "nearest", "up"] = "down"
    currencies: list[str] | None = Field(
        None, description="only orders in these currencies earn (default: every currency)")


class Bonus(Spec):
    """Extra points on an order that matches: ``multiplier`` times the base points in total
    (2 = double points) or a flat ``points``. One condition kind per rule."""

    id: str = Field(pattern=ID_PATTERN, max_length=64)
    multiplier: Decimal | None = Field(None, gt=1)
    points: int | None = Field(None, gt=0)
    birthday_month: bool | None = Field(
        None, description="the order falls in the customer's birthday month "
        "(customer attribute 'birthday', YYYY-MM-DD or MM-DD)")
    sku_prefix: str | None = Field(None, min_length=1,
                                   description="the order has an item whose SKU starts so")
    min_amount: Decimal | None = Field(None, gt=0, description="orders of at least this amount")

    @model_validator(mode="after")
    def _one_each(self) -> Bonus:
        if (self.multiplier is None) == (self.points is None):
            raise ValueError(f"bonus {self.id!r} needs exactly one of multiplier or points")
        kinds = [k for k in ("birthday_month", "sku_prefix", "min_amount")
                 if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            raise ValueError(f"bonus {self.id!r} needs exactly one condition: birthday_month, "
                             f"sku_prefix or min_amount" + (f" (found {', '.join(kinds)})"
                                                            if kinds else ""))
        return self


class Expiry(Spec):
    """Points expire ``after`` a time from when they were earned (oldest points are used first)."""

    after: Duration = Field(json_schema_extra={"examples": ["365d", "52w"]})


class Tier(Spec):
    """A tier reached when the qualifying amount over the window reaches ``min``."""

    name: str = Field(pattern=ID_PATTERN, max_length=32)
    min: Decimal = Field(ge=0)
    multiplier: Decimal = Field(Decimal(1), ge=1, description="earning multiplier in this tier")


class Tiers(Spec):
    """Tiers from lowest to highest; qualification on points earned or spend over a rolling
    window; a customer who falls below keeps the tier for ``grace`` before a downgrade."""

    qualify_on: Literal["points", "spend"] = "spend"
    window: Duration = Field(timedelta(days=365), json_schema_extra={"default": "365d"})
    grace: Duration = Field(timedelta(days=30), json_schema_extra={"default": "30d"})
    levels: list[Tier] = Field(min_length=1)

    @field_validator("levels")
    @classmethod
    def _ordered(cls, levels: list[Tier]) -> list[Tier]:
        names = [t.name for t in levels]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        mins = [t.min for t in levels]
        if mins[0] != 0:
            raise ValueError(f"the first tier ({names[0]!r}) is the entry tier: its min is 0")
        if any(b <= a for a, b in zip(mins, mins[1:])):
            raise ValueError("tiers go from lowest to highest: each min above the one before")
        return levels


class Reward(Spec):
    """At ``points`` a reward is issued: the points are debited and a ``loyalty_reward`` event
    is recorded. A journey that enters on it (``entry: {event: {type: loyalty_reward}}``, as the
    sample ``reward_ready.yaml``) sends the coupon, through the outbox like every message."""

    id: str = Field(pattern=ID_PATTERN, max_length=64)
    points: int = Field(gt=0)


class Programme(Spec):
    """One store's loyalty programme."""

    name: str = Field(pattern=ID_PATTERN, max_length=64)
    status: Literal["active", "paused"] = "active"
    point_value: Decimal = Field(Decimal("0.01"), ge=0,
                                 description="money value of one point, for the liability report")
    earning: Earning
    bonuses: list[Bonus] = Field(default_factory=list)
    expiry: Expiry | None = None
    tiers: Tiers
    rewards: list[Reward] = Field(default_factory=list)

    @field_validator("rewards")
    @classmethod
    def _one_reward(cls, v: list[Reward]) -> list[Reward]:
        # Several thresholds would need a rule for which one a balance buys; one is unambiguous.
        if len(v) > 1:
            raise ValueError("one reward per programme (the threshold at which points convert)")
        return v

    @model_validator(mode="after")
    def _unique_bonuses(self) -> Programme:
        ids = [b.id for b in self.bonuses]
        if len(set(ids)) != len(ids):
            raise ValueError("bonus ids must be unique")
        return self

    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers.levels]


def parse_programme(text: str, file: str) -> Programme:
    """Validate loyalty YAML; raise SpecError with every problem located."""
    from clm_core.yamlspec import parse_yaml

    data, loc = parse_yaml(text, file)
    return _validate(data, loc)


def _validate(data: Any, loc: Locator) -> Programme:
    if not isinstance(data, dict):
        raise SpecError([Problem(loc.file, 1, 1, "a loyalty file is a mapping with name, "
                                 "earning and tiers")])
    try:
        return Programme.model_validate(data)
    except ValidationError as exc:
        raise SpecError([replace(p, message=p.message.replace("Value error, ", ""))
                         for p in problems_from_pydantic(exc, loc, Programme)]) from None


def load_programme(directory: Path) -> Programme | None:
    """The project's programme, or None when the store has no ``journeys/loyalty.yaml``."""
    path = directory / LOYALTY_FILE
    if not path.exists():
        return None
    data, loc = load_yaml(path)
    return _validate(data, loc)


def schema_text() -> str:
    schema = Programme.model_json_schema(by_alias=True, mode="validation")
    full = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://clm.example.com/schemas/loyalty.schema.json", **schema}
    return json.dumps(full, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
