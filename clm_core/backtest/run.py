"""``clm backtest``: load the history, replay the journeys over a period, tally the weeks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from clm_core.backtest.history import History, load_history
from clm_core.backtest.replay import Replay, steps_between
from clm_core.backtest.tally import COLUMNS, Tally
from clm_core.errors import ConfigError
from clm_core.journeys.loader import CompiledJourney, load_journey
from clm_core.journeys.store import load_journeys, project_policy
from clm_core.lifecycle.pipeline import LifecycleConfig
from clm_core.settings import Settings


@dataclass(frozen=True)
class Period:
    start: date
    end: date
    every: timedelta
    hour: int = 10

    def describe(self) -> str:
        return f"{self.start} to {self.end} every {self.every.days}d"


@dataclass
class Backtest:
    """One replay's result: its period, journeys, weekly table and failed days."""

    period: Period
    journeys: list[str]
    tally: Tally
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: (v.isoformat() if isinstance(v, date) else v) for k, v in r.items()}
                    for r in df.to_dict("records")]

        return {"from": self.period.start.isoformat(), "to": self.period.end.isoformat(),
                "every_days": self.period.every.days, "steps": self.tally.steps,
                "journeys": self.journeys, "fits": self.tally.fits,
                "columns": COLUMNS, "weeks": rows(self.tally.weekly()),
                "totals": rows(self.tally.totals()),
                "customers_in_several_journeys": rows(self.tally.customers_in_several()),
                "failed_days": self.tally.failed}


def select_journeys(settings: Settings, names: list[str] | None,
                    replace: Path | None = None) -> list[CompiledJourney]:
    """The project's journeys (drafts left out), only ``names`` when given, with the journey
    of the same name replaced by (or joined by) the one in ``replace``."""
    policy = project_policy(settings.section("journeys"))
    journeys = [j for j in load_journeys(settings.journeys_dir, policy)
                if j.spec.status != "draft"]
    if names:
        known = {j.name for j in journeys}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--journeys: no journey named {', '.join(unknown)} in "
                              f"{settings.journeys_dir} (known: {', '.join(sorted(known))})")
        journeys = [j for j in journeys if j.name in names]
    if replace is not None:
        other = load_journey(replace, policy)
        journeys = [j for j in journeys if j.name != other.name] + [other]
    return journeys


def backtest(engine: Engine, settings: Settings, period: Period,
             journeys: list[CompiledJourney], history: History | None = None) -> Backtest:
    """Replay ``journeys`` over ``period`` (reading the live tables once, writing nothing)."""
    config = LifecycleConfig.from_settings(settings)
    rules = config.load_rules()
    if history is None:
        types = {j.spec.entry.event.type for j in journeys if j.spec.entry.event} | {
            g.event.type for j in journeys for g in j.spec.goals if g.event} | {
            "opened", "clicked"}
        with engine.connect() as conn:
            history = load_history(conn, types)
    start = time.perf_counter()
    replay = Replay(history, config, rules, journeys,
                    project_policy(settings.section("journeys")), settings.default_timezone)
    t = Tally()
    for step in replay.run(steps_between(period.start, period.end, period.every, period.hour,
                                         settings.default_timezone)):
        t.add(step)
    return Backtest(period, sorted({j.name for j in journeys}), t, time.perf_counter() - start)
