"""Planted effects of messages: what receiving a journey's (or a template's) message does.

```yaml
effects:
  - journey: winback          # or template: winback_offer (exactly one of the two)
    purchase_lift: 0.30       # relative lift of the purchase rate (0.3 = 30% more purchases)
    days: 14                  # for this many days after receipt
    coupon: {redeem: 0.2}     # a purchase while the message's coupon is valid carries its
                              # code with this probability (the discount is the coupon's own)
    unsubscribe: 0.01         # probability that a receipt ends in an unsubscribe
```

Validated like the journeys: every problem located (file:line:column) and collected before
raising one ``SpecError``; unknown keys get a "did you mean". ``check_targets`` says which
effect names a journey or template the project does not have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clm_core.errors import Problem, SpecError
from clm_core.suggest import did_you_mean
from clm_core.yamlspec import Locator, load_yaml, parse_yaml, problems_from_pydantic

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "data" / "simulated_effects.yaml"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coupon(_Spec):
    redeem: float = Field(ge=0.0, le=1.0)


class Effect(_Spec):
    journey: str | None = None
    template: str | None = None
    purchase_lift: float = Field(default=0.0, ge=-1.0)
    days: int = Field(default=14, ge=1, le=365)
    coupon: Coupon | None = None
    unsubscribe: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> Effect:
        if (self.journey is None) == (self.template is None):
            raise ValueError("name exactly one of journey or template")
        return self

    @property
    def target(self) -> str:
        return f"journey {self.journey}" if self.journey else f"template {self.template}"

    def matches(self, journey: str | None, template: str | None) -> bool:
        return (self.journey is not None and self.journey == journey) or (
            self.template is not None and self.template == template)


class EffectsFile(_Spec):
    effects: list[Effect] = Field(default_factory=list)


@dataclass(frozen=True)
class Effects:
    """The validated effects and where they came from (for the truth file)."""

    file: str
    items: tuple[Effect, ...]
    locator: Locator | None = None

    def for_message(self, journey: str | None, template: str | None) -> list[int]:
        """Indices of the effects a message of ``journey`` with ``template`` carries."""
        return [i for i, e in enumerate(self.items) if e.matches(journey, template)]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [e.model_dump(exclude_none=True) for e in self.items]


def parse_effects(text: str, file: str) -> Effects:
    data, loc = parse_yaml(text, file)
    return _validate(data, loc)


def load_effects(path: str | Path | None = None) -> Effects:
    """The effects file at ``path`` (default: the one shipped for the demo)."""
    data, loc = load_yaml(path or DEFAULT_FILE)
    return _validate(data, loc)


def _validate(data: Any, loc: Locator) -> Effects:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([Problem(loc.file, 1, 1, "an effects file is a mapping with a list "
                                 "under 'effects'")])
    try:
        spec = EffectsFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError([Problem(p.file, p.line, p.column, p.message.replace("Value error, ", ""))
                         for p in problems_from_pydantic(exc, loc, EffectsFile)]) from None
    return Effects(loc.file, tuple(spec.effects), loc)


def check_targets(effects: Effects, journeys: Iterable[str], templates: Iterable[str]) -> None:
    """SpecError naming every effect whose journey or template the project lacks."""
    journeys, templates = sorted(set(journeys)), sorted(set(templates))
    problems = []
    for i, e in enumerate(effects.items):
        kind, name, known = (("journey", e.journey, journeys) if e.journey
                             else ("template", e.template, templates))
        if name not in known:
            line, col = (effects.locator.value_at(("effects", i, kind)) if effects.locator
                         else (None, None))
            problems.append(Problem(effects.file, line, col,
                                    f"effects.{i}.{kind}: no active {kind} {name!r} in the "
                                    f"project{did_you_mean(str(name), known)}"))
    if problems:
        raise SpecError(problems)
