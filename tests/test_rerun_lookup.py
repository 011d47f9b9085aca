"""Scoring an as-of day again looks up each customer's latest earlier transition with one
index seek, however long the history (PostgreSQL: its planner otherwise walked the as_of index
back through every earlier transition for each customer; a million-customer rerun ran for more
than eleven minutes)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.lifecycle.features import IN_STAGE_FIELDS, _params, _sql, _statement
from clm_core.lifecycle.transitions import rules_view

FIRST, DAY = date(2024, 1, 1), date(2024, 6, 1)
CUSTOMERS, RERUN = 20_000, 200  # everyone moved on the first night; a few on the rerun day


def _store(engine: sa.Engine) -> list[tuple[int, date]]:
    """Store the customers and their moves; the moves, as (customer, as-of day)."""
    ids = list(range(1, CUSTOMERS + 1))
    moves = [(i, FIRST) for i in ids] + [(i, FIRST + timedelta(days=d))
                                         for d in (30, 60, 90) for i in ids[d::40]]
    moves += [(i, DAY) for i in ids[:: CUSTOMERS // RERUN]]
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({
            "id": ids, "external_id": [f"c{i}" for i in ids],
            "created_at": datetime(2023, 1, 1), "updated_at": datetime(2023, 1, 1)}), bulk=True)
        write_frame(conn, t.stage_transitions, pd.DataFrame({
            "customer_id": [m[0] for m in moves], "from_stage": "new", "to_stage": "active",
            "transitioned_at": [datetime.combine(m[1], datetime.min.time()) for m in moves],
            "as_of": [m[1] for m in moves],
            "stage_since": [datetime.combine(m[1], datetime.min.time()) for m in moves],
            "recorded_at": datetime(2024, 6, 2)}), bulk=True)
        conn.exec_driver_sql("ANALYZE")
    return moves


def _lookups(plan: dict[str, Any], aliases: set[str]) -> tuple[int, int]:
    """(loops, rows read) of the scans of ``aliases`` in an EXPLAIN (ANALYZE, FORMAT JSON)
    plan: the rows each returned plus those its filter threw away, over all its loops."""
    loops = read = 0
    if plan.get("Alias") in aliases and "Scan" in plan["Node Type"]:
        n = plan["Actual Loops"]
        loops += n
        read += n * (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0))
    for child in plan.get("Plans", []):
        more = _lookups(child, aliases)
        loops, read = loops + more[0], read + more[1]
    return loops, read


def _explained(conn: sa.Connection, sql: str, params: Any) -> dict[str, Any]:
    row = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).scalar_one()
    return row[0]["Plan"]


def test_a_rerun_reads_each_customers_earlier_transitions_by_index(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plan; SQLite seeks by customer and sorts their few rows")
    moves = _store(engine)
    movers = sorted(i for i, day in moves if day == DAY)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "stage_transitions" in statement:
            seen.append((statement, params))

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        features = pd.DataFrame({"customer_id": range(1, CUSTOMERS + 1),
                                 "previous_stage": "active", "previous_stage_since": pd.NaT})
        view = rules_view(conn, features, DAY)
        sa.event.remove(conn, "before_cursor_execute", capture)
        # the rerun day's movers see the stage before the day, begun at their latest earlier
        # transition
        moved = view.set_index("customer_id").loc[movers]
        assert (moved["previous_stage"] == "new").all()
        latest = [max(day for c, day in moves if c == i and day < DAY) for i in movers]
        assert list(moved["previous_stage_since"].dt.date) == latest
        statement, params = seen[0]
        compiled = _statement(_sql("postgresql", IN_STAGE_FIELDS)).compile(dialect=conn.dialect)
        for sql, args, alias in ((statement, params, "before"),
                                 (compiled.string, compiled.construct_params(_params(DAY)), "b")):
            loops, read = _lookups(_explained(conn, sql, args), {alias})
            # one lookup per customer moved on the rerun day, each a seek that reads the row
            # it returns and at most one more: neither the customer's whole history nor
            # (PostgreSQL's choice at a million customers) everyone's earlier transitions
            assert len(movers) <= loops <= 2 * len(movers)
            assert read <= 2 * loops, (alias, loops, read)
