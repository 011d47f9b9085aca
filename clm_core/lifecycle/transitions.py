"""Stage changes: the diff between the stored stage and the newly assigned one.

The stored stage lives in ``customer_scores`` (with ``stage_since``); every change becomes a
``stage_transitions`` row. Scoring the same as-of date again records nothing new: the stage
rules then see the stage the customer had *before* that date (the ``from_stage`` of the
transition already recorded for it), so they reach the same answer.
"""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t


def rules_view(conn: Connection, features: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """``features`` with previous_stage/previous_stage_since/days_in_stage as of before ``as_of``
    (changed in place and returned).

    Adds ``stored_stage`` and ``stored_since`` (what ``customer_scores`` holds now).
    """
    out = features
    out["stored_stage"] = out["previous_stage"]
    out["stored_since"] = out["previous_stage_since"]
    # A transition already recorded for this date means this is a re-run: restore the stage
    # before it, and when that stage began (the date of the transition into it).
    st = t.stage_transitions
    before = st.alias("before")
    began = (sa.select(sa.func.max(before.c.as_of))
             .where(before.c.customer_id == st.c.customer_id, before.c.as_of < st.c.as_of)
             .scalar_subquery())
    earlier = pd.read_sql(sa.select(st.c.customer_id, st.c.from_stage, began.label("since"))
                          .where(st.c.as_of == as_of).order_by(st.c.id), conn)
    if not earlier.empty:
        first = earlier.drop_duplicates("customer_id").set_index("customer_id")
        hit = out["customer_id"].isin(first.index).to_numpy()
        ids = out.loc[hit, "customer_id"]
        since = pd.to_datetime(ids.map(first["since"]))
        out.loc[hit, "previous_stage"] = ids.map(first["from_stage"]).to_numpy()
        out.loc[hit, "previous_stage_since"] = since.to_numpy()
        out.loc[hit, "days_in_stage"] = ((pd.Timestamp(as_of) - since) / pd.Timedelta(days=1)).to_numpy()
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
