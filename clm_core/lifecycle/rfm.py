"""RFM quintile scores and the named recency x frequency segments.

Scores run 1 (worst) to 5 (best) over customers with at least one purchase. Ties share a score
(the lower one), so all one-time buyers get F = 1 however many there are, and the same data
always gets the same scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The widely used map of (R, F) scores to ten segments; every one of the 25 cells is named.
SEGMENT_CELLS: dict[str, tuple[str, str]] = {  # segment: (R scores, F scores)
    "hibernating": ("12", "12"),
    "at_risk": ("12", "34"),
    "cant_lose_them": ("12", "5"),
    "about_to_sleep": ("3", "12"),
    "need_attention": ("3", "3"),
    "loyal_customers": ("34", "45"),
    "promising": ("4", "1"),
    "potential_loyalists": ("45", "23"),
    "new_customers": ("5", "1"),
    "champions": ("5", "45"),
}
SEGMENTS = tuple(SEGMENT_CELLS)


def _segment_grid() -> np.ndarray:
    grid = np.empty((6, 6), dtype=object)
    for name, (rs, fs) in SEGMENT_CELLS.items():
        for r in rs:
            for f in fs:
                assert grid[int(r), int(f)] is None, f"cell {r}{f} named twice"
                grid[int(r), int(f)] = name
    return grid


SEGMENT_GRID = _segment_grid()


def quintile_score(values: pd.Series, higher_is_better: bool = True,
                   population: np.ndarray | None = None) -> pd.Series:
    """1..5 by rank; ties take the lowest rank of their group; NaN stays NaN.

    ``population``: the sorted values of every customer (see ``rfm_population``), when
    ``values`` are one chunk of them; the ranks are then the same as over the whole store.
    """
    v = values if higher_is_better else -values
    if population is None:
        rank = v.rank(method="min", na_option="keep")
        n = int(v.notna().sum())
    else:
        # The lowest rank of a tie group is one more than the count of smaller values.
        rank = pd.Series(np.searchsorted(population, v.to_numpy(float), side="left") + 1.0,
                         index=v.index).where(v.notna())
        n = len(population)
    # on arrays: the per-operation overhead of a Series, at every daily run, was most of it
    r = rank.to_numpy(dtype=float)
    missing = np.isnan(r)
    score = np.clip(1 + np.floor(5 * (np.where(missing, 1.0, r) - 1) / max(n, 1)), 1, 5)
    return pd.Series(pd.arrays.IntegerArray(score.astype(np.int16), missing), index=rank.index,
                     name=rank.name)


def _rfm_inputs(features: pd.DataFrame) -> dict[str, pd.Series]:
    """Oriented so that higher is better: recency counts against."""
    buyers = features["n_orders"] > 0
    return {"r_score": -features["days_since_last_order"].where(buyers),
            "f_score": features["purchase_days"].where(buyers).astype("float64"),
            "m_score": features["total_spend"].where(buyers)}


def rfm_population(features: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every buyer's sorted R, F and M inputs: what chunks rank against."""
    return {k: np.sort(v.dropna().to_numpy(float)) for k, v in _rfm_inputs(features).items()}


def rfm(features: pd.DataFrame, population: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """r_score, f_score, m_score and rfm_segment for customers with purchases."""
    out = pd.DataFrame({k: quintile_score(v, population=population[k] if population else None)
                        for k, v in _rfm_inputs(features).items()}, index=features.index)
    r = out["r_score"].fillna(0).to_numpy(int)
    f = out["f_score"].fillna(0).to_numpy(int)
    out["rfm_segment"] = pd.Series(SEGMENT_GRID[r, f], index=features.index, dtype=object)
    return out
