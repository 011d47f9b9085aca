"""The truth of a simulated store, in the lift report's own estimand, written apart.

``clm lift`` compares, per journey, the enrollments whose conversion window is complete:
conversion rate (goal reached inside ``(entered_at, entered_at + conversion_window]``) and
revenue per entered customer in that window, treated minus control. The simulation knows both
potential outcomes of every such enrollment (``clm_core.simulate.store``: world 0 is what
happened, the journey's flipped world is the other outcome, from the same random numbers):

- ``Y(1)``, ``R(1)``: converted and revenue had the enrollment's messages been received (what
  happened for the treated; the flipped world for the control, where the control's skipped
  messages were received by those the store could have reached);
- ``Y(0)``, ``R(0)``: the same without them.

The true effect of the journey is the average over its enrollments of ``Y(1) - Y(0)`` (points
of conversion) and ``R(1) - R(0)`` (revenue per entered customer): the sample average treatment
effect of being assigned to treatment rather than the holdout, which is what the difference
between the treated and control groups estimates. Treated customers whose message was not sent
(no consent, suppressed) count with an effect of zero, as they do in the report.

Conversion is exact for journeys whose goals are all order goals (or that have none: any
purchase converts); for other goals (stage, event, condition) only the order goals are counted
and the truth says so (``conversion_exact``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.measure.attribution import DEFAULT_WINDOW, JourneyTerms, journey_terms
from clm_core.simulate.store import Simulation

SHIFT = 2 ** 40  # seconds fit below this; customers above it, in one sortable int64 key


@dataclass(frozen=True)
class JourneyTruth:
    journey: str
    enrollments: int  # with a complete window at the measuring moment
    treated: int
    control: int
    conversion_effect: float  # mean of Y(1) - Y(0), as a proportion
    revenue_effect: float  # mean of R(1) - R(0), per entered customer
    conversion_exact: bool
    effects: list[dict[str, Any]] = field(default_factory=list)


class WorldOrders:
    """One world's purchases, searchable by (customer, time window)."""

    def __init__(self, sim: Simulation, world: int):
        days = sim.orders[world]
        cust = np.concatenate([o.customer for o in days]) if days else np.array([], np.int64)
        at = np.concatenate([o.at for o in days]) if days else np.array([])
        value = np.concatenate([o.value for o in days]) if days else np.array([])
        sec = ((sim.moment(at) - np.datetime64(sim.origin, "s")).astype(np.int64)
               if len(at) else np.array([], np.int64))
        key = cust.astype(np.int64) * SHIFT + sec
        order = np.argsort(key, kind="stable")
        self.key, self.value = key[order], value[order]
        self.revenue = np.concatenate([[0.0], np.cumsum(self.value)])

    def window(self, cust: np.ndarray, start: np.ndarray, end: np.ndarray,
               min_amount: float) -> tuple[np.ndarray, np.ndarray]:
        """(converted, revenue) per row: orders in ``(start, end]`` (seconds since origin)."""
        lo = np.searchsorted(self.key, cust * SHIFT + start, "right")
        hi = np.searchsorted(self.key, cust * SHIFT + end, "right")
        big = np.concatenate([[0], np.cumsum(self.value >= min_amount)])
        return (big[hi] - big[lo]) > 0, self.revenue[hi] - self.revenue[lo]


def _goal_terms(terms: JourneyTerms) -> tuple[float, bool]:
    """(min_amount that converts, exact): order goals only."""
    if not terms.goals:
        return 0.0, True
    orders = [g.order.min_amount for g in terms.goals if g.order is not None]
    exact = len(orders) == len(terms.goals)
    return (float(min(orders)) if orders else np.inf), exact


def enrollments_truth(sim: Simulation, engine: Engine, now: datetime | None = None
                      ) -> pd.DataFrame:
    """Per enrollment of a journey with an effect: both potential outcomes (module docstring),
    whether its window is complete at ``now`` (default: the simulation's end)."""
    now = now or sim.end
    e = t.journey_enrollments
    with engine.connect() as conn:
        terms = journey_terms(conn)
        rows = pd.DataFrame(conn.execute(
            sa.select(e.c.id, e.c.journey, e.c.journey_version, t.customers.c.external_id,
                      e.c.is_control, e.c.entered_at)
            .join(t.customers, t.customers.c.id == e.c.customer_id)
            .where(e.c.journey.in_(sim.flips), e.c.entered_at <= now)).all(),
            columns=["enrollment_id", "journey", "journey_version", "customer", "is_control",
                     "entered_at"])
    if rows.empty:
        return rows
    index = pd.Series(np.arange(len(sim.external)), index=sim.external)
    rows["is_control"] = rows["is_control"].astype(bool)
    cust = index.reindex(rows["customer"]).to_numpy(np.int64)
    origin = pd.Timestamp(sim.origin)
    out = []
    worlds = {0: WorldOrders(sim, 0)}
    for k, name in enumerate(sim.flips, start=1):
        mine = (rows["journey"] == name).to_numpy()
        if not mine.any():
            continue
        worlds[k] = WorldOrders(sim, k)
        part = rows[mine].copy()
        key = [(name, int(v)) for v in part["journey_version"]]
        spec = [terms.get(x, JourneyTerms(DEFAULT_WINDOW, ())) for x in key]
        window = pd.to_timedelta([s.window for s in spec])
        goal = [_goal_terms(s) for s in spec]
        entered = pd.to_datetime(part["entered_at"])
        ends = entered + window
        start_s = ((entered - origin).dt.total_seconds()).to_numpy(np.int64)
        end_s = ((ends - origin).dt.total_seconds()).to_numpy(np.int64)
        min_amount = np.array([g[0] for g in goal])
        y = {}
        r = {}
        for w in (0, k):
            conv = np.zeros(len(part), bool)
            rev = np.zeros(len(part))
            for m in np.unique(min_amount):
                sel = min_amount == m
                c_, r_ = worlds[w].window(cust[mine][sel], start_s[sel], end_s[sel], m)
                conv[sel], rev[sel] = c_, r_
            y[w], r[w] = conv, rev
        ctl = part["is_control"].to_numpy(bool)
        part["window_end"] = ends.to_numpy()
        part["window_complete"] = (ends <= pd.Timestamp(now)).to_numpy()
        part["conversion_exact"] = [g[1] for g in goal]
        part["y1"] = np.where(ctl, y[k], y[0])
        part["y0"] = np.where(ctl, y[0], y[k])
        part["r1"] = np.where(ctl, r[k], r[0])
        part["r0"] = np.where(ctl, r[0], r[k])
        out.append(part)
    return pd.concat(out, ignore_index=True) if out else rows.iloc[:0]


