"""Per-customer purchase aggregates kept in memory and advanced by each day's orders.

A replay step adds only the orders since the previous step (a ``searchsorted`` and a group-by
over those orders), so a simulated day costs what that day changed, not the whole history. The
aggregates are exactly the ones the features SQL computes (``clm_core.lifecycle.features``:
orders, purchase days, first and last order, spend, the first purchase day's spend), and
``features_from_aggregates`` turns them into features for both paths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clm_core.backtest.history import History

NAT = np.datetime64("NaT", "ns")
_SHIFT = np.int64(1) << np.int64(34)  # seconds since the first order fit in 34 bits (500 years)


class RunningAggregates:
    """Aggregates of the purchases before ``end`` (exclusive), advanced in time order."""

    def __init__(self, history: History):
        self.h = history
        n = len(history.customers)
        self.n_orders = np.zeros(n, np.int64)
        self.purchase_days = np.zeros(n, np.int64)
        self.total = np.zeros(n, np.float64)
        self.first_day_spend = np.zeros(n, np.float64)
        self.first_at = np.full(n, NAT)
        self.last_at = np.full(n, NAT)
        self.last_day = np.full(n, np.iinfo(np.int64).min)
        self.by_time = np.argsort(history.order_at, kind="stable")
        self.at_by_time = history.order_at[self.by_time]
        self.cursor = 0
        self.end: np.datetime64 | None = None
        # (customer, seconds) keys in the history's (customer, time) order: the first order
        # of a customer after a moment is one searchsorted.
        self.origin = history.order_at.min() if len(history.order_at) else np.datetime64(0, "ns")
        secs = ((history.order_at - self.origin) // np.timedelta64(1, "s")).astype(np.int64)
        self.keys = history.order_customer * _SHIFT + secs

    def advance(self, end: np.datetime64) -> int:
        """Add the purchases with ordered_at < ``end``; returns how many were added."""
        if self.end is not None and end < self.end:
            raise ValueError(f"a replay only moves forward (at {self.end}, asked for {end})")
        self.end = end
        stop = int(np.searchsorted(self.at_by_time, end, side="left"))
        idx = self.by_time[self.cursor:stop]
        self.cursor = stop
        if not len(idx):
            return 0
        h = self.h
        cust = h.order_customer[idx]
        at = h.order_at[idx]
        day = at.astype("datetime64[D]").astype(np.int64)
        g = (pd.DataFrame({"c": cust, "d": day, "at": at, "amt": h.order_amount[idx]})
             .groupby(["c", "d"], sort=True)
             .agg(n=("at", "size"), spend=("amt", "sum"), lo=("at", "min"), hi=("at", "max"))
             .reset_index())
        c = g["c"].to_numpy()
        d = g["d"].to_numpy()
        spend = g["spend"].to_numpy()
        # A (customer, day) group is a new purchase day unless the day was already counted
        # (only when a step ends inside a day).
        new_day = d != self.last_day[c]
        first_day_of = np.where(np.isnat(self.first_at[c]), -1, self.first_at[c]
                                .astype("datetime64[D]").astype(np.int64))
        per = pd.DataFrame({"c": c, "n": g["n"].to_numpy(), "spend": spend,
                            "days": new_day.astype(np.int64), "lo": g["lo"].to_numpy(),
                            "hi": g["hi"].to_numpy(), "d": d,
                            "same_first": np.where(d == first_day_of, spend, 0.0)})
        agg = per.groupby("c", sort=True).agg(n=("n", "sum"), spend=("spend", "sum"),
                                              days=("days", "sum"), lo=("lo", "min"),
                                              hi=("hi", "max"), d=("d", "max"),
                                              same_first=("same_first", "sum"),
                                              first_spend=("spend", "first"))
        ci = agg.index.to_numpy()
        fresh = np.isnat(self.first_at[ci])
        self.n_orders[ci] += agg["n"].to_numpy()
        self.total[ci] += agg["spend"].to_numpy()
        self.purchase_days[ci] += agg["days"].to_numpy()
        self.first_day_spend[ci] += np.where(fresh, agg["first_spend"].to_numpy(),
                                             agg["same_first"].to_numpy())
        lo = agg["lo"].to_numpy("datetime64[ns]")
        hi = agg["hi"].to_numpy("datetime64[ns]")
        self.first_at[ci] = np.where(fresh, lo, self.first_at[ci])
        self.last_at[ci] = np.where(np.isnat(self.last_at[ci]) | (hi > self.last_at[ci]), hi,
                                    self.last_at[ci])
        self.last_day[ci] = np.maximum(self.last_day[ci], agg["d"].to_numpy())
        return len(idx)

    def first_order_after(self, since: np.ndarray) -> np.ndarray:
        """Per customer, the first purchase strictly after ``since`` and before the current end
        (NaT where none or ``since`` is NaT)."""
        h = self.h
        n = len(since)
        out = np.full(n, NAT)
        ok = ~np.isnat(since)
        if not ok.any() or not len(self.keys) or self.end is None:
            return out
        pos = np.flatnonzero(ok)
        secs = ((since[ok] - self.origin) // np.timedelta64(1, "s")).astype(np.int64)
        secs = np.maximum(secs, -1)  # before the first order: any order counts
        i = np.searchsorted(self.keys, pos * _SHIFT + secs, side="right")
        inside = i < len(self.keys)
        j = np.where(inside, i, 0)
        hit = inside & (h.order_customer[j] == pos) & (h.order_at[j] < self.end) \
            & (h.order_at[j] > since[ok])
        out[pos[hit]] = h.order_at[j[hit]]
        return out

    def frame(self, end: np.datetime64, stage: np.ndarray, stage_since: np.ndarray,
              in_stage: bool) -> pd.DataFrame:
        """What the features SQL returns for the customers that existed before ``end``: with
        orders, or signed up before it (or never said when)."""
        h = self.h
        c = h.customers
        has = self.n_orders > 0
        signed = c["signed_up_at"].to_numpy("datetime64[ns]")
        keep = has | np.isnat(signed) | (signed < end)

        def agg(values: np.ndarray) -> np.ndarray:
            return np.where(has, values, np.nan)[keep]

        raw = pd.DataFrame({
            "customer_id": c.index.to_numpy()[keep],
            "signed_up_at": signed[keep],
            "n_orders": agg(self.n_orders.astype(float)),
            "purchase_days": agg(self.purchase_days.astype(float)),
            "first_order_at": self.first_at[keep],
            "last_order_at": self.last_at[keep],
            "total_spend": agg(self.total),
            "first_day_spend": agg(np.where(self.purchase_days > 1, self.first_day_spend,
                                            self.total)),
            "previous_stage": stage[keep],
            "previous_stage_since": stage_since[keep],
        })
        for col in ("country", "locale", "timezone", "consent_email", "consent_sms"):
            if col in c:
                raw[col] = c[col].to_numpy()[keep]
        if in_stage:
            raw["first_order_in_stage_at"] = self.first_order_after(stage_since)[keep]
        return raw
