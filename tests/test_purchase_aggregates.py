"""Purchase aggregates follow the orders: imports, cancellations, refunds and re-imports of a
changed order leave them equal to a full rebuild, and the features read from them equal the
features aggregated from the orders (which they fall back to for an earlier as-of day)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.ingest.importer import import_csv
from clm_core.lifecycle.aggregates import covers, in_step, rebuild
from clm_core.lifecycle.features import customer_features, day_end

STATUSES = ["completed", "completed", "completed", "cancelled", "refunded", "pending", "paid"]


def _aggregates(engine: sa.Engine) -> pd.DataFrame:
    a = t.customer_purchase_aggregates
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(a).order_by(a.c.customer_id), conn)
    for col in ("total_spend", "first_day_spend"):
        frame[col] = frame[col].astype(float)
    return frame


def _rebuilt(engine: sa.Engine) -> pd.DataFrame:
    """The aggregates a full rebuild gives (rolled back, so the store keeps its own)."""
    with engine.connect() as conn:
        trans = conn.begin()
        rebuild(conn)
        a = t.customer_purchase_aggregates
        frame = pd.read_sql(sa.select(a).order_by(a.c.customer_id), conn)
        trans.rollback()
    for col in ("total_spend", "first_day_spend"):
        frame[col] = frame[col].astype(float)
    return frame


def _orders_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows, columns=["order_id", "customer_id", "ordered_at", "amount", "status"]
                 ).to_csv(path, index=False)
    return path


def _random_orders(rng: np.random.Generator, start: int, n: int, customers: int,
                   day0: pd.Timestamp, days: int) -> list[dict[str, object]]:
    out = []
    for k in range(start, start + n):
        at = day0 + pd.Timedelta(days=int(rng.integers(0, days)),
                                 seconds=int(rng.integers(0, 86_400)))
        out.append({"order_id": f"o{k}", "customer_id": f"c{int(rng.integers(0, customers))}",
                    "ordered_at": at.strftime("%Y-%m-%d %H:%M:%S"),
                    "amount": f"{rng.uniform(1, 300):.2f}",
                    "status": STATUSES[int(rng.integers(0, len(STATUSES)))]})
    return out


def test_incremental_equals_rebuild_after_imports_cancellations_and_reimports(
    engine: sa.Engine, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    day0 = pd.Timestamp("2025-01-01")
    known: list[dict[str, object]] = []
    for batch in range(6):
        new = _random_orders(rng, batch * 60, 60, 150, day0 + pd.Timedelta(days=10 * batch), 40)
        changed = []
        for row in rng.choice(len(known), size=min(15, len(known)), replace=False) if known else []:
            old = dict(known[row])
            kind = batch % 3
            if kind == 0:  # cancelled or refunded after the fact
                old["status"] = "cancelled" if rng.random() < 0.5 else "refunded"
            elif kind == 1:  # a changed amount and time, maybe a new purchase day
                old["amount"] = f"{rng.uniform(1, 300):.2f}"
                old["ordered_at"] = (pd.Timestamp(str(old["ordered_at"]))
                                     + pd.Timedelta(hours=int(rng.integers(-30, 30)))
                                     ).strftime("%Y-%m-%d %H:%M:%S")
                old["status"] = "completed"
            else:  # re-imported under another customer
                old["customer_id"] = f"c{int(rng.integers(0, 150))}"
            known[row] = old
            changed.append(old)
        known += new
        report = import_csv(engine, "orders", _orders_csv(tmp_path / f"b{batch}.csv",
                                                            new + changed))
        assert report.rejected == 0
        assert report.inserted == len(new) and report.updated <= len(changed)
        incremental = _aggregates(engine)
        pd.testing.assert_frame_equal(incremental, _rebuilt(engine))
        with engine.connect() as conn:
            assert in_step(conn)
    # Something really changed along the way: cancelled orders are not purchases.
    frame = _aggregates(engine)
    assert int(frame["n_orders"].sum()) < len(known)
    assert (frame["purchase_days"] < frame["n_orders"]).any()  # two orders on one day


def test_a_cancellation_and_a_moved_order_update_both_customers(
    engine: sa.Engine, tmp_path: Path
) -> None:
    rows = [{"order_id": "a1", "customer_id": "ann", "ordered_at": "2025-03-01 09:00",
             "amount": "10.10", "status": "completed"},
            {"order_id": "a2", "customer_id": "ann", "ordered_at": "2025-03-01 18:00",
             "amount": "5.05", "status": "completed"},
            {"order_id": "a3", "customer_id": "ann", "ordered_at": "2025-03-04 08:00",
             "amount": "20.00", "status": "completed"},
            {"order_id": "b1", "customer_id": "bob", "ordered_at": "2025-03-02 12:00",
             "amount": "7.00", "status": "completed"}]
    import_csv(engine, "orders", _orders_csv(tmp_path / "1.csv", rows))

    def by_customer() -> dict[str, tuple[int, int, float, float]]:
        a, c = t.customer_purchase_aggregates, t.customers
        with engine.connect() as conn:
            got = conn.execute(sa.select(c.c.external_id, a.c.n_orders, a.c.purchase_days,
                                         a.c.total_spend, a.c.first_day_spend).join(a)).all()
        return {r[0]: (r[1], r[2], float(r[3]), float(r[4])) for r in got}

    assert by_customer() == {"ann": (3, 2, 35.15, 15.15), "bob": (1, 1, 7.0, 7.0)}
    # a2 is cancelled
    import_csv(engine, "orders", _orders_csv(tmp_path / "2.csv", [dict(rows[1],
                                                                      status="cancelled")]))
    assert by_customer() == {"ann": (2, 2, 30.10, 10.10), "bob": (1, 1, 7.0, 7.0)}
    # a3 moves to bob with a new amount: a file that names only bob changes ann too
    changed = [dict(rows[1], status="cancelled"), dict(rows[2], customer_id="bob", amount="1.00")]
    import_csv(engine, "orders", _orders_csv(tmp_path / "2b.csv", changed[1:]))
    assert by_customer() == {"ann": (1, 1, 10.10, 10.10), "bob": (2, 2, 8.0, 7.0)}
    # every order of bob refunded: bob has no purchase left
    import_csv(engine, "orders", _orders_csv(tmp_path / "3.csv", [
        dict(rows[3], status="refunded"), dict(changed[1], status="refunded")]))
    assert by_customer() == {"ann": (1, 1, 10.10, 10.10)}
    pd.testing.assert_frame_equal(_aggregates(engine), _rebuilt(engine))


def _features(engine: sa.Engine, as_of: date, source: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return customer_features(conn, as_of, "day", source=source).frame


def test_features_from_aggregates_equal_features_from_orders_and_fall_back_before(
    engine: sa.Engine, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    rows = _random_orders(rng, 0, 300, 40, pd.Timestamp("2025-01-01"), 120)
    import_csv(engine, "orders", _orders_csv(tmp_path / "o.csv", rows))
    with engine.connect() as conn:
        last = pd.Timestamp(conn.scalar(sa.select(sa.func.max(t.orders.c.ordered_at))))
    as_of = last.date()
    pd.testing.assert_frame_equal(_features(engine, as_of, "aggregates"),
                                  _features(engine, as_of, "orders"))
    # An earlier as-of day: later orders exist, so the aggregates do not cover it ...
    earlier = date(2025, 2, 15)
    with engine.connect() as conn:
        assert covers(conn, day_end(as_of)) and not covers(conn, day_end(earlier))
    with pytest.raises(ValueError, match="do not cover"):
        _features(engine, earlier, "aggregates")
    # ... and the default reads the orders up to that day, as the history path does.
    auto, history = _features(engine, earlier, "auto"), _features(engine, earlier, "orders")
    pd.testing.assert_frame_equal(auto, history)
    assert not auto.set_index("customer_id")["n_orders"].equals(
        _features(engine, as_of, "auto").set_index("customer_id")["n_orders"])


def test_orders_written_around_the_aggregates_are_noticed_and_rebuilt(
    engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"order_id": "x1", "customer_id": "cy", "ordered_at": "2025-05-01 10:00",
             "amount": "3.00", "status": "completed"}]
    import_csv(engine, "orders", _orders_csv(tmp_path / "1.csv", rows))
    with engine.begin() as conn:  # a script inserting an order directly
        cid = conn.scalar(sa.select(t.customers.c.id))
        conn.execute(t.orders.insert().values(external_id="x2", customer_id=cid,
                                              ordered_at=pd.Timestamp("2025-05-02 10:00"),
                                              amount=4, status="completed"))
    with engine.connect() as conn:
        assert not in_step(conn) and not covers(conn, day_end(date(2025, 5, 3)))
    auto = _features(engine, date(2025, 5, 3), "auto")
    assert auto["n_orders"].tolist() == [2]  # read from the orders, not the stale aggregates
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clm.toml").write_text("[clm]\n")
    res = CliRunner().invoke(cli, ["--database", db_url, "db", "rebuild-aggregates"])
    assert res.exit_code == 0, res.output
    assert "purchase aggregates rebuilt for 1 customers" in res.output
    with engine.connect() as conn:
        assert covers(conn, day_end(date(2025, 5, 3)))
    assert _aggregates(engine)["n_orders"].tolist() == [2]


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every statement ``engine`` runs in the block, lower case, its whitespace folded."""
    run: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        run.append(" ".join(statement.lower().split()))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield run
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)


