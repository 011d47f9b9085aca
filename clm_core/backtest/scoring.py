"""A replay's scoring half: purchase aggregates, the point-in-time fit, scores, stages and
transitions, step by step.

Nothing the journeys decide reaches this half: a step's scores and stages depend only on the
orders up to its day, the fits before it and the stages of the step before. So it can run in
a second process a few steps ahead of the journeys (``clm_core.backtest.ahead``), or inline;
both give the same ``Scored`` steps (``tests/test_backtest.py`` compares them).

Per step (what the scheduled ``lifecycle`` flow does, with the same functions):

1. the aggregates advance by the orders of the days since the last step (``aggregates``), and
   ``features_from_aggregates`` computes the features as of the day;
2. the fit is the one a weekly fit would have produced: refitted (``fit_models``) when the
   newest replay fit's data ends more than ``fit_max_age_days`` before the day, on that day's
   features only (point in time: the live store's stored fits are never used, they may have
   seen later orders);
3. scores (``score_frame``), RFM, stage rules and transitions (``diff``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from clm_core.backtest.aggregates import NAT, RunningAggregates
from clm_core.backtest.history import History
from clm_core.errors import ModelFitError
from clm_core.lifecycle.features import IN_STAGE_FIELDS, day_end, features_from_aggregates
from clm_core.lifecycle.fitting import ModelFit, fit_models
from clm_core.lifecycle.history import shortfall, without_model
from clm_core.lifecycle.pipeline import SCORE_COLUMNS, LifecycleConfig
from clm_core.lifecycle.rfm import rfm
from clm_core.lifecycle.scoring import score_frame
from clm_core.lifecycle.stages import StageRules
from clm_core.lifecycle.transitions import diff

# Transition rows carry a recorded_at; a replay records nothing, so it is a fixed stamp.
RECORDED = datetime(1970, 1, 1)
# The transition columns the journeys read.
MOVE_COLUMNS = ["customer_id", "from_stage", "to_stage", "transitioned_at"]


@dataclass(frozen=True)
class Scored:
    """One step's scoring: what the journeys and the tally read of it.

    ``view`` holds the score columns the engine reads (``SCORE_COLUMNS``), one row per scored
    customer; ``purchases`` and ``spend`` are the fits made at this step (None when it did
    not refit)."""

    as_of: date
    orders_added: int
    view: pd.DataFrame
    moves: pd.DataFrame
    fitted: bool
    error: str | None
    purchases: ModelFit | None = None
    spend: ModelFit | None = None


def due(config: LifecycleConfig, current: ModelFit | None, as_of: date) -> bool:
    """Whether a replay step on ``as_of`` refits (the scheduled fit's freshness rule)."""
    return current is None or (as_of - current.window_end).days > config.fit_max_age_days


class Scoring:
    """The scoring half's state between steps: aggregates, stages and the current fits."""

    def __init__(self, history: History, config: LifecycleConfig, rules: StageRules):
        self.h, self.config, self.rules = history, config, rules
        self.agg = RunningAggregates(history)
        n = len(history.customers)
        self.stage = np.full(n, None, dtype=object)
        self.stage_since = np.full(n, NAT)
        self.in_stage = bool(rules.fields & IN_STAGE_FIELDS)
        self.purchases: ModelFit | None = None
        self.spend: ModelFit | None = None

    @property
    def started(self) -> bool:
        return self.agg.end is not None

    def _fit(self, f: pd.DataFrame, as_of: date) -> tuple[bool, str | None]:
        if not due(self.config, self.purchases, as_of) or shortfall(f) is not None:
            return False, None
        c = self.config
        try:
            self.purchases, self.spend = fit_models(
                f, as_of=as_of, time_unit=c.time_unit, model=c.model, penalizer=c.penalizer,
                fallback=c.penalizer_fallback)
        except ModelFitError as exc:
            return False, str(exc)
        return True, None

    def step(self, as_of: date, now: datetime) -> Scored:
        """Score ``as_of`` (consent as it stood at ``now``, the run's time)."""
        h = self.h
        end = np.datetime64(day_end(as_of), "ns")
        added = self.agg.advance(end)
        consent = h.consent_at(pd.Timestamp(now))
        raw = self.agg.frame(end, self.stage, self.stage_since, self.in_stage)
        mine = consent.reindex(raw["customer_id"])
        raw["consent_email"] = mine["consent_email"].to_numpy()
        raw["consent_sms"] = mine["consent_sms"].to_numpy()
        cache: dict[str, pd.DataFrame] = {}

        def features(unit: str) -> pd.DataFrame:
            if unit not in cache:
                cache[unit] = features_from_aggregates(raw, as_of, unit,
                                                       rhythm=self.config.rhythm).frame
            return cache[unit]

        fitted, error = self._fit(features(self.config.time_unit), as_of)
        if error is not None:  # the day's run would have failed: nothing else happens
            return Scored(as_of, added, pd.DataFrame(), pd.DataFrame(), False, error)
        purchases, spend = self.purchases, self.spend
        f = features(purchases.time_unit if purchases else self.config.time_unit)
        if purchases is None or spend is None:
            scores = without_model(f.index)
        else:
            scores = score_frame(f, purchases.model, purchases.params, spend.params,
                                 purchases.time_unit, self.config.discount_rate)
        view = pd.concat([f, scores, rfm(f, None)], axis=1)
        view["stored_stage"] = view["previous_stage"]
        view["stored_since"] = view["previous_stage_since"]
        stage = self.rules.assign(view)
        moves, since = diff(view, stage, as_of, None, self.rules.since_of(view, stage),
                            RECORDED)
        pos = h.customers.index.get_indexer(view["customer_id"])
        self.stage[pos] = stage.to_numpy()
        self.stage_since[pos] = since.to_numpy("datetime64[ns]")
        view["stage"] = stage.to_numpy()
        view["stage_since"] = since.to_numpy("datetime64[ns]")
        view["as_of"] = pd.Timestamp(as_of)
        view["fit_id"] = None
        # only what the journeys read leaves this half (it may cross a process boundary)
        out = view[[c for c in SCORE_COLUMNS if c in view.columns]]
        return Scored(as_of, added, out, moves[MOVE_COLUMNS] if len(moves) else moves,
                      fitted, None, purchases if fitted else None, spend if fitted else None)
