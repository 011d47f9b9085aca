"""A replay: the daily lifecycle run, step by step on a simulated clock, in memory.

Each step does what the scheduled ``lifecycle`` flow does, with the same functions:

1. the scoring half (``scoring``): the purchase aggregates advance by the day's orders, the
   point-in-time fit where one is due, scores, stages and transitions; on a long replay it runs
   a few steps ahead in a second process (``ahead``);
2. journey planning (``journeys.engine.plan``) at the step's ``now`` on a snapshot built from
   the replay's own enrollments, messages, transitions and the history up to ``now``;
3. a simulated dispatch: every message the plan lets through is recorded as sent at its
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

from clm_core.backtest import ahead
from clm_core.backtest.history import History
from clm_core.backtest.scoring import Scored, Scoring
from clm_core.journeys import clock
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
from clm_core.lifecycle.fitting import ModelFit
from clm_core.lifecycle.pipeline import LifecycleConfig
from clm_core.lifecycle.stages import StageRules
from clm_core.simclock import simulated_steps


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
    """What a replay's journey half remembers between steps (what the database would hold;
    the scoring half keeps its own, ``Scoring``)."""

    # the latest enrollment per (journey, customer), a numpy array per column, in id order
    enrollments: dict[str, np.ndarray]
    transitions: pd.DataFrame
    ledger: pd.DataFrame  # customer_id, channel, tags, at
    next_id: int = 1
    # each enrollment's journey as a code into ``names`` (kept beside the names so that the
    # engine gets them as a categorical and need not factorise every name at every step)
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    names: dict[str, int] = field(default_factory=dict)


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


def _frame(state: ReplayState) -> pd.DataFrame:
    """The state's enrollments as the engine reads them (object columns stay objects: a
    DataFrame built from them is not inferred into strings again at every step; the journey
    is a categorical of the state's codes)."""
    cols = {c: pd.Series(a, dtype=object, copy=False) if a.dtype == object else a
            for c, a in state.enrollments.items()}
    cols["journey"] = pd.Categorical.from_codes(state.codes, categories=list(state.names))
    return pd.DataFrame(cols, copy=False)


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
                 default_tz: str = "UTC", scoring_ahead: bool = True):
        self.h, self.config, self.rules = history, config, rules
        self.scoring_ahead = scoring_ahead
        self.scoring = Scoring(history, config, rules)
        self.ahead: ahead.ScoringAhead | None = None
        self.done: list[tuple[date, datetime]] = []  # the steps scored so far
        # the fits in use (the scoring half's, wherever it runs)
        self.purchases: ModelFit | None = None
        self.spend: ModelFit | None = None
        self.journeys = [j for j in journeys if j.spec.status != "draft"]
        self.policy, self.tz = policy, default_tz
        # the customers table's fields the engine reads (consent comes from the ledger)
        self.contact = history.customers.drop(
            columns=["signed_up_at", "consent_email", "consent_sms"], errors="ignore")
        # their zones, cleaned once (the engine would clean them again at every step)
        self.contact["tz"] = clock.frame_zones(self.contact, default_tz)
        empty = Snapshot(pd.DataFrame())  # the engine's empty frames, with their dtypes
        self.state = ReplayState(enrollments=_columns(empty_enrollments()),
                                 transitions=empty.transitions, ledger=empty.ledger)
        self.fields = set().union(*(j.fields for j in self.journeys)) if self.journeys else set()
        self.within = max((j.spec.entry.within for j in self.journeys),
                          default=pd.Timedelta(days=7))
        windows = [c.window for c in policy.caps] + [c.window for j in self.journeys
                                                     for c in j.spec.contact_policy.caps]
        self.cap_horizon = pd.Timedelta(max(windows, default=pd.Timedelta(days=7)))
        self.wants_orders = any(g.order for j in self.journeys for g in j.spec.goals)

    # --- scoring ------------------------------------------------------------------------------

    def _scored(self, as_of: date, now: datetime) -> Scored:
        """The step's scoring: from the second process when it runs, else inline (after
        replaying the steps it had scored, when it stopped part-way)."""
        got = self.ahead.take(as_of) if self.ahead is not None else None
        if got is None:
            if self.ahead is not None:  # it stopped: score inline from here on
                self.ahead = None
                self.scoring = Scoring(self.h, self.config, self.rules)
                ahead.catch_up(self.scoring, self.done)
            got = self.scoring.step(as_of, now)
        self.done.append((as_of, now))
        if got.fitted:
            self.purchases, self.spend = got.purchases, got.spend
        return got

    def _customers(self, view: pd.DataFrame, now: pd.Timestamp,
                   consent: pd.DataFrame) -> pd.DataFrame:
        """The engine's customer rows: scores, the customers table's fields, consent and
        suppression at ``now``; loyalty fields empty (the replay does not replay the
        programme)."""
        h = self.h
        df = view.set_index("customer_id")
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
        enr = _frame(s)
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
            # (matched on (journey code, customer) integer keys: comparing every row's journey
            # name cost more than the rest of recording the plan)
            codes = np.asarray([s.names.setdefault(str(n), len(s.names))
                                for n in new["journey"]], dtype=np.int64)
            customer = cols["customer_id"].astype(np.int64)
            added = new["customer_id"].to_numpy("int64")
            span = int(max(customer.max(initial=0), added.max(initial=0))) + 1
            keep = ~np.isin(s.codes * span + customer, codes * span + added)
            s.enrollments = {c: np.concatenate([arr[keep], _values(new[c], arr.dtype)])
                             for c, arr in cols.items()}
            s.codes = np.concatenate([s.codes[keep], codes])
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
        scored = self._scored(as_of, now)
        view, moves = scored.view, scored.moves
        clock["lifecycle"] = time.perf_counter() - mark
        if scored.error is not None:  # the day's run would have failed: nothing else happens
            return Step(as_of, now, scored.orders_added, False, scored.error, 0, moves, None,
                        clock)
        if len(moves):
            self.state.transitions = pd.concat([self.state.transitions, moves],
                                               ignore_index=True)
        mark = time.perf_counter()
        result = None
        if self.journeys:
            ts = pd.Timestamp(now)
            consent = self.h.consent_at(ts)  # channel consent as it stood at the run
            snap = self._snapshot(view, ts, consent)
            result = plan(self.journeys, snap, ts, self.policy, self.tz)
            self._apply(result)
            result.messages["nominal_cost"] = coupon_costs(result.messages, view)
        clock["journeys"] = time.perf_counter() - mark
        return Step(as_of, now, scored.orders_added, scored.fitted, None, len(view), moves,
                    result, clock)

    def run(self, steps: Sequence[tuple[date, datetime]]) -> Iterator[Step]:
        """The steps in order; on a fresh replay of enough steps, with the scoring half a few
        steps ahead in a second process (``ahead``), which changes no figure."""
        if (self.scoring_ahead and not self.scoring.started and self.ahead is None
                and ahead.usable(len(steps))):
            self.ahead = ahead.ScoringAhead(self.scoring, steps)
        try:
            for as_of, now in steps:
                yield self.step(as_of, now)
        finally:
            if self.ahead is not None:
                self.ahead.close()
                self.ahead = None
