"""Stage changes: the diff between the stored stage and the newly assigned one.

The stored stage lives in ``customer_scores`` (with ``stage_since``); every change becomes a
``stage_transitions`` row. Scoring the same as-of date again records nothing new: the stage
rules then see the stage the customer had *before* that date (the ``from_stage`` of the
transition already recorded for it), so they reach the same answer.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t


def rules_view(conn: Connection, features: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """``features`` with previous_stage/previous_stage_since/days_in_stage as of before ``as_of``.

    Adds ``stored_stage`` and ``stored_since`` (what ``customer_scores`` holds now).
    """
    out = features.copy()
    out["stored_stage"] = out["previous_stage"]
    out["stored_since"] = out["previous_stage_since"]
    earlier = pd.read_sql(
        sa.select(t.stage_transitions.c.customer_id, t.stage_transitions.c.from_stage)
        .where(t.stage_transitions.c.as_of == as_of).order_by(t.stage_transitions.c.id), conn)
    if not earlier.empty:
        before = earlier.drop_duplicates("customer_id").set_index("customer_id")["from_stage"]
        hit = out["customer_id"].isin(before.index).to_numpy()
        out.loc[hit, "previous_stage"] = out.loc[hit, "customer_id"].map(before).to_numpy()
        # The earlier stage's start is not kept; its age is unknown, not zero.
        out.loc[hit, "previous_stage_since"] = pd.NaT
        out.loc[hit, "days_in_stage"] = np.nan
    return out


def diff(view: pd.DataFrame, stage: pd.Series, as_of: date, now: datetime,
         run_id: str | None) -> tuple[pd.DataFrame, pd.Series]:
    """Transition rows for customers whose stage changed, and the new ``stage_since``."""
    stored = view["stored_stage"]
    changed = (stage.notna() & (stored.isna() | (stage != stored))).to_numpy()
    since = pd.Series(pd.to_datetime(view["stored_since"]).to_numpy(), index=view.index)
    start = pd.Timestamp(as_of)
    since[changed] = start
    rows = pd.DataFrame({
        "customer_id": view["customer_id"].to_numpy()[changed],
        "from_stage": stored.to_numpy()[changed],
        "to_stage": stage.to_numpy()[changed],
        "transitioned_at": now,
        "as_of": start,
        "run_id": run_id,
    })
    rows["transitioned_at"] = pd.to_datetime(rows["transitioned_at"])
    rows["as_of"] = pd.to_datetime(rows["as_of"])
    return rows, since
