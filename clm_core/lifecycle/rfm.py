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


def quintile_score(values: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """1..5 by rank; ties take the lowest rank of their group; NaN stays NaN."""
    v = values if higher_is_better else -values
    rank = v.rank(method="min", na_option="keep")
    n = int(v.notna().sum())
    score = 1 + np.floor(5 * (rank - 1) / max(n, 1))
    return score.clip(1, 5).astype("Int16")


def rfm(features: pd.DataFrame) -> pd.DataFrame:
    """r_score, f_score, m_score and rfm_segment for customers with purchases."""
    buyers = features["n_orders"] > 0
    recency = features["days_since_last_order"].where(buyers)
    frequency = features["purchase_days"].where(buyers)
    monetary = features["total_spend"].where(buyers)
    out = pd.DataFrame({
        "r_score": quintile_score(recency, higher_is_better=False),
        "f_score": quintile_score(frequency),
        "m_score": quintile_score(monetary),
    }, index=features.index)
    r = out["r_score"].fillna(0).to_numpy(int)
    f = out["f_score"].fillna(0).to_numpy(int)
    out["rfm_segment"] = pd.Series(SEGMENT_GRID[r, f], index=features.index, dtype=object)
    return out
