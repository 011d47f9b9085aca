"""Customer scores from fitted parameters, in closed form over whole columns.

lifetimes' prediction methods work one model object at a time and its
``customer_lifetime_value`` is slow at a million customers; the same formulas (Fader, Hardie &
Lee 2005 for BG/NBD; Batislam et al. 2007 for the modified BG/NBD; Fader, Hardie & Lee 2005b
for Gamma-Gamma) are evaluated here on numpy arrays. Customers without a purchase get NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.special import hyp2f1

from clm_core.lifecycle.features import UNIT_DAYS

DAYS_PER_MONTH = 30.0  # lifetimes' convention for CLV months


def _arrays(summary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (summary["frequency"].to_numpy(float), summary["recency"].to_numpy(float),
            summary["T"].to_numpy(float))


def _death_odds(model: str, p: Mapping[str, float], x: np.ndarray, tx: np.ndarray,
                T: np.ndarray) -> np.ndarray:
    """The term D with P(alive) = 1 / (1 + D)."""
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    ratio = ((alpha + T) / (alpha + tx)) ** (r + x)
    if model == "mbgnbd":
        return a / (b + x) * ratio
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, a / (b + x - 1) * ratio, 0.0)


def p_alive(model: str, p: Mapping[str, float], summary: pd.DataFrame) -> np.ndarray:
    x, tx, T = _arrays(summary)
    return 1.0 / (1.0 + _death_odds(model, p, x, tx, T))


def expected_purchases(model: str, p: Mapping[str, float], summary: pd.DataFrame,
                       t: float) -> np.ndarray:
    """Conditional expected number of purchases in the next ``t`` time units."""
    x, tx, T = _arrays(summary)
    return _expected(model, p, x, tx, T, t, 1.0 + _death_odds(model, p, x, tx, T))


def _expected(model: str, p: Mapping[str, float], x: np.ndarray, tx: np.ndarray, T: np.ndarray,
              t: float, denominator: np.ndarray) -> np.ndarray:
    return _numerator(model, p, x, T, t) / denominator


def _numerator(model: str, p: Mapping[str, float], x: np.ndarray, T: np.ndarray,
               t: float) -> np.ndarray:
    """The part of the expected purchases that depends on (frequency, T) only: the costly
    part (``hyp2f1``), so it is computed once per distinct pair (``_distinct_pairs``)."""
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    z = t / (alpha + T + t)
    shrink = ((alpha + T) / (alpha + T + t)) ** (r + x)
    if model == "mbgnbd":
        return (a + b + x) / (a - 1) * (1 - shrink * hyp2f1(r + x, b + x + 1, a + b + x, z))
    return (a + b + x - 1) / (a - 1) * (1 - shrink * hyp2f1(r + x, b + x, a + b + x - 1, z))


def _distinct_pairs(x: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (x, T) pairs and, per input row, the index of its pair.

    Frequencies are small integers and T takes one value per first-purchase day, so a million
    customers share a few tens of thousands of pairs: ``hyp2f1`` on the pairs instead of the
    customers is most of the scoring time saved, with the same values."""
    if len(x) == 0:
        return x, T, np.zeros(0, dtype=np.intp)
    order = np.lexsort((T, x))
    xs, ts = x[order], T[order]
    first = np.empty(len(x), dtype=bool)
    first[0] = True
    first[1:] = (xs[1:] != xs[:-1]) | (ts[1:] != ts[:-1])
    inverse = np.empty(len(x), dtype=np.intp)
    inverse[order] = np.cumsum(first) - 1
    return xs[first], ts[first], inverse


def expected_spend(
    p: Mapping[str, float], frequency: np.ndarray, monetary: np.ndarray
) -> np.ndarray:
    """Gamma-Gamma conditional expected spend per purchase (population mean without repeats)."""
    pp, q, v = p["p"], p["q"], p["v"]
    population = pp * v / (q - 1)
    x = np.nan_to_num(frequency, nan=0.0)
    m = np.nan_to_num(monetary, nan=0.0)
    weight = pp * x / (pp * x + q - 1)
    out = (1 - weight) * population + weight * m
    return np.where(np.isnan(frequency), np.nan, out)


def score_frame(summary: pd.DataFrame, model: str, purchase_params: Mapping[str, float],
                spend_params: Mapping[str, float], time_unit: str,
                annual_discount_rate: float = 0.10, months: int = 12) -> pd.DataFrame:
    """P(alive), expected purchases in 30 and 90 days, expected spend and discounted CLV.

    CLV sums, month by month, the expected purchases in that month times the expected spend,
    discounted at the monthly equivalent of ``annual_discount_rate``.
    """
    unit = UNIT_DAYS[time_unit]
    x, tx, T = _arrays(summary)
    has = ~np.isnan(x)
    xs, txs, Ts = x[has], tx[has], T[has]
    denom = 1.0 + _death_odds(model, purchase_params, xs, txs, Ts)
    month = DAYS_PER_MONTH / unit
    cumulative = np.zeros((months + 1, len(xs)))
    px, pT, pair = _distinct_pairs(xs, Ts)
    with np.errstate(all="ignore"):
        for i in range(1, months + 1):
            cumulative[i] = _numerator(model, purchase_params, px, pT, i * month)[pair] / denom
    aov = expected_spend(spend_params, x, summary["monetary_value"].to_numpy(float))
    monthly_rate = (1.0 + annual_discount_rate) ** (1.0 / 12.0) - 1.0
    discount = (1.0 + monthly_rate) ** -np.arange(1, months + 1)
    clv = discount @ np.diff(cumulative, axis=0) * aov[has]

    def full(values: np.ndarray) -> np.ndarray:
        out = np.full(len(x), np.nan)
        out[has] = values
        return out

    return pd.DataFrame({
        "p_alive": full(1.0 / denom),
        "expected_purchases_30d": full(cumulative[1]),
        "expected_purchases_90d": full(cumulative[min(3, months)]),
        "expected_aov": aov,
        "clv_12m": full(clv),
    }, index=summary.index)


FREQUENCY_BANDS = ["0", "1", "2", "3", "4", "5", "6", "7+"]


def calibration_holdout_table(summary: pd.DataFrame, holdout: pd.Series, model: str,
                              params: Mapping[str, float], duration: float) -> pd.DataFrame:
    """Actual vs predicted mean repeat purchases in the holdout, by calibration frequency.

    ``summary`` is the calibration summary indexed like ``holdout`` (customer ids); ``duration``
    is the holdout length in the summary's time unit. The last row, ``all``, is the total.
    """
    s = summary[summary["T"].notna()]
    actual = holdout.reindex(s.index).fillna(0.0).to_numpy()
    predicted = expected_purchases(model, params, s, duration)
    band = np.minimum(s["frequency"].to_numpy().astype(int), 7)
    df = pd.DataFrame({"band": np.asarray(FREQUENCY_BANDS)[band], "actual": actual,
                       "predicted": predicted})
    table = (df.groupby("band").agg(customers=("actual", "size"), actual=("actual", "mean"),
                                    predicted=("predicted", "mean"))
             .reindex([b for b in FREQUENCY_BANDS if b in set(df["band"])]))
    total = pd.DataFrame({"customers": [len(df)], "actual": [df["actual"].sum()],
                          "predicted": [df["predicted"].sum()]}, index=["all"])
    return pd.concat([table, total]).rename_axis("calibration_frequency")
