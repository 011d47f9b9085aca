"""The set-based write of a plan (staged rows, one UPDATE ... FROM and one INSERT ... SELECT)
stores exactly what the row-by-row upsert it replaced stored, writes nothing when repeated,
and a write that fails part-way leaves nothing that a re-run does not complete; on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.journeys.engine import ENROLLMENT_COLUMNS, Plan, message_keys
from clm_core.journeys.run import evaluate
from clm_core.journeys.writeback import Written, write_plan
from tests.journey_helpers import customers_frame, store_customers, store_transitions
from tests.test_journey_store import NOW, _welcome

LATER = NOW + timedelta(days=2)


def upsert_row_by_row(conn: Connection, plan: Plan) -> Written:
    """The previous writer: every enrollment through ``write_frame``'s per-row upsert."""
    e = plan.enrollments
    stored = [c for c in ENROLLMENT_COLUMNS if c in t.journey_enrollments.c and c != "id"]
    new, old = e[e["is_new"]], e[~e["is_new"]]

    def state(df: pd.DataFrame) -> list[dict]:
        def iso(s: pd.Series) -> list[str | None]:
            text = pd.to_datetime(s).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
            return [v if ok else None for v, ok in zip(text.tolist(), s.notna().tolist())]
        return [{"trigger_at": a, "unmatched_at": b}
                for a, b in zip(iso(df["trigger_at"]), iso(df["unmatched_at"]))]

    created = updated = 0
    ids = pd.Series(dtype="int64")
    recorded = np.datetime64("2026-01-01", "ns")
    je = t.journey_enrollments
    if len(new):
        frame = new[stored].copy()
        frame["state"] = state(new)
        frame["recorded_at"] = recorded
        created = write_frame(conn, je, frame, keys=["journey", "customer_id", "entry_seq"])
        back = pd.DataFrame(conn.execute(
            sa.select(je.c.id, je.c.journey, je.c.customer_id, je.c.entry_seq)
            .where(je.c.entered_at == plan.now.to_pydatetime())).all(),
            columns=["id", "journey", "customer_id", "entry_seq"])
        keyed = new[["id", "journey", "customer_id", "entry_seq"]].merge(
            back, on=["journey", "customer_id", "entry_seq"], suffixes=("_tmp", ""))
        ids = pd.Series(keyed["id"].to_numpy(), index=keyed["id_tmp"].to_numpy())
    if len(old):
        frame = old[["id", *stored]].copy()
        frame["state"] = state(old)
        updated = write_frame(conn, je, frame, keys=["id"], update=[*stored, "state"])
    msgs = plan.messages.copy()
    temp = msgs["enrollment_id"] < 0
    if temp.any():
        msgs.loc[temp, "enrollment_id"] = msgs.loc[temp, "enrollment_id"].map(ids)
        msgs = msgs[msgs["enrollment_id"].notna()]
        msgs["enrollment_id"] = msgs["enrollment_id"].astype("int64")
        msgs["idempotency_key"] = message_keys(msgs)
    msgs["created_at"] = plan.now.to_datetime64()
    msgs["updated_at"] = msgs["created_at"]
    msgs["recorded_at"] = recorded
    return Written(created, updated, write_frame(conn, t.messages, msgs, keys=["idempotency_key"]))


def stored(conn: Connection) -> dict[str, list[dict]]:
    """Enrollments and messages without database ids or wall-clock times; each message names
    its enrollment by (journey, customer, entry_seq) and its key is checked against its id."""
    e, m = t.journey_enrollments, t.messages
    enr = [dict(r._mapping) for r in conn.execute(sa.select(e))]
    identity = {r["id"]: (r["journey"], r["customer_id"], r["entry_seq"]) for r in enr}
    for r in enr:
        del r["id"], r["recorded_at"]
        r["state"] = r["state"] if isinstance(r["state"], dict) else json.loads(r["state"])
    msgs = []
    for r in conn.execute(sa.select(m)):
        row = dict(r._mapping)
        assert row["idempotency_key"].endswith(f"/e{row['enrollment_id']}")
        row["enrollment"] = identity[row.pop("enrollment_id")]
        for c in ("id", "recorded_at", "idempotency_key"):
            del row[c]
        row["tags"] = row["tags"] if isinstance(row["tags"], list) else json.loads(row["tags"])
        msgs.append(row)
    return {"enrollments": sorted(enr, key=lambda r: (r["journey"], r["customer_id"],
                                                       r["entry_seq"])),
            "messages": sorted(msgs, key=lambda r: (r["enrollment"], r["step_id"]))}


def _later_plan(engine: sa.Engine, db_url: str, tmp_path: Path) -> tuple[object, Plan]:
    """30 customers in the welcome journey since NOW, 10 more who became new just before
    LATER: the plan at LATER advances the 30 (waits end, SMS step, completion) and enrolls the
    10."""
    settings = _welcome(engine, db_url, tmp_path, 30)
    assert evaluate(engine, settings, NOW).written == Written(30, 0, 30)
    more = customers_frame(10, seed=1, timezone="UTC")
    more.index = more.index + 1000
    ids = store_customers(engine, more, LATER - timedelta(hours=1))
    store_transitions(engine, ids, "new", LATER - timedelta(hours=1))
    plan = evaluate(engine, settings, LATER, dry_run=True).plan
    assert plan.enrollments["is_new"].sum() == 10 and (~plan.enrollments["is_new"]).sum() == 30
    return settings, plan


def _try(engine: sa.Engine, writer: Callable[[Connection, Plan], Written],
         plan: Plan) -> tuple[Written, dict[str, list[dict]]]:
    """What ``writer`` writes and the stored rows after it, rolled back."""
    with engine.connect() as conn:
        trans = conn.begin()
        written = writer(conn, plan)
        rows = stored(conn)
        trans.rollback()
    return written, rows


def test_set_based_write_stores_what_the_row_by_row_upsert_stored(
        engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    _, plan = _later_plan(engine, db_url, tmp_path)
    before = _try(engine, lambda conn, p: Written(0, 0, 0), plan)[1]
    reference = _try(engine, upsert_row_by_row, plan)
    written, rows = _try(engine, write_plan, plan)
    assert written == reference[0] == Written(10, 30, 40)
    assert rows == reference[1] != before


def test_repeating_a_written_plan_writes_nothing(engine: sa.Engine, db_url: str,
                                                 tmp_path: Path) -> None:
    settings, plan = _later_plan(engine, db_url, tmp_path)
    with engine.begin() as conn:
        assert write_plan(conn, plan) == Written(10, 30, 40)
    with engine.connect() as conn:
        after = stored(conn)
    with engine.begin() as conn:
        assert write_plan(conn, plan) == Written(0, 0, 0)
    again = evaluate(engine, settings, LATER)
    assert again.written == Written(0, 0, 0)
    with engine.connect() as conn:
        assert stored(conn) == after


def test_a_write_failing_part_way_leaves_what_a_rerun_completes(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, plan = _later_plan(engine, db_url, tmp_path)
    clean = _try(engine, write_plan, plan)[1]
    with engine.connect() as conn:
        before = stored(conn)

    def fail(*args: object, **kwargs: object) -> int:  # enrollments written, then the outbox
        raise RuntimeError("connection lost")

    monkeypatch.setattr("clm_core.journeys.writeback.write_frame", fail)
    with pytest.raises(RuntimeError):
        evaluate(engine, settings, LATER)
    with engine.connect() as conn:
        assert stored(conn) == before
    monkeypatch.undo()
    assert evaluate(engine, settings, LATER).written == Written(10, 30, 40)
    with engine.connect() as conn:
        assert stored(conn) == clean