def journey_truths(sim: Simulation, enrollments: pd.DataFrame) -> list[JourneyTruth]:
    """The true effect of every journey with an effect, over its complete windows."""
    out = []
    for name in sim.flips:
        part = (enrollments[(enrollments["journey"] == name) & enrollments["window_complete"]]
                if len(enrollments) else enrollments)
        n = len(part)
        planted = [e.model_dump(exclude_none=True) for e in sim.effects.items
                   if e.journey == name or e.template in sim.templates.get(name, set())]
        out.append(JourneyTruth(
            name, n, int((~part["is_control"]).sum()) if n else 0,
            int(part["is_control"].sum()) if n else 0,
            float((part["y1"].astype(int) - part["y0"].astype(int)).mean()) if n else float("nan"),
            float((part["r1"] - part["r0"]).mean()) if n else float("nan"),
            bool(part["conversion_exact"].all()) if n else True, planted))
    return out


def write_truth(sim: Simulation, directory: Path, truths: list[JourneyTruth],
                enrollments: pd.DataFrame) -> Path:
    """``truth-<seed>.json`` (the summary) beside ``truth-<seed>-*.csv`` (enrollments with both
    outcomes, exposures, the other worlds' purchases of exposed customers, the catalogue and
    each customer's segment) in ``directory``, never in the store's database. Returns the
    JSON's path."""
    directory.mkdir(parents=True, exist_ok=True)
    seed = sim.config.seed
    stem = directory / f"truth-{seed}"
    exposures = sim.exposures.frame()
    exposures["customer"] = sim.external[exposures["customer"].to_numpy(int)] \
        if len(exposures) else exposures["customer"]
    exposures.to_csv(f"{stem}-exposures.csv", index=False)
    enrollments.to_csv(f"{stem}-enrollments.csv", index=False)
    exposed = set(exposures["customer"]) if len(exposures) else set()
    frames = []
    for w in range(1, 1 + len(sim.flips)):
        days = sim.orders[w]
        if not days:
            continue
        cust = np.concatenate([o.customer for o in days])
        keep = np.isin(sim.external[cust], list(exposed))
        frames.append(pd.DataFrame({
            "world": f"flip:{sim.flips[w - 1]}", "customer": sim.external[cust[keep]],
            "ordered_at": sim.moment(np.concatenate([o.at for o in days])[keep]),
            "amount": np.concatenate([o.value for o in days])[keep]}))
    (pd.concat(frames) if frames else pd.DataFrame(columns=["world", "customer", "ordered_at",
                                                            "amount"])
     ).to_csv(f"{stem}-counterfactual-orders.csv", index=False)
    catalog = sim.catalog.frame()
    catalog["complement_sku"] = sim.catalog.skus[sim.catalog.complement]
    catalog.to_csv(f"{stem}-catalog.csv", index=False)
    pd.DataFrame({"customer": sim.external, "segment": sim.segments.to_numpy()}).to_csv(
        f"{stem}-segments.csv", index=False)
    c = sim.config
    summary = {
        "seed": seed, "customers": c.customers, "days": c.days, "every_days": c.every_days,
        "history_days": c.history_days, "start": c.start.isoformat(),
        "catalog": asdict(c.catalog),
        "measured_at": sim.end.isoformat(), "params": asdict(c.params),
        "effects_file": sim.effects.file, "effects": sim.effects.as_dicts(),
        "worlds": ["actual"] + [f"flip:{j}" for j in sim.flips],
        "estimand": "per journey, over enrollments with a complete conversion window: mean of "
                    "Y(1) - Y(0) (conversion) and R(1) - R(0) (revenue per entered customer); "
                    "see clm_core/simulate/truth.py",
        "journeys": [asdict(x) for x in truths],
        "exposures": {"received": int(exposures["received"].sum()) if len(exposures) else 0,
                      "control_would_be": int((~exposures["received"]).sum())
                      if len(exposures) else 0},
        "coupons_redeemed": sum(1 for held in sim.coupons.values() for h in held if h.used_by),
        "unsubscribes": sim.unsubscribes,
    }
    path = Path(f"{stem}.json")
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return path
