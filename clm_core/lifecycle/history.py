"""A store with little history: lifecycle stages before the CLV models can be fitted.

A new store has a handful of customers and almost no repeat buyers. BG/NBD and Gamma-Gamma
need more than that (``fitting.MIN_CUSTOMERS`` customers with orders, ``MIN_REPEAT_CUSTOMERS``
repeat buyers), but most stages do not need a model at all: ``prospect`` (no order), ``new``
(one purchase day) and one-time buyers going quiet, judged against the store's purchase rhythm.
So until a fit is possible the store is scored without one:

- the model fields (``MODEL_COLUMNS``: P(alive), expected purchases, expected spend, CLV) stay
  empty, and conditions on them match nobody (an empty value satisfies no comparison);
- the rhythm (``typical_gap_days``) is a default (``[lifecycle] default_gap_days``, 30) until
  there are enough repeat buyers for their median gap to mean something
  (``[lifecycle] rhythm_min_buyers``, 10): one repeat buyer with a one-day gap must not make
  every other customer churned after four days;
- the run says how many more customers and repeat buyers a fit needs (``Shortfall``).

The first scoring after the store crosses the thresholds fits the models as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clm_core.lifecycle.fitting import MIN_CUSTOMERS, MIN_REPEAT_CUSTOMERS

MODEL_COLUMNS = ("p_alive", "expected_purchases_30d", "expected_purchases_90d", "expected_aov",
                 "clv_12m")
DEFAULT_GAP_DAYS = 30.0


@dataclass(frozen=True)
class Rhythm:
    """How the store's purchase rhythm is measured."""

    default_days: float = DEFAULT_GAP_DAYS
    min_buyers: int = MIN_REPEAT_CUSTOMERS

    def of(self, span_days: pd.Series, repeats: pd.Series) -> float:
        """Median over repeat buyers of their mean days between purchase days; the default
        while fewer than ``min_buyers`` customers have bought twice."""
        has = (repeats > 0).to_numpy()
        if has.sum() < max(self.min_buyers, 1):
            return float(self.default_days)
        return float(np.median(span_days[has] / repeats[has]))


DEFAULT_RHYTHM = Rhythm()


@dataclass(frozen=True)
class Shortfall:
    """Why no model can be fitted yet, and how far the store is from it."""

    customers: int  # customers with at least one order
    repeat_buyers: int  # customers who bought on two or more days (with spend)

    @property
    def more_customers(self) -> int:
        return max(0, MIN_CUSTOMERS - self.customers)

    @property
    def more_repeat_buyers(self) -> int:
        return max(0, MIN_REPEAT_CUSTOMERS - self.repeat_buyers)

    def message(self) -> str:
        more = [f"{n:,} more {what}" for n, what in (
            (self.more_customers, "customers with orders"),
            (self.more_repeat_buyers, "repeat buyers")) if n]
        return (f"{self.customers:,} customers with orders, {self.repeat_buyers:,} repeat buyers: "
                f"not enough to fit the CLV models (need {MIN_CUSTOMERS} and "
                f"{MIN_REPEAT_CUSTOMERS}; {' and '.join(more)} to go)")


def shortfall(summary: pd.DataFrame) -> Shortfall | None:
    """What the store lacks for a fit (None when it has enough), from the features frame."""
    buyers = summary["T"].notna()
    repeat = buyers & (summary["frequency"] > 0) & (summary["monetary_value"] > 0)
    found = Shortfall(int(buyers.sum()), int(repeat.sum()))
    return found if found.more_customers or found.more_repeat_buyers else None


def without_model(index: pd.Index) -> pd.DataFrame:
    """The model fields of ``score_frame``, empty."""
    return pd.DataFrame({c: np.full(len(index), np.nan) for c in MODEL_COLUMNS}, index=index)
