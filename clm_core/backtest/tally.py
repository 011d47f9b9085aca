"""What a replay did, per journey and week: the marketer's table.

Weeks start on Monday and hold the steps whose as-of day falls in them, so every figure of a
week depends only on steps up to its end (a replay stopped earlier gives the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from clm_core.backtest.replay import Step

CONSENT_REASONS = ("no_consent", "suppressed")
# The columns of the weekly table, in order, with what each counts.
COLUMNS: dict[str, str] = {
    "entered": "customers who entered (treated and holdout)",
    "holdout": "of them, in the holdout (control) group",
    "email": "emails sent to treated customers",
    "sms": "SMS sent to treated customers",
    "deferred_quiet": "messages deferred by quiet hours (sent later)",
    "capped": "messages deferred or skipped by a frequency cap",
    "skipped_consent": "messages skipped for consent or suppression",
    "skipped_other": "messages skipped for another reason (no address, unschedulable)",
    "coupons": "coupons issued with sent messages",
    "coupon_cost": "their nominal cost (see docs/backtest.md)",
    "converted": "treated enrollments that reached a goal",
    "converted_holdout": "holdout enrollments that reached a goal",
    "multi_journey": "entrants who entered another journey in the same week",
}


def week_of(day: date) -> date:
    return day - timedelta(days=day.weekday())


@dataclass
class Tally:
    """Accumulates steps; ``weekly`` is the table, ``totals`` the per-journey sums."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    entries: list[pd.DataFrame] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    steps: int = 0
    fits: int = 0

    def add(self, step: Step) -> None:
        self.steps += 1
        self.fits += int(step.fitted)
        week = week_of(step.as_of)
        if step.fit_error is not None:
            self.failed.append({"as_of": step.as_of.isoformat(), "error": step.fit_error})
            return
        p = step.plan
        if p is None:
            return
        if len(p.entered):
            self.entries.append(p.entered.assign(week=week)[["journey", "customer_id", "week",
                                                              "is_control"]])
            for (journey, control), n in p.entered.groupby(["journey", "is_control"]).size() \
                    .items():
                self._add(journey, week, entered=int(n), holdout=int(n) if control else 0)
        m = p.messages
        if len(m):
            reason = m["reason"].fillna("")
            treated = m["status"].isin(("pending", "deferred"))
            frame = pd.DataFrame({
                "journey": m["journey"],
                "email": treated & (m["channel"] == "email"),
                "sms": treated & (m["channel"] == "sms"),
                "deferred_quiet": (m["status"] == "deferred") & (reason == "quiet_hours"),
                "capped": reason.str.startswith("frequency_cap"),
                "skipped_consent": (m["status"] == "skipped") & reason.isin(CONSENT_REASONS),
                "skipped_other": (m["status"] == "skipped") & ~reason.isin(
                    (*CONSENT_REASONS, "control_group")) & ~reason.str.startswith("frequency_cap"),
                "coupons": treated & m["coupon"].map(lambda c: isinstance(c, dict)),
                "coupon_cost": np.where(treated, m.get("nominal_cost", 0.0), 0.0),
            })
            for journey, part in frame.groupby("journey"):
                sums = part.drop(columns="journey").sum()
                self._add(str(journey), week, **{k: (round(float(v), 2) if k == "coupon_cost"
                                                     else int(v)) for k, v in sums.items()})
        e = p.enrollments
        # Converted now: a done enrollment can change again later (re-entry memory).
        done = e[(e["status"] == "converted") & (e["exited_at"] == p.now)]
        if len(done):
            for (journey, control), n in done.groupby(["journey", "is_control"]).size().items():
                self._add(str(journey), week, **({"converted_holdout": int(n)} if control
                                                 else {"converted": int(n)}))

    def _add(self, journey: str, week: date, **counts: float) -> None:
        self.rows.append({"journey": journey, "week": week, **counts})

    def weekly(self) -> pd.DataFrame:
        """One row per journey and week, every column of ``COLUMNS`` (weeks without activity
        left out)."""
        cols = ["journey", "week", *COLUMNS]
        if not self.rows:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame(self.rows).groupby(["journey", "week"], sort=True).sum(min_count=0)
        df = df.reindex(columns=list(COLUMNS), fill_value=0).fillna(0)
        multi = self._multi()
        if len(multi):
            df = df.drop(columns="multi_journey").join(multi, how="outer").fillna(0)
            df = df[list(COLUMNS)]
        ints = [c for c in COLUMNS if c != "coupon_cost"]
        df[ints] = df[ints].astype("int64")
        df["coupon_cost"] = df["coupon_cost"].astype(float).round(2)
        return df.reset_index()[cols]

    def _multi(self) -> pd.Series:
        if not self.entries:
            return pd.Series(dtype="int64", name="multi_journey")
        e = pd.concat(self.entries, ignore_index=True)
        per = e.groupby(["week", "customer_id"])["journey"].nunique()
        several = per[per > 1].reset_index()[["week", "customer_id"]]
        hit = e.merge(several, on=["week", "customer_id"])
        out = hit.groupby(["journey", "week"])["customer_id"].nunique()
        out.name = "multi_journey"
        return out

    def customers_in_several(self) -> pd.DataFrame:
        """Per week: customers who entered two or more journeys in it."""
        if not self.entries:
            return pd.DataFrame(columns=["week", "customers"])
        e = pd.concat(self.entries, ignore_index=True)
        per = e.groupby(["week", "customer_id"])["journey"].nunique()
        out = per[per > 1].groupby(level="week").size().rename("customers").reset_index()
        return out

    def totals(self) -> pd.DataFrame:
        w = self.weekly()
        if w.empty:
            return pd.DataFrame(columns=["journey", *COLUMNS])
        t = w.drop(columns="week").groupby("journey", sort=True).sum()
        t["coupon_cost"] = t["coupon_cost"].round(2)
        return t.reset_index()


def tally(steps: Iterable[Step]) -> Tally:
    out = Tally()
    for s in steps:
        out.add(s)
    return out