def test_a_days_import_counts_the_orders_once(engine: sa.Engine, tmp_path: Path) -> None:
    """Counting the orders passes over all of them (at fifty million, seconds each time): a
    day's import counts them once, to see that nothing wrote around the aggregates, and
    learns the rest (rows inserted, the count after) from the day's own keys."""
    rng = np.random.default_rng(5)
    day0 = pd.Timestamp("2025-01-01")
    first = _random_orders(rng, 0, 300, 80, day0, 60)
    import_csv(engine, "orders", _orders_csv(tmp_path / "first.csv", first))
    day = _random_orders(rng, 300, 20, 80, day0 + pd.Timedelta(days=61), 1)
    cancelled = [dict(first[k], status="cancelled") for k in (3, 7, 11)]
    with _statements(engine) as run:
        report = import_csv(engine, "orders", _orders_csv(tmp_path / "day.csv",
                                                            day + cancelled))
    counts = [q for q in run if "count(" in q and "from orders" in q
              and "where" not in q.split("from orders", 1)[1]]  # over every order
    assert (report.inserted, report.updated) == (20, 3)
    assert len(counts) == 1, counts
    with engine.connect() as conn:
        assert in_step(conn)  # the count it recorded is the true one
    pd.testing.assert_frame_equal(_aggregates(engine), _rebuilt(engine))


