"""Stage changes: the diff between the stored stage and the newly assigned one.

The stored stage lives in ``customer_scores`` (with ``stage_since``); every change becomes a
``stage_transitions`` row. Scoring the same as-of date again records nothing new: the stage
rules then see the stage the customer had *before* that date (the ``from_stage`` of the
transition already recorded for it, and when it began), so they reach the same answer.

A transition follows the run's clock, never the wall clock: it is dated the as-of day
(``transitioned_at`` = its midnight, like ``stage_since``), so a backfill or a rerun writes the
same rows as the live run did; the wall clock goes to ``recorded_at`` only. A new stage begins
on the as-of day unless its rule says otherwise (``since``: e.g. ``reactivated`` begins with
the comeback purchase).
"""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t
from clm_core.runs import utcnow


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
    began = (sa.select(sa.func.coalesce(before.c.stage_since, before.c.as_of))
             .where(before.c.customer_id == st.c.customer_id, before.c.as_of < st.c.as_of)
             .order_by(before.c.as_of.desc(), before.c.id.desc()).limit(1)
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
        out.loc[hit, "days_in_stage"] = (
            (pd.Timestamp(as_of) - since) / pd.Timedelta(days=1)
        ).to_numpy()
    return out


def diff(view: pd.DataFrame, stage: pd.Series, as_of: date, run_id: str | None,
         began: pd.Series | None = None,
         recorded_at: datetime | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Transition rows for customers whose stage changed, and the new ``stage_since``.

    ``began``: when each customer's assigned stage began, where its rule says (NaT: the as-of
    day); ``recorded_at``: the wall clock at writing (default: now).
    """
    stored = view["stored_stage"]
    changed = (stage.notna() & (stored.isna() | (stage != stored))).to_numpy()
    since = pd.Series(pd.to_datetime(view["stored_since"]).to_numpy(), index=view.index)
    start = pd.Timestamp(as_of)
    new_since = pd.Series(start, index=view.index)
    if began is not None:
        b = pd.to_datetime(began)
        new_since = b.where(b.notna() & (b <= start), start).astype("datetime64[ns]")
    since[changed] = new_since[changed]
    rows = pd.DataFrame({
        "customer_id": view["customer_id"].to_numpy()[changed],
        "from_stage": stored.to_numpy()[changed],
        "to_stage": stage.to_numpy()[changed],
        "transitioned_at": start,
        "as_of": start,
        "stage_since": new_since.to_numpy()[changed],
        "run_id": run_id,
        "recorded_at": pd.Timestamp(recorded_at or utcnow()),
    })
    for col in ("transitioned_at", "as_of", "stage_since", "recorded_at"):
        rows[col] = pd.to_datetime(rows[col]).astype("datetime64[ns]")
    return rows, since
