"""A replay: the daily lifecycle run, step by step on a simulated clock, in memory.

Each step does what the scheduled ``lifecycle`` flow does, with the same functions:

1. the purchase aggregates advance by the orders of the days since the last step
   (``aggregates``), and ``features_from_aggregates`` computes the features as of the day;
2. the fit is the one a weekly fit would have produced: refitted (``fit_models``) when the
   newest replay fit's data ends more than ``fit_max_age_days`` before the day, on the
   features of that day only (point in time: the live store's stored fits are never used, they
   may have seen later orders);
3. scores (``score_frame``), RFM, stage rules and transitions (``diff``);
4. journey planning (``journeys.engine.plan``) at the step's ``now`` on a snapshot built from
   the replay's own enrollments, messages, transitions and the history up to ``now``;
5. a simulated dispatch: every message the plan lets through is recorded as sent at its
   scheduled time (quiet hours included); nothing reaches a provider.

Goals are reached by the real orders that follow, as the replay's clock reaches them. Nothing
is written to the database: the history was read once (``history``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from clm_core.backtest import fitahead
from clm_core.backtest.aggregates import RunningAggregates
from clm_core.backtest.history import History
from clm_core.journeys.engine import (
    ENROLLMENT_COLUMNS,
    Plan,
    Snapshot,
    empty_enrollments,
    plan,
)
from clm_core.journeys.fields import ENGAGEMENT_EVENTS, ENGAGEMENT_LOOKBACK_DAYS, LOYALTY
from clm_core.journeys.loader import CompiledJourney
from clm_core.journeys.model import ProjectPolicy
from clm_core.journeys.store import LEDGER_STATUSES
from clm_core.lifecycle.features import IN_STAGE_FIELDS, day_end, features_from_aggregates
from clm_core.lifecycle.fitting import ModelFit
from clm_core.lifecycle.history import shortfall, without_model
from clm_core.lifecycle.pipeline import SCORE_COLUMNS, LifecycleConfig
from clm_core.lifecycle.rfm import rfm
from clm_core.lifecycle.scoring import score_frame
from clm_core.lifecycle.stages import StageRules
from clm_core.lifecycle.transitions import diff
from clm_core.simclock import simulated_steps

# Transition rows carry a recorded_at; a replay records nothing, so it is a fixed stamp.
_RECORDED = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Step:
    """What one replay step did."""

    as_of: date
    now: datetime
    orders_added: int
    fitted: bool
    fit_error: str | None
    customers: int
    transitions: pd.DataFrame
    plan: Plan | None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ReplayState:
    """Everything a replay remembers between steps (what the database would hold)."""

    stage: np.ndarray
    stage_since: np.ndarray
    # the latest enrollment per (journey, customer), a numpy array per column, in id order
    enrollments: dict[str, np.ndarray]
    transitions: pd.DataFrame
    ledger: pd.DataFrame  # customer_id, channel, tags, at
    next_id: int = 1
    purchases: ModelFit | None = None
    spend: ModelFit | None = None


def steps_between(start: date, end: date, every: timedelta, hour: int,
                  timezone: str) -> list[tuple[date, datetime]]:
    """(as_of, now) from ``start`` to ``end`` inclusive: scored as of the day, journeys run the
    next morning at ``hour`` in the store's time zone (as the schedule does)."""
    if end < start:
        raise ValueError(f"the replay ends ({end}) before it starts ({start})")
    count = (end - start) // every + 1
    return simulated_steps(start, count, every, hour, timezone)


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A replay's enrollments as one array per column (``ENROLLMENT_COLUMNS``): updated in
    place and appended to at each step, where a DataFrame would be filtered and concatenated
    whole (its cost grew with every enrollment of the period)."""
    return {c: _values(frame[c], frame[c].dtype) for c in ENROLLMENT_COLUMNS}


def _values(col: pd.Series, dtype: np.dtype | Any) -> np.ndarray:
    """A column's values in the state's array type: times as datetime64[ns], numbers as they
    are, anything else as objects."""
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return col.to_numpy("datetime64[ns]")
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return col.to_numpy(dtype=dtype)
    return col.to_numpy(dtype=object)


def _frame(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The state's enrollments as the engine reads them (object columns stay objects: a
    DataFrame built from them is not inferred into strings again at every step)."""
    return pd.DataFrame({c: pd.Series(a, dtype=object, copy=False) if a.dtype == object else a
                         for c, a in cols.items()}, copy=False)