def test_a_days_customers_are_looked_up_by_key_a_store_wide_file_reads_them_all(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customers a file names are found by key while they are few next to the store (a
    day's orders), by one read of every customer when they are most of it; the limit grows
    with the store, since a big store's day names more customers."""
    from clm_core.ingest import importer

    rng = np.random.default_rng(8)
    day0 = pd.Timestamp("2025-01-01")
    import_csv(engine, "orders", _orders_csv(tmp_path / "all.csv",
                                             _random_orders(rng, 0, 600, 400, day0, 60)))
    monkeypatch.setattr(importer, "_LOOKUP_MAX", 10)  # the store (400) counts as large
    for name, (start, n, customers) in {"day": (600, 15, 400), "most": (700, 800, 400)}.items():
        rows = _random_orders(rng, start, n, customers, day0 + pd.Timedelta(days=61), 1)
        named = len({r["customer_id"] for r in rows})
        with _statements(engine) as run:
            report = import_csv(engine, "orders", _orders_csv(tmp_path / f"{name}.csv", rows))
        assert report.rejected == 0
        reads = ["all" if "where" not in q else "by key" for q in run
                 if q.startswith("select customers.external_id, customers.id from customers")]
        # 5% of 400 customers is 20: a day's 15 rows name at most 15 of them
        # (a second lookup follows when the file names customers not stored yet)
        assert set(reads) == ({"by key"} if named <= 20 else {"all"}), (name, named, reads)
    pd.testing.assert_frame_equal(_aggregates(engine), _rebuilt(engine))


def test_a_rebuild_stores_the_aggregates_in_customer_order(engine: sa.Engine,
                                                           tmp_path: Path) -> None:
    """The nightly features read the aggregates by customer (a merge join by key); stored in
    another order, PostgreSQL's index scan fetches a heap page per row."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores the table as its key's b-tree: always in customer order")
    rng = np.random.default_rng(5)
    orders = _random_orders(rng, 0, 3000, 1500, pd.Timestamp("2025-01-01"), 90)
    import_csv(engine, "orders", _orders_csv(tmp_path / "orders.csv", orders))
    with engine.begin() as conn:
        rebuild(conn)
        stored = conn.exec_driver_sql(  # in the order the rows are stored
            "SELECT customer_id FROM customer_purchase_aggregates ORDER BY ctid").scalars().all()
    assert len(stored) > 1000
    assert stored == sorted(stored)
