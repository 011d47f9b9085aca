"""Writing a Plan back: enrollments created and changed, outbox messages, set-based.

A morning's plan changes hundreds of thousands of enrollments at a million customers (every
wait that ends moves a row to its next step), so the rows are not upserted one by one: the
changed enrollments are staged and applied by one ``UPDATE ... FROM`` on their id, the new ones
by one ``INSERT ... SELECT`` that skips (journey, customer, entry_seq) already stored, and their
database ids are read back by joining the staged rows (``clm_core.db.staging``). Messages are
inserted once per idempotency key.

Safe to repeat: a re-run at the same time plans nothing new, and what it would write again is
either already stored (skipped by the unique keys) or equal to what is stored (an update that
changes no value writes no row). The whole plan is written in the caller's transaction, so a
crash part-way leaves nothing of it and the next run does it all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.db.staging import insert_staged, stage, unstage, update_from
from clm_core.journeys.engine import ENROLLMENT_COLUMNS, Plan, message_keys
from clm_core.runs import utcnow

# What an evaluation may change on a stored enrollment. Its identity (journey, customer,
# entry_seq) and its entry (entered_at, is_control) are fixed when it is created, so they are
# neither sent nor compared, and the unique index on the identity is never touched.
MUTABLE = ["journey_version", "status", "variant", "current_step", "step_due_at", "exited_at",
           "exit_reason", "converted_at", "goal"]
IDENTITY = ["journey", "customer_id", "entry_seq"]


@dataclass
class Written:
    enrollments_created: int
    enrollments_updated: int
    messages_created: int

    def __add__(self, other: Written) -> Written:
        return Written(self.enrollments_created + other.enrollments_created,
                       self.enrollments_updated + other.enrollments_updated,
                       self.messages_created + other.messages_created)


def _iso(s: pd.Series) -> np.ndarray:
    """``"YYYY-MM-DDTHH:MM:SS.ffffff"`` quoted as JSON, or ``null`` for NaT, vectorised."""
    values = s.to_numpy(dtype="datetime64[us]")
    text = np.char.add(np.char.add('"', np.datetime_as_string(values, unit="us")), '"')
    return np.where(np.isnat(values), "null", text).astype(object)


def state_json(df: pd.DataFrame) -> list[str]:
    """The engine state stored with each enrollment, as the JSON text ``json.dumps`` with
    sorted keys gives (so an unchanged state compares equal to the stored text on SQLite)."""
    a, b = _iso(df["trigger_at"]), _iso(df["unmatched_at"])
    return [f'{{"trigger_at": {x}, "unmatched_at": {y}}}' for x, y in zip(a, b)]


def _created(conn: Connection, new: pd.DataFrame, stored: list[str],
             recorded: np.datetime64) -> tuple[int, pd.Series]:
    """Insert the new enrollments; how many were inserted, and the database id of each
    planned (negative) id whose row is stored now with this entry time."""
    je = t.journey_enrollments
    frame = new[["id", *stored]].copy()
    frame["state"] = state_json(new)
    frame["recorded_at"] = recorded
    name = stage(conn, je, frame, as_text=["state"])
    created = insert_staged(conn, je, name, [*stored, "state", "recorded_at"], IDENTITY)
    match = " AND ".join(f't."{c}" = s."{c}"' for c in [*IDENTITY, "entered_at"])
    back = conn.exec_driver_sql(f"SELECT s.id, t.id FROM {name} AS s "
                                f"JOIN {je.name} AS t ON {match}").all()
    unstage(conn, name)
    planned, ids = zip(*back) if back else ((), ())
    return created, pd.Series(np.asarray(ids, dtype="int64"),
                              index=np.asarray(planned, dtype="int64"))


def write_plan(conn: Connection, plan: Plan) -> Written:
    """Store a plan; repeating it (or racing another run) adds nothing."""
    e = plan.enrollments
    je = t.journey_enrollments
    stored = [c for c in ENROLLMENT_COLUMNS if c in je.c and c != "id"]
    new, old = e[e["is_new"]], e[~e["is_new"]]
    created = updated = 0
    ids = pd.Series(dtype="int64")
    recorded = np.datetime64(utcnow(), "ns")  # the wall clock, only ever as recorded_at
    if len(new):
        created, ids = _created(conn, new, stored, recorded)
    if len(old):
        frame = old[["id", *MUTABLE]].copy()
        frame["state"] = state_json(old)
        updated = update_from(conn, je, frame, key="id", columns=[*MUTABLE, "state"],
                              as_text=["state"])
    msgs = plan.messages.copy()
    if msgs.empty:
        return Written(created, updated, 0)
    temp = msgs["enrollment_id"] < 0
    if temp.any():
        msgs.loc[temp, "enrollment_id"] = msgs.loc[temp, "enrollment_id"].map(ids)
        msgs = msgs[msgs["enrollment_id"].notna()]
        msgs["enrollment_id"] = msgs["enrollment_id"].astype("int64")
        msgs["idempotency_key"] = message_keys(msgs)
    # A message is created at the run's now (a backfill's past time, too).
    msgs["created_at"] = plan.now.to_datetime64()
    msgs["updated_at"] = msgs["created_at"]
    msgs["recorded_at"] = recorded
    n = write_frame(conn, t.messages, msgs, keys=["idempotency_key"])
    return Written(created, updated, n)