def coupon_costs(messages: pd.DataFrame, view: pd.DataFrame) -> np.ndarray:
    """The nominal cost of each message's coupon: an amount coupon's value; a percent coupon's
    share of the customer's expected order value (the Gamma-Gamma mean; their average order
    value before a fit; the store's average for a customer without orders). 0 without one."""
    if messages.empty:
        return np.zeros(0)
    by_id = view.set_index("customer_id")
    aov = by_id["expected_aov"] if "expected_aov" in by_id else by_id["avg_order_value"]
    aov = aov.fillna(by_id["avg_order_value"])
    aov = aov.fillna(float(by_id["avg_order_value"].mean()) if len(by_id) else 0.0).fillna(0.0)
    base = messages["customer_id"].map(aov).fillna(0.0).to_numpy(float)
    coupons = messages["coupon"].map(lambda c: c if isinstance(c, dict) else {})
    value = coupons.map(lambda c: float(c.get("value") or 0.0)).to_numpy(float)
    amount = (coupons.map(lambda c: c.get("kind")) == "amount").to_numpy(bool)
    return np.where(amount, value, base * value / 100.0)


class Replay:
    """One replay over ``history`` of the given journeys (see the module docstring)."""

    def __init__(self, history: History, config: LifecycleConfig, rules: StageRules,
                 journeys: Sequence[CompiledJourney], policy: ProjectPolicy,
                 default_tz: str = "UTC", fits_ahead: bool = True):
        self.h, self.config, self.rules = history, config, rules
        self.fits_ahead = fits_ahead
        self.ahead: fitahead.FitsAhead | None = None
        self.journeys = [j for j in journeys if j.spec.status != "draft"]
        self.policy, self.tz = policy, default_tz
        self.agg = RunningAggregates(history)
        # the customers table's fields the engine reads (consent comes from the ledger)
        self.contact = history.customers.drop(
            columns=["signed_up_at", "consent_email", "consent_sms"], errors="ignore")
        n = len(history.customers)
        empty = Snapshot(pd.DataFrame())  # the engine's empty frames, with their dtypes
        self.state = ReplayState(
            stage=np.full(n, None, dtype=object),
            stage_since=np.full(n, np.datetime64("NaT", "ns")),
            enrollments=_columns(empty_enrollments()),
            transitions=empty.transitions, ledger=empty.ledger)
        self.in_stage = bool(rules.fields & IN_STAGE_FIELDS)
        self.fields = set().union(*(j.fields for j in self.journeys)) if self.journeys else set()
        self.within = max((j.spec.entry.within for j in self.journeys),
                          default=pd.Timedelta(days=7))
        windows = [c.window for c in policy.caps] + [c.window for j in self.journeys
                                                     for c in j.spec.contact_policy.caps]
        self.cap_horizon = pd.Timedelta(max(windows, default=pd.Timedelta(days=7)))
        self.wants_orders = any(g.order for j in self.journeys for g in j.spec.goals)

    # --- lifecycle ---------------------------------------------------------------------------

    def _fit(self, f_of: dict[str, pd.DataFrame], as_of: date) -> tuple[bool, str | None]:
        s = self.state
        if not fitahead.due(self.config, s.purchases, as_of):
            return False, None
        f = f_of[self.config.time_unit]
        if shortfall(f) is not None:
            return False, None
        outcome = self.ahead.take(as_of) if self.ahead is not None else None
        if outcome is None:
            outcome = fitahead.attempt(self.config, f, as_of)
        if outcome is None or outcome.error is not None:
            return False, outcome.error if outcome else None
        s.purchases, s.spend = outcome.purchases, outcome.spend
        return True, None

    def _score(self, as_of: date, consent: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                  bool, str | None]:
        s, h = self.state, self.h
        end = np.datetime64(day_end(as_of), "ns")
        raw = self.agg.frame(end, s.stage, s.stage_since, self.in_stage)
        mine = consent.reindex(raw["customer_id"])
        raw["consent_email"] = mine["consent_email"].to_numpy()
        raw["consent_sms"] = mine["consent_sms"].to_numpy()
        cache: dict[str, pd.DataFrame] = {}

        def features(unit: str) -> pd.DataFrame:
            if unit not in cache:
                cache[unit] = features_from_aggregates(raw, as_of, unit,
                                                       rhythm=self.config.rhythm).frame
            return cache[unit]

        fitted, error = self._fit({self.config.time_unit: features(self.config.time_unit)},
                                  as_of)
        if error is not None:
            return pd.DataFrame(), pd.DataFrame(), False, error
        purchases, spend = s.purchases, s.spend
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
                            _RECORDED)
        pos = h.customers.index.get_indexer(view["customer_id"])
        s.stage[pos] = stage.to_numpy()
        s.stage_since[pos] = since.to_numpy("datetime64[ns]")
        view["stage"] = stage.to_numpy()
        view["stage_since"] = since.to_numpy("datetime64[ns]")
        view["as_of"] = pd.Timestamp(as_of)
        view["fit_id"] = None
        return view, moves, fitted, None

    # --- journeys ----------------------------------------------------------------------------

    def _customers(self, view: pd.DataFrame, now: pd.Timestamp,
                   consent: pd.DataFrame) -> pd.DataFrame:
        """The engine's customer rows: scores, the customers table's fields, consent and
        suppression at ``now``; loyalty fields empty (the replay does not replay the
        programme)."""
        h = self.h
        cols = [c for c in SCORE_COLUMNS if c in view.columns and c != "customer_id"]
        df = view[["customer_id", *cols]].set_index("customer_id")
        contact = self.contact.reindex(df.index)
        df = df.join(contact).join(consent).join(h.suppressed_at(now))
        for name in LOYALTY:
            if name in self.fields or (name == "tier" and any(
                    j.spec.entry.tier is not None for j in self.journeys)):
                df[name] = None
        return df

    def _snapshot(self, view: pd.DataFrame, now: pd.Timestamp,
                  consent: pd.DataFrame) -> Snapshot:
        s, h = self.state, self.h
        enr = _frame(s.enrollments)
        active = s.enrollments["status"] == "active"
        active_since = (pd.Timestamp(s.enrollments["entered_at"][active].min()) if active.any()
                        else pd.NaT)
        since = now - self.within
        if pd.notna(active_since):
            since = min(since, active_since)
        tr = s.transitions
        transitions = tr[(tr["transitioned_at"] > now - self.within)
                         & (tr["transitioned_at"] <= now)].reset_index(drop=True)
        s.transitions = tr[tr["transitioned_at"] > now - self.within - pd.Timedelta(days=1)]
        types = {j.spec.entry.event.type for j in self.journeys if j.spec.entry.event} | {
            g.event.type for j in self.journeys for g in j.spec.goals if g.event}
        engaged = [e for e in ENGAGEMENT_EVENTS if f"days_since_{e}" in self.fields]
        ev = h.events
        lookback = now - pd.Timedelta(days=ENGAGEMENT_LOOKBACK_DAYS)
        wanted = ((ev["event_type"].isin(sorted(types)) & (ev["occurred_at"] > since))
                  | (ev["event_type"].isin(engaged) & (ev["occurred_at"] > lookback)))
        events = ev[wanted & (ev["occurred_at"] <= now)].reset_index(drop=True)
        start = active_since if (pd.notna(active_since) and self.wants_orders) else now
        orders = h.orders_between(np.datetime64(start, "ns"), np.datetime64(now, "ns"))
        led = s.ledger
        s.ledger = led[led["at"] > now - self.cap_horizon].reset_index(drop=True)
        return Snapshot(customers=self._customers(view, now, consent), enrollments=enr,
                        transitions=transitions, events=events, orders=orders, ledger=s.ledger)

    def _apply(self, result: Plan) -> None:
        """Keep the plan's enrollments and messages as the database would (ids for new
        enrollments; messages sent at their scheduled time)."""
        s = self.state
        e = result.enrollments
        new = e[e["is_new"]]
        ids = pd.Series(np.arange(s.next_id, s.next_id + len(new), dtype=np.int64),
                        index=new["id"].to_numpy())
        s.next_id += len(new)
        new = new.assign(id=ids.to_numpy())
        old = e[~e["is_new"]]
        cols = s.enrollments
        if len(old):  # a changed enrollment is updated where it is (ids stay in order)
            pos = np.searchsorted(cols["id"], old["id"].to_numpy())
            for c, arr in cols.items():
                arr[pos] = _values(old[c], arr.dtype)
        if len(new):
            # a new enrollment replaces its customer's previous one in that journey (the
            # snapshot holds the latest per journey and customer), and goes last (its id is
            # the highest)
            drop = np.zeros(len(cols["id"]), dtype=bool)
            journey, customer = cols["journey"], cols["customer_id"]
            for name, ids in new.groupby("journey")["customer_id"]:
                mine = journey == name
                drop[mine] |= np.isin(customer[mine], ids.to_numpy())
            keep = ~drop
            s.enrollments = {c: np.concatenate([arr[keep], _values(new[c], arr.dtype)])
                             for c, arr in cols.items()}
        m = result.messages
        if len(m):
            live = m[m["status"].isin(LEDGER_STATUSES)]
            if len(live):
                sent = pd.DataFrame({"customer_id": live["customer_id"].astype("int64"),
                                     "channel": live["channel"], "tags": live["tags"],
                                     "at": pd.to_datetime(live["send_after"])
                                     .astype("datetime64[ns]")})
                s.ledger = pd.concat([s.ledger, sent], ignore_index=True)

    # --- the loop -----------------------------------------------------------------------------

    def step(self, as_of: date, now: datetime) -> Step:
        clock: dict[str, float] = {}
        mark = time.perf_counter()
        added = self.agg.advance(np.datetime64(day_end(as_of), "ns"))
        ts = pd.Timestamp(now)
        consent = self.h.consent_at(ts)  # channel consent as it stood at the run: read once
        view, moves, fitted, error = self._score(as_of, consent)
        clock["lifecycle"] = time.perf_counter() - mark
        if error is not None:  # the day's run would have failed: nothing else happens
            return Step(as_of, now, added, False, error, 0, moves, None, clock)
        if len(moves):
            self.state.transitions = pd.concat(
                [self.state.transitions, moves[["customer_id", "from_stage", "to_stage",
                                                "transitioned_at"]]], ignore_index=True)
        mark = time.perf_counter()
        result = None
        if self.journeys:
            snap = self._snapshot(view, ts, consent)
            result = plan(self.journeys, snap, ts, self.policy, self.tz)
            self._apply(result)
            result.messages["nominal_cost"] = coupon_costs(result.messages, view)
        clock["journeys"] = time.perf_counter() - mark
        return Step(as_of, now, added, fitted, None, len(view), moves, result, clock)

    def run(self, steps: Sequence[tuple[date, datetime]]) -> Iterator[Step]:
        """The steps in order; on a fresh replay of enough steps, with the fits computed
        ahead in a second process (``fitahead``), which changes no figure."""
        if (self.fits_ahead and self.agg.end is None and self.ahead is None
                and fitahead.FitsAhead.usable(len(steps))):
            self.ahead = fitahead.FitsAhead(self.h, self.config, [d for d, _ in steps])
        try:
            for as_of, now in steps:
                yield self.step(as_of, now)
        finally:
            if self.ahead is not None:
                self.ahead.close()
                self.ahead = None
