"""Hit rate at k on each customer's next purchase, beside the most-popular baseline.

The held-out order: each customer's last purchase (customers with at least two orders that have
items). A hit: the held-out order contains at least one of the k SKUs recommended.

Point in time, no look-ahead: the held-out orders are split by time into ``periods`` groups of
equal size; a group's model is fitted on the orders placed strictly before the group's earliest
held-out order, leaving out every held-out order (including other customers' earlier ones). So
nothing placed at or after a held-out order, and no held-out order at all, shapes any
recommendation; the orders of the group's own stretch of time are left out too, which costs a
little signal and never leaks any. The customer's own history is every order of theirs before
the held-out one. Both the recommender and the baseline see exactly that: the
same counts, the same history, the same rule (never a SKU the customer owns).

The baseline: the k most popular SKUs (by orders containing them, in the same training orders)
not excluded for the customer by the same rule (``model.ItemModel.excluded``: not owned, unless
the store rebuys it; ``repeats=False``: not owned at all).

Statistics: each hit rate with its Wilson score interval; the difference (recommender minus
baseline, the same customers) with a paired bootstrap interval (customers resampled, percentile)
and McNemar's exact test on the discordant customers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from clm_core.measure.stats import wilson
from clm_core.recommend.model import (
    DECAY,
    ItemModel,
    counts_from_lines,
    popular_top,
    recency_weights,
)
from clm_core.recommend.recommender import CATALOGUE_LIMIT

RATE_METHOD = "Wilson score interval"
DIFF_METHOD = "paired bootstrap over customers (percentile, {n:,} replicates)"
TEST_METHOD = "McNemar exact test on the discordant customers"
BOOTSTRAP = 2000


@dataclass(frozen=True)
class HitRate:
    hits: int
    n: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, hits: int, n: int) -> HitRate:
        low, high = wilson(hits, n)
        return cls(hits, n, hits / n if n else math.nan, low, high)


@dataclass(frozen=True)
class Evaluation:
    """The hit rates of the recommender and the baseline on the same held-out orders."""

    k: int
    customers: int  # held-out orders, one per customer
    periods: int
    recommender: HitRate
    baseline: HitRate
    diff: float
    diff_low: float
    diff_high: float
    only_recommender: int  # customers the recommender hit and the baseline missed
    only_baseline: int
    p_value: float
    seconds: float
    rate_method: str = RATE_METHOD
    diff_method: str = DIFF_METHOD.format(n=BOOTSTRAP)
    test_method: str = TEST_METHOD

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        r, b = self.recommender, self.baseline
        return [
            f"held-out last orders: {self.customers:,} customers with 2+ orders "
            f"(models fitted point in time, {self.periods} periods)",
            f"hit rate at {self.k}: recommender {r.rate:.1%} [{r.low:.1%}, {r.high:.1%}]   "
            f"most popular {b.rate:.1%} [{b.low:.1%}, {b.high:.1%}]  ({self.rate_method})",
            f"difference: {self.diff:+.1%} [{self.diff_low:+.1%}, {self.diff_high:+.1%}] "
            f"({self.diff_method}); only the recommender hit {self.only_recommender:,}, only "
            f"the baseline {self.only_baseline:,}, McNemar p "
            + (f"= {self.p_value:.2g}" if self.p_value >= 1e-16 else "< 1e-16"),
        ]


def holdout_last_orders(lines: pd.DataFrame) -> pd.DataFrame:
    """(customer_id, order_id, ordered_at) of each customer's last order, for customers with
    at least two orders in ``lines``."""
    orders = (lines[["customer_id", "order_id", "ordered_at"]].drop_duplicates("order_id")
              .sort_values(["customer_id", "ordered_at", "order_id"], kind="stable"))
    size = orders.groupby("customer_id")["order_id"].transform("size")
    return orders[size >= 2].drop_duplicates("customer_id", keep="last").reset_index(drop=True)


def hits(recommended: np.ndarray, ids: Sequence[int], bought: pd.DataFrame) -> np.ndarray:
    """Per customer of ``ids``: one of their recommended SKUs (a row of ``recommended``, ""
    for none) is among the (customer_id, sku) rows of ``bought``."""
    k = recommended.shape[1]
    recs = pd.DataFrame({"customer_id": np.repeat(np.asarray(ids), k),
                         "sku": recommended.ravel().astype(str)})
    got = recs.merge(bought[["customer_id", "sku"]].drop_duplicates(), on=["customer_id", "sku"])
    return pd.Index(ids).isin(got["customer_id"].unique())


def as_skus(model: ItemModel, top: np.ndarray) -> np.ndarray:
    """Column indices (-1 for none) as SKUs ("" for none)."""
    return np.where(top >= 0, model.skus[np.maximum(top, 0)] if len(model.skus) else "", "")


# Another recommender to measure the same way: (training lines, customers, their history, k)
# -> SKUs, one row per customer, k columns, "" where there are fewer.
Method = Callable[[pd.DataFrame, list[int], pd.DataFrame, int], np.ndarray]


def evaluate(lines: pd.DataFrame, k: int = 3, periods: int = 12,
             limit: int = CATALOGUE_LIMIT, shrink: float | None = None, decay: float = DECAY,
             seed: int = 0, method: Method | None = None, repeats: bool = True) -> Evaluation:
    """Hit rate at ``k`` of the recommender (or ``method``) and the baseline on order ``lines``
    (customer_id, order_id, ordered_at, sku, product_name): purchases only, as
    ``recommender.read_lines`` gives them. ``repeats=False``: neither side offers what the
    customer owns, rebought or not."""
    started = time.perf_counter()
    lines = lines.assign(sku=lines["sku"].astype(str))
    held = holdout_last_orders(lines)
    rec = np.zeros(len(held), dtype=bool)
    base = np.zeros(len(held), dtype=bool)
    if len(held):
        groups = np.array_split(np.argsort(held["ordered_at"].to_numpy(), kind="stable"),
                                max(1, min(periods, len(held))))
        held_ids = set(held["order_id"])
        past = lines[~lines["order_id"].isin(held_ids)]  # histories; no held-out order
        target = lines[lines["order_id"].isin(held_ids)]
        for group in groups:
            who = held.iloc[group]
            train = past[past["ordered_at"] < who["ordered_at"].min()]
            model = ItemModel.from_counts(*counts_from_lines(train, limit), shrink=shrink)
            ids = who["customer_id"].tolist()
            history = past[past["customer_id"].isin(ids)]
            owned = history[["customer_id", "sku"]]
            bought = target[target["customer_id"].isin(ids)]
            recommended = (as_skus(model, model.top(ids, recency_weights(history, decay), k,
                                                    owned, repeats))
                           if method is None else method(train, ids, history, k))
            rec[group] = hits(recommended, ids, bought)
            base[group] = hits(as_skus(model, popular_top(model, ids, owned, k, repeats)), ids,
                               bought)
        periods = len(groups)
    return compare(rec, base, k, periods, time.perf_counter() - started, seed)


def compare(rec: np.ndarray, base: np.ndarray, k: int, periods: int, seconds: float,
            seed: int = 0) -> Evaluation:
    """The two hit rates, the paired difference with its bootstrap interval, McNemar's test."""
    n = len(rec)
    only_rec, only_base = int((rec & ~base).sum()), int((base & ~rec).sum())
    if n:
        # Resampling customers only moves the counts of the three kinds (recommender alone,
        # baseline alone, neither or both), so the bootstrap draws those counts directly.
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, [only_rec / n, only_base / n, 1 - (only_rec + only_base) / n],
                                BOOTSTRAP)
        diffs = (draws[:, 0] - draws[:, 1]) / n
        low, high = (float(x) for x in np.quantile(diffs, [0.025, 0.975]))
    else:
        low = high = math.nan
    discordant = only_rec + only_base
    p = float(sps.binomtest(only_rec, discordant, 0.5).pvalue) if discordant else 1.0
    return Evaluation(k=k, customers=n, periods=periods,
                      recommender=HitRate.of(int(rec.sum()), n),
                      baseline=HitRate.of(int(base.sum()), n),
                      diff=(only_rec - only_base) / n if n else math.nan, diff_low=low,
                      diff_high=high, only_recommender=only_rec, only_baseline=only_base,
                      p_value=p, seconds=seconds)
