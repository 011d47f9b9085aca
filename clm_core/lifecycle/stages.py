"""Lifecycle stage rules: an ordered list of stages in YAML, first match wins.

    stages:
      - name: prospect
        when: {field: n_orders, eq: 0}
      - name: churned
        when:
          any:
            - {field: p_alive, lt: 0.25}
            - {field: days_since_last_order, gt: {field: typical_gap_days, times: 4}}
      - name: reactivated
        since: first_order_in_stage_at   # the stage begins with the comeback purchase
        when: ...
      - name: active            # no ``when``: everyone not matched above (last stage only)

A stage begins on the as-of day of the scoring that assigns it, unless ``since`` names a
datetime metric that says when it really began (never later than the as-of day); ``stage_since``
and ``days_in_stage`` count from there.

Conditions use the shared condition language (``clm_core.conditions``) over the metrics in
``METRICS``; every problem in the file is reported at once with file:line:column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clm_core.conditions import Condition, collect_problems
from clm_core.errors import Problem, SpecError
from clm_core.lifecycle.features import CUSTOMER_COLUMNS
from clm_core.yamlspec import Locator, load_yaml, parse_yaml, problems_from_pydantic

# Every metric a stage rule may use, with its condition type.
METRICS: dict[str, str] = {
    **dict.fromkeys((
        "n_orders", "purchase_days", "total_spend", "avg_order_value", "repeat_avg_value",
        "days_since_first_order", "days_since_last_order", "days_since_signup", "frequency",
        "recency", "T", "monetary_value", "typical_gap_days", "p_alive", "expected_purchases_30d",
        "expected_purchases_90d", "expected_aov", "clv_12m", "r_score", "f_score", "m_score",
        "days_in_stage", "days_since_first_order_in_stage"), "number"),
    **dict.fromkeys(("rfm_segment", "previous_stage"), "string"),
    **dict.fromkeys(("first_order_at", "last_order_at", "signed_up_at", "previous_stage_since",
                     "first_order_in_stage_at"), "datetime"),
    **CUSTOMER_COLUMNS,
}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class _StageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str | None = None
    when: Any = None
    since: str | None = None


class _RulesModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: list[_StageModel] = Field(min_length=1)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str | None
    condition: Condition | None  # None: everyone not matched by an earlier stage
    since: str | None = None  # datetime metric: when the stage began (None: the as-of day)


@dataclass(frozen=True)
class StageRules:
    """Compiled rules; ``assign`` gives each customer the first stage that matches."""

    stages: tuple[Stage, ...]
    file: str

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def fields(self) -> set[str]:
        return set().union(*(s.condition.fields for s in self.stages if s.condition),
                           {s.since for s in self.stages if s.since})

    def since_of(self, metrics: pd.DataFrame, stage: pd.Series) -> pd.Series:
        """When each customer's assigned stage began, for stages with ``since`` (NaT else)."""
        out = pd.Series(pd.NaT, index=metrics.index, dtype="datetime64[ns]")
        for s in self.stages:
            if s.since:
                hit = (stage == s.name).to_numpy(bool)
                out[hit] = pd.to_datetime(metrics.loc[hit, s.since]).astype("datetime64[ns]")
        return out

    def assign(self, metrics: pd.DataFrame) -> pd.Series:
        """Stage per row (None where no stage matches)."""
        stage = np.full(len(metrics), None, dtype=object)
        open_ = np.ones(len(metrics), dtype=bool)
        for s in self.stages:
            hit = open_ if s.condition is None else open_ & s.condition.mask(metrics).to_numpy(bool)
            stage[hit] = s.name
            open_ &= ~hit
            if not open_.any():
                break
        return pd.Series(stage, index=metrics.index, dtype=object)


def load_rules(path: str | Path) -> StageRules:
    data, loc = load_yaml(path)
    return compile_rules(data, loc)


def parse_rules(text: str, file: str = "<rules>") -> StageRules:
    data, loc = parse_yaml(text, file)
    return compile_rules(data, loc)


def compile_rules(data: Any, loc: Locator) -> StageRules:
    """Validate and compile; raises SpecError listing every problem with its location."""
    if not isinstance(data, dict):
        raise SpecError([loc.problem((), "stage rules must be a mapping with a 'stages' list")])
    try:
        model = _RulesModel.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_from_pydantic(exc, loc, _RulesModel)) from None
    problems: list[Problem] = []
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(model.stages):
        path: tuple[str | int, ...] = ("stages", i)
        if not NAME.match(s.name):
            problems.append(
                loc.problem(
                    path + ("name",),
                    f"stage name {s.name!r}: use lower-case "
                    "letters, digits and _ (at most 32, starting with a letter)",
                )
            )
        if s.name in seen:
            problems.append(loc.problem(path + ("name",), f"stage {s.name!r} is already defined "
                                        f"(stage {seen[s.name] + 1})"))
        seen.setdefault(s.name, i)
        cond = None
        if s.when is None:
            if i != len(model.stages) - 1:
                later = ", ".join(x.name for x in model.stages[i + 1:])
                problems.append(loc.problem(path, f"stage {s.name!r} has no 'when', so it takes "
                                            f"everyone left and {later} can never match; give it "
                                            "a condition or move it last"))
        else:
            cond, found = collect_problems(s.when, METRICS, loc, path + ("when",))
            problems += found
        if s.since is not None and METRICS.get(s.since) != "datetime":
            from clm_core.suggest import did_you_mean

            dated = sorted(k for k, v in METRICS.items() if v == "datetime")
            problems.append(loc.problem(path + ("since",), f"'since' names a datetime metric; "
                                        f"{s.since!r} is not one{did_you_mean(s.since, dated)} "
                                        f"(choose from {', '.join(dated)})"))
        stages.append(Stage(s.name, s.description, cond, s.since))
    problems += _stage_values(model, loc, set(seen))
    if problems:
        raise SpecError(problems)
    return StageRules(tuple(stages), loc.file)


def _stage_values(model: _RulesModel, loc: Locator, names: set[str]) -> list[Problem]:
    """Conditions on previous_stage must name stages that exist."""
    from clm_core.suggest import did_you_mean

    problems = []

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, dict):
            if node.get("field") == "previous_stage":
                for op in ("eq", "ne", "in", "not_in"):
                    values = node.get(op)
                    items = values if isinstance(values, list) else [values]
                    for k, v in enumerate(items):
                        if isinstance(v, str) and v not in names:
                            where = path + (op, k) if isinstance(values, list) else path + (op,)
                            problems.append(loc.problem(where, f"unknown stage {v!r}"
                                                        f"{did_you_mean(v, names)}; stages: "
                                                        f"{', '.join(sorted(names))}"))
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for k, v in enumerate(node):
                walk(v, path + (k,))

    for i, s in enumerate(model.stages):
        walk(s.when, ("stages", i, "when"))
    return problems
