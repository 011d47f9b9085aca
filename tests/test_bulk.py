"""Bulk writes: the index-rebuilding path gives the same table, indexes and constraints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import bulk
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame


def _orders(n: int, customers: list[int], amount: float = 10.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "external_id": [f"o{i}" for i in range(n)],
            "customer_id": [customers[i % len(customers)] for i in range(n)],
            "ordered_at": pd.date_range("2024-01-01", periods=n, freq="h").astype("datetime64[us]"),
            "amount": [amount + i for i in range(n)],
            "quantity": pd.array([None] + [1] * (n - 1), "Int64"),
        }
    )


def _indexes(conn: sa.Connection) -> set[str]:
    return {ix["name"] for ix in sa.inspect(conn).get_indexes("orders")}


@pytest.mark.parametrize("rebuild", [False, True])
def test_bulk_upsert_inserts_updates_and_keeps_indexes_and_keys(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, rebuild: bool) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1 if rebuild else 10**9)
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": ["a", "b", "c"]}))
        indexes = _indexes(conn)
        ids = conn.scalars(sa.select(t.customers.c.id)).all()
    update = ["customer_id", "ordered_at", "amount", "quantity"]
    with engine.begin() as conn:
        assert write_frame(conn, t.orders, _orders(20, ids), keys=["external_id"], update=update,
                           bulk=True) == 20
    with engine.begin() as conn:
        assert write_frame(conn, t.orders, _orders(20, ids), keys=["external_id"], update=update,
                           bulk=True) == 0
        changed = _orders(25, ids)
        changed.loc[3, "amount"] = 99.5
        assert write_frame(conn, t.orders, changed, keys=["external_id"], update=update,
                           bulk=True) == 6  # five new, one changed
    with engine.connect() as conn:
        stored = pd.read_sql(sa.select(t.orders).order_by(t.orders.c.id), conn)
        assert _indexes(conn) == indexes
    assert len(stored) == 25 and stored.loc[3, "amount"] == 99.5
    assert stored["quantity"].isna().tolist() == [True] + [False] * 24
    assert pd.to_datetime(stored["ordered_at"]).iloc[1] == pd.Timestamp("2024-01-01 01:00")
    # The foreign key is back in force after the rebuild.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        orphan = _orders(1, ids).assign(external_id="orphan", customer_id=max(ids) + 1)
        write_frame(conn, t.orders, orphan, keys=["external_id"], bulk=True)


def test_a_failed_bulk_write_rolls_back_the_dropped_indexes(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    with engine.connect() as conn:
        indexes = _indexes(conn)
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": ["a", "b", "c"]}))
        ids = conn.scalars(sa.select(t.customers.c.id)).all()
    bad = _orders(5, ids).assign(amount=-1.0)  # violates the amount check
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        # The first statement of its transaction: the dropped indexes must still come back.
        write_frame(conn, t.orders, bad, keys=["external_id"], bulk=True)
    with engine.connect() as conn:
        assert _indexes(conn) == indexes
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.orders)) == 0


def test_duplicate_keys_into_an_empty_table_still_fail(engine: sa.Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The unique constraint is dropped for the load and must be enforced when it comes back.
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": ["a"]}))
        ids = conn.scalars(sa.select(t.customers.c.id)).all()
    twice = pd.concat([_orders(3, ids), _orders(3, ids)], ignore_index=True)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        write_frame(conn, t.orders, twice, keys=["external_id"], bulk=True)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.orders)) == 0
        assert "uq_orders_external_id" in {
            c["name"] for c in sa.inspect(conn).get_unique_constraints("orders")} | {
            ix["name"] for ix in sa.inspect(conn).get_indexes("orders") if ix["unique"]}


@pytest.mark.parametrize("rebuild", [False, True])
def test_replace_frame_reloads_the_table_keeping_rows_it_does_not_name(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, rebuild: bool) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1 if rebuild else 10**9)
    s = t.customer_scores
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": list("abcd")}))
        ids = conn.scalars(sa.select(t.customers.c.id).order_by(t.customers.c.id)).all()
        write_frame(conn, s, pd.DataFrame({"customer_id": ids, "as_of": pd.Timestamp("2025-01-01"),
                                           "stage": ["new", "active", "lost", "new"],
                                           "recorded_at": pd.Timestamp("2025-01-01")}))
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("customer_scores")}
    new = pd.DataFrame({"customer_id": ids[:3], "as_of": pd.Timestamp("2025-01-02"),
                        "stage": ["active", "active", "lost"], "n_orders": [1, 2, 3],
                        "recorded_at": pd.Timestamp("2025-01-02")})
    with engine.begin() as conn:
        assert bulk.replace_frame(conn, s, new, key="customer_id") == 3
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.c.customer_id, s.c.as_of, s.c.stage, s.c.n_orders)
                            .order_by(s.c.customer_id)).all()
        assert {ix["name"] for ix in sa.inspect(conn).get_indexes("customer_scores")} == indexes
        assert [(r[1].isoformat(), r[2], r[3]) for r in rows] == [
            ("2025-01-02", "active", 1), ("2025-01-02", "active", 2), ("2025-01-02", "lost", 3),
            ("2025-01-01", "new", 0)]  # the fourth customer was not in this write: kept
    # the keys and foreign keys still hold
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(s.insert().values(customer_id=ids[0], as_of=pd.Timestamp("2025-01-03"),
                                       recorded_at=pd.Timestamp("2025-01-03")))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(s.insert().values(customer_id=10_000, as_of=pd.Timestamp("2025-01-03"),
                                       recorded_at=pd.Timestamp("2025-01-03")))
    # a failed replace leaves the table as it was
    bad = new.assign(customer_id=[ids[0], ids[0], ids[1]])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        bulk.replace_frame(conn, s, bad, key="customer_id")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(s)) == 4


def _heap_fetches(conn: sa.Connection) -> int:
    """The heap pages an index-only scan of every score row had to visit: none when the
    visibility map says every page is visible to all (as a frozen load leaves it)."""
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
    plan = conn.exec_driver_sql(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT customer_id FROM customer_scores "
        "WHERE customer_id >= 0").scalar()
    node = plan[0]["Plan"]
    while "Heap Fetches" not in node:
        node = node["Plans"][0]
    assert node["Node Type"] == "Index Only Scan"
    return int(node["Heap Fetches"])


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_replace_frame_loads_postgresql_rows_frozen(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, isolation: str) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY FREEZE is PostgreSQL's")
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    s = t.customer_scores
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": [f"c{i}" for i in range(500)]}))
        ids = conn.scalars(sa.select(t.customers.c.id).order_by(t.customers.c.id)).all()
    rows = pd.DataFrame({"customer_id": ids, "as_of": pd.Timestamp("2025-01-02"),
                         "stage": "active", "recorded_at": pd.Timestamp("2025-01-02")})
    with engine.connect().execution_options(isolation_level=isolation) as conn, conn.begin():
        conn.scalar(sa.select(sa.func.count()).select_from(s))  # the snapshot is taken
        assert bulk.replace_frame(conn, s, rows, key="customer_id") == 500
    with engine.begin() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(s)) == 500
        fetches = _heap_fetches(conn)
    assert fetches == 0  # loaded the usual way, every page would still be visited


def test_a_reload_checks_an_ordered_foreign_key_by_merging_the_keys(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The foreign keys added back after a reload: the customer's (its column is the table's
    key) checked by walking both keys in order, the fit's hashed as the planner likes; both
    enforced again, and the planner's setting put back."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner; SQLite keeps its foreign keys through a load")
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    s = t.customer_scores
    with engine.begin() as conn:
        write_frame(conn, t.customers,
                    pd.DataFrame({"external_id": [f"c{i}" for i in range(2000)]}))
        ids = conn.scalars(sa.select(t.customers.c.id).order_by(t.customers.c.id)).all()
        fit = conn.execute(sa.insert(t.model_fits).values(
            model="bgnbd", params={}, time_unit="day", window_end=datetime(2025, 1, 1),
            n_customers=1, recorded_at=datetime(2025, 1, 2))
            .returning(t.model_fits.c.id)).scalar_one()
    rows = pd.DataFrame({"customer_id": ids, "as_of": pd.Timestamp("2025-01-02"), "fit_id": fit,
                         "stage": "active", "recorded_at": pd.Timestamp("2025-01-02")})
    plans: list[str] = []

    def planned(d: Any) -> None:
        plans.append(d.message_primary or "")

    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        raw.add_notice_handler(planned)
        try:
            # auto_explain sends the plan of every statement, the checks' queries included,
            # to the client as a notice (until the transaction ends)
            for sql in ("LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                        "SET LOCAL auto_explain.log_nested_statements = on",
                        "SET LOCAL client_min_messages = log"):
                conn.exec_driver_sql(sql)
            bulk.replace_frame(conn, s, rows, key="customer_id")
            conn.exec_driver_sql("SET LOCAL client_min_messages = notice")
        finally:
            raw.remove_notice_handler(planned)
        assert conn.exec_driver_sql("SELECT current_setting('enable_hashjoin')").scalar() == "on"
    checks = {key: next(p for p in plans if "LEFT OUTER JOIN" in p and f'"{key}"' in p
                        and "Join" in p) for key in ("customer_id", "fit_id")}
    assert "Merge Anti Join" in checks["customer_id"], checks["customer_id"]
    assert "Hash" in checks["fit_id"], checks["fit_id"]
    for bad in ({"customer_id": max(ids) + 1}, {"customer_id": ids[0], "fit_id": fit + 1}):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.update(s).where(s.c.customer_id == ids[0]).values(**bad))


def test_join_memory_holds_its_settings_inside_and_puts_them_back(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner settings")
    from clm_core.db.staging import JOIN_WORK_MEM, join_memory

    names = ("work_mem", "parallel_tuple_cost")
    with engine.begin() as conn:
        def now() -> list[str]:
            return [conn.exec_driver_sql(f"SELECT current_setting('{n}')").scalar() for n in names]

        before = now()
        with join_memory(conn, parallel_tuple_cost="0.01"):
            assert now() == [JOIN_WORK_MEM, "0.01"]
        assert now() == before


def test_update_from_finds_few_rows_by_key_and_changes_the_same_rows(engine: sa.Engine) -> None:
    """A change of few rows next to the table is planned by key on PostgreSQL (``_few``, from
    the statistics, none before the table is analyzed); whichever plan, the same rows change."""
    from clm_core.db.staging import _few, update_from

    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": [f"c{i}" for i in range(400)],
                                                     "name": "a"}))
        ids = conn.scalars(sa.select(t.customers.c.id).order_by(t.customers.c.id)).all()
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        with engine.begin() as conn:
            assert not _few(conn, t.customers, 10)  # no statistics yet
            conn.exec_driver_sql("ANALYZE customers")  # its row estimate outlives a rollback
    for size in (10, 200):
        with engine.connect() as conn:
            if postgres:
                assert _few(conn, t.customers, size) == (size == 10)
            df = pd.DataFrame({"id": ids[:size], "name": [f"n{size}"] * (size - 1) + ["a"]})
            assert update_from(conn, t.customers, df, key="id", columns=["name"]) == size - 1
            conn.rollback()  # each size changes the rows from as they were
