"""The replay's weekly fits, computed ahead in a second process.

A replay step needs the fit a weekly fit would have produced from the orders up to its day.
That fit depends on nothing the replay decides (stages, journeys, messages): only on the
orders before the day and on which earlier fit is still fresh (``fit_max_age_days``), which in
turn depends only on earlier fits. So a second process can walk the same days, apply the same
rule to the same data and fit while the replay's own process scores and plans the days in
between: on a two-core machine most of the fitting time leaves the replay's wall time. The
fits are the same computation on the same input (the features frame built by the same
functions, in the same customer order), so the replay's result does not depend on whether
they were computed ahead: ``tests/test_backtest.py`` compares both ways.

The replay still decides, at each step, whether a fit is due (``due``); when it is, it takes
the next fit from the queue and checks that it was made for its day. Anything unexpected (the
process died, a fit for another day) makes the replay fit inline from then on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from clm_core.backtest.aggregates import NAT, RunningAggregates
from clm_core.backtest.history import History
from clm_core.errors import ModelFitError
from clm_core.lifecycle.features import day_end, features_from_aggregates
from clm_core.lifecycle.fitting import ModelFit, fit_models
from clm_core.lifecycle.history import shortfall
from clm_core.lifecycle.pipeline import LifecycleConfig

# Below this many steps the second process's start-up (imports) costs more than it saves.
MIN_STEPS = 8
# How long the replay waits for one fit before it stops relying on the second process, and
# how often it checks that the process is still there meanwhile.
WAIT_SECONDS = 600.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class FitOutcome:
    """One attempted fit: the models, or why it failed."""

    as_of: date
    purchases: ModelFit | None
    spend: ModelFit | None
    error: str | None


def due(config: LifecycleConfig, current: ModelFit | None, as_of: date) -> bool:
    """Whether a replay step on ``as_of`` refits (the scheduled fit's freshness rule)."""
    return current is None or (as_of - current.window_end).days > config.fit_max_age_days


def fit_frame(config: LifecycleConfig, raw: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The features a fit reads, from the replay's aggregates frame."""
    return features_from_aggregates(raw, as_of, config.time_unit, rhythm=config.rhythm).frame


def attempt(config: LifecycleConfig, f: pd.DataFrame, as_of: date) -> FitOutcome | None:
    """The fit of ``f`` (None when the store lacks the data for one, as the flow skips it)."""
    if shortfall(f) is not None:
        return None
    try:
        purchases, spend = fit_models(f, as_of=as_of, time_unit=config.time_unit,
                                      model=config.model, penalizer=config.penalizer,
                                      fallback=config.penalizer_fallback)
    except ModelFitError as exc:
        return FitOutcome(as_of, None, None, str(exc))
    return FitOutcome(as_of, purchases, spend, None)


def _walk(history: History, config: LifecycleConfig, days: Sequence[date],
          out: Any) -> None:
    """The second process: every day's freshness rule, and a fit where one is due."""
    try:
        agg = RunningAggregates(history)
        n = len(history.customers)
        no_stage = np.full(n, None, dtype=object)
        no_since = np.full(n, NAT)
        current: ModelFit | None = None
        for as_of in days:
            end = np.datetime64(day_end(as_of), "ns")
            agg.advance(end)
            if not due(config, current, as_of):
                continue
            outcome = attempt(config, fit_frame(config, agg.frame(end, no_stage, no_since,
                                                                  False), as_of), as_of)
            if outcome is None:
                continue
            out.put(outcome)
            if outcome.purchases is not None:
                current = outcome.purchases
    except BaseException as exc:  # noqa: BLE001  (the replay falls back to fitting inline)
        out.put(f"{type(exc).__name__}: {exc}")


class FitsAhead:
    """The second process and its queue of fits, in the order the replay will need them."""

    def __init__(self, history: History, config: LifecycleConfig, days: Sequence[date]):
        # A fork shares the loaded history without pickling it or importing anything again;
        # ``usable`` refuses it in a process with other threads (a fork copies their locks).
        ctx = mp.get_context("fork")
        self._queue: Any = ctx.Queue()
        self._proc = ctx.Process(target=_walk, args=(history, config, list(days), self._queue),
                                 daemon=True)
        self._proc.start()
        self.failed: str | None = None

    @staticmethod
    def usable(steps: int) -> bool:
        """Whether fitting ahead is worth it and safe here: enough steps, a platform that
        forks, no other thread in this process, and not a daemonic process (which may not
        have children)."""
        return (steps >= MIN_STEPS and "fork" in mp.get_all_start_methods()
                and threading.active_count() == 1 and not mp.current_process().daemon)

    def take(self, as_of: date) -> FitOutcome | None:
        """The fit made for ``as_of``; None (and no more use of the second process) when it
        cannot give one."""
        if self.failed is not None:
            return None
        item: object = None
        waited = 0.0
        while item is None:
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                waited += POLL_SECONDS
                if not self._proc.is_alive():
                    item = "the fitting process ended"
                elif waited >= WAIT_SECONDS:
                    item = "no fit arrived in time"
        if isinstance(item, FitOutcome) and item.as_of == as_of:
            return item
        self.failed = (str(item) if not isinstance(item, FitOutcome)
                       else f"a fit for {item.as_of}, not {as_of}")
        self.close()
        return None

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)
        self._queue.close()
