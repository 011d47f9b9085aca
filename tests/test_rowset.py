"""Batch inserts of ``clm_core.db.rowset`` on both databases: each row stored once, exactly the
new rows reported, values read back as SQLAlchemy's own types, and a busy SQLite file still
raised as the OperationalError that write retries catch."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.db import rowset
from clm_core.db import tables as t
from clm_core.db.engine import make_engine

pe = t.provider_events
COLUMNS = (("provider", "text"), ("event_id", "text"), ("kind", "text"), ("channel", "text"),
           ("occurred_at", "timestamp"), ("recorded_at", "timestamp"), ("permanent", "bool"),
           ("detail", "json"))
AT = datetime(2026, 11, 30, 6, 0, 0, 123456)


def row(event_id: str, detail: dict[str, object] | None = None) -> tuple[object, ...]:
    return ("sendgrid", event_id, "opened", "email", rowset.stamp(AT), rowset.stamp(AT),
            event_id.endswith("p"), detail)


def insert(engine: sa.Engine, rows: list[tuple[object, ...]]) -> set[tuple[str, str]]:
    with engine.begin() as conn:
        new = rowset.insert_rows(conn, pe, COLUMNS, rows, ["provider", "event_id"],
                                 ["provider", "event_id"])
    return {(str(p), str(e)) for p, e in new}


def test_new_rows_are_reported_and_conflicts_skipped(engine: sa.Engine) -> None:
    assert insert(engine, [row("a"), row("b")]) == {("sendgrid", "a"), ("sendgrid", "b")}
    # A replay of a stored event beside new ones (and a duplicate within the batch).
    assert insert(engine, [row("b"), row("c"), row("c"), row("a")]) == {("sendgrid", "c")}
    assert insert(engine, [row("a")]) == set()
    with engine.connect() as conn:
        stored = conn.execute(sa.select(pe.c.event_id).order_by(pe.c.event_id)).scalars().all()
    assert stored == ["a", "b", "c"]


def test_values_read_back_as_sqlalchemy_types(engine: sa.Engine) -> None:
    insert(engine, [row("x", {"url": "https://shop.example.com/é", "n": [1, 2]}), row("yp")])
    with engine.connect() as conn:
        got = {r.event_id: r for r in conn.execute(sa.select(pe))}
    assert got["x"].detail == {"url": "https://shop.example.com/é", "n": [1, 2]}
    assert got["yp"].detail is None
    assert got["x"].occurred_at == AT and got["x"].permanent is False
    assert got["yp"].permanent is True


def test_mapping_rows_through_insert_select(engine: sa.Engine) -> None:
    names = [name for name, _ in COLUMNS]
    with engine.begin() as conn:
        new = rowset.insert_select(conn, pe, COLUMNS, [dict(zip(names, row("m")))],
                                   ["provider", "event_id"], ["event_id"])
    assert new == [("m",)]


def test_a_locked_sqlite_file_is_an_operational_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    engine = make_engine(url)
    t.metadata.create_all(engine)
    holder = sqlite3.connect(tmp_path / "locked.db")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=50")
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                rowset.insert_rows(conn, pe, COLUMNS, [row("z")], ["provider", "event_id"])
            conn.rollback()
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
