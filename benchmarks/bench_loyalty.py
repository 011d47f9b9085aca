"""Loyalty points and tiers at scale: the full history, then one day's new orders, beside the
naive way (re-evaluating every member from the whole history each day).

    python benchmarks/bench_loyalty.py [--customers 1000000] [--database URL] [--reuse]

Loads a synthetic store (about five orders per customer) unless ``--reuse`` finds one, then
measures, each in a fresh process so peak memory is its own:

- full history: the first evaluation (every earning row, expiries, rewards, tiers);
- one day: about 0.2% of customers order once more; the next evaluation reads only the
  customers whose points or tier can have changed;
- naive: the same day evaluated for every member from the whole history (``full=True``) on a
  copy of the store; the ledger rows and balances it gives are the same (checked at the end);
- on SQLite, the floor: as many ledger-shaped rows as the full history wrote, written by plain
  ``sqlite3`` (no CLM code) into the same table and indexes in a scratch file beside the store,
  with the store's pragmas and bulk technique (500-row statements, indexes built after the
  insert, one commit), in WAL mode as the store runs and in rollback-journal mode. No
  evaluation can write its rows faster than this.

Each line ends with the CPU seconds of the evaluation's steps (read, compute, write, commit);
CPU counts the second processes a first evaluation forks (clm_core/loyalty/ahead.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import (  # noqa: E402
    cpu_seconds,
    cpu_seconds_with_children,
    line,
    measured,
    peak_mb,
)
from clm_core.db import tables as t  # noqa: E402
from clm_core.db.bulk import write_frame  # noqa: E402
from clm_core.db.migrate import open_database  # noqa: E402
from clm_core.ingest.synthetic import load_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _evaluate(url: str, now: datetime, full: bool, out: Any) -> None:
    from clm_core.db.engine import make_engine
    from clm_core.loyalty.spec import load_programme
    from clm_core.loyalty.store import run_loyalty

    cpu, start = cpu_seconds_with_children(), time.perf_counter()
    prog = load_programme(REPO / "journeys")
    assert prog is not None
    summary = run_loyalty(make_engine(url), prog, now, full=full)
    # CPU and memory of the second processes too (a first evaluation forks: see
    # clm_core/loyalty/ahead.py); their peak resident memory counts the pages they share
    # with this process
    second = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.put({"seconds": time.perf_counter() - start, "cpu": cpu_seconds_with_children() - cpu,
             "peak_mb": peak_mb(), "second_peak_mb": second, "evaluated": summary.evaluated,
             "members": summary.members, "rows": sum(summary.rows.values()),
             "steps": summary.cpu})


def _floor(store: str, rows: int, journal: str, out: Any) -> None:
    """The bare write of ``rows`` ledger rows (see the module docstring)."""
    import sqlite3

    scratch = f"{store}.floor-{journal.lower()}"
    src = sqlite3.connect(store)
    ddl = [r[0] for r in src.execute("SELECT sql FROM sqlite_master WHERE tbl_name = "
                                     "'points_ledger' AND sql IS NOT NULL ORDER BY type DESC")]
    src.close()
    width = 11  # id, key, customer, kind, points, order, occurred, expires, reason, recorded, run
    ids = range(1, rows + 1)
    flat: list[object] = []
    for i in ids:  # built before the clock starts: only the write is timed
        flat += [i, f"earn:{i}", i % 1_000_000 + 1, "earn", 100 + i % 500, i,
                 "2025-03-01 12:00:00.000000", "2026-03-01 12:00:00.000000", None,
                 "2026-11-30 12:00:00.000000", "run"]
    con = sqlite3.connect(scratch, isolation_level=None)
    for pragma in (f"journal_mode={journal}", "synchronous=NORMAL", "cache_size=-262144"):
        con.execute(f"PRAGMA {pragma}")
    con.execute(ddl[0])  # the table first, its indexes after the insert
    cpu, start = cpu_seconds(), time.perf_counter()
    con.execute("BEGIN")
    batch = 500
    full = rows // batch * batch * width
    many = "INSERT INTO points_ledger VALUES " + ",".join(
        ["(" + ",".join("?" * width) + ")"] * batch)
    con.executemany(many, (flat[i:i + batch * width] for i in range(0, full, batch * width)))
    con.executemany("INSERT INTO points_ledger VALUES (" + ",".join("?" * width) + ")",
                    (flat[i:i + width] for i in range(full, len(flat), width)))
    inserted = time.perf_counter()
    for index in ddl[1:]:
        con.execute(index)
    indexed = time.perf_counter()
    con.execute("COMMIT")
    done = time.perf_counter()
    con.close()
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(scratch + suffix).unlink(missing_ok=True)
    out.put({"seconds": done - start, "cpu": cpu_seconds() - cpu, "peak_mb": peak_mb(),
             "steps": {"insert": inserted - start, "indexes": indexed - inserted,
                       "commit": done - indexed}})


def _second(r: dict[str, Any]) -> str:
    peak = r.get("second_peak_mb", 0)
    return f"; second process peak {peak:,.0f} MB" if peak else ""


def _snapshot(engine: sa.Engine) -> tuple[int, int, int]:
    """Ledger rows, their points and the members' balance total: the figures both ways share."""
    lg, st = t.points_ledger, t.loyalty_status
    with engine.connect() as conn:
        rows, points = conn.execute(sa.select(sa.func.count(), sa.func.sum(lg.c.points))).one()
        balance = conn.execute(sa.select(sa.func.sum(st.c.points_balance))).scalar()
    return int(rows), int(points or 0), int(balance or 0)


def one_day_of_orders(engine: sa.Engine, day: pd.Timestamp, share: float, seed: int) -> int:
    """New orders on ``day`` from ``share`` of the customers."""
    with engine.connect() as conn:
        ids = np.array(conn.execute(sa.select(t.customers.c.id)).scalars().all())
        top = conn.execute(sa.select(sa.func.max(t.orders.c.id))).scalar() or 0
    rng = np.random.default_rng(seed)
    who = rng.choice(ids, size=max(1, int(len(ids) * share)), replace=False)
    orders = pd.DataFrame({"external_id": [f"day-{top + i + 1}" for i in range(len(who))],
                           "customer_id": who, "ordered_at": day + pd.Timedelta(hours=12),
                           "amount": np.round(rng.gamma(2.0, 30.0, len(who)), 2),
                           "status": "completed"})
    with engine.begin() as conn:
        write_frame(conn, t.orders, orders)
    return len(orders)


def copy_database(engine: sa.Engine, url: str) -> str:
    """A copy of the store: the SQLite file, or a PostgreSQL database made from it."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        src = Path(engine.url.database or "")
        dst = src.with_name(src.stem + "-naive.db")
        shutil.copyfile(src, dst)
        return f"sqlite:///{dst}"
    engine.dispose()
    name = f"{engine.url.database}_naive"
    admin = sa.create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{engine.url.database}"')
    admin.dispose()
    return engine.url.set(database=name).render_as_string(hide_password=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database", help="database URL (default: a new SQLite file in a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="use the store already in --database")
    args = ap.parse_args()
    url = args.database or f"sqlite:///{tempfile.mkdtemp(prefix='clm-bench-')}/bench.db"
    engine = open_database(url)
    with engine.connect() as conn:
        n_orders = conn.execute(sa.select(sa.func.count()).select_from(t.orders)).scalar() or 0
    if not (args.reuse and n_orders):
        print("loading: " + "; ".join(load_synthetic(engine, args.customers,
                                                     seed=args.seed).lines()), flush=True)
    with engine.begin() as conn:  # every measured run starts from a store without points
        for table in (t.tier_transitions, t.loyalty_status, t.loyalty_state, t.points_ledger):
            conn.execute(table.delete())
        conn.execute(t.events.delete().where(t.events.c.event_type == "loyalty_reward"))
        conn.execute(t.orders.delete().where(t.orders.c.external_id.like("day-%")))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    with engine.connect() as conn:
        n_customers = conn.execute(sa.select(sa.func.count()).select_from(t.customers)).scalar()
        n_orders = conn.execute(sa.select(sa.func.count()).select_from(t.orders)).scalar()
        last = pd.Timestamp(conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar())
    day0 = last.normalize() + pd.Timedelta(hours=23)
    print(f"store: {n_customers:,} customers, {n_orders:,} orders up to {last:%Y-%m-%d}; "
          f"{engine.dialect.name}; {mp.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    first = measured(_evaluate, url, day0.to_pydatetime(), False)
    print(line("full history", first) + f"  {first.get('rows', 0):,} ledger rows, "
          f"{first.get('members', 0):,} members{_second(first)}", flush=True)
    if engine.dialect.name == "sqlite" and first.get("rows"):
        store = str(engine.url.database)
        for journal in ("WAL", "DELETE"):
            floor = measured(_floor, store, first["rows"], journal)
            print(line(f"floor, {journal.lower()} journal", floor)
                  + f"  bare sqlite3, {first['rows']:,} rows, wall clock by step", flush=True)
    day1 = day0 + pd.Timedelta(days=1)
    added = one_day_of_orders(engine, day1.normalize(), 0.002, args.seed)
    print(f"one day: {added:,} new orders", flush=True)
    copy = copy_database(engine, url)  # the naive way runs on an identical copy
    incremental = measured(_evaluate, url, day1.to_pydatetime(), False)
    naive = measured(_evaluate, copy, day1.to_pydatetime(), True)
    after_inc, after_naive = _snapshot(engine), _snapshot(open_database(copy))
    print(line("one day, incremental", incremental)
          + f"  {incremental.get('evaluated', 0):,} customers evaluated{_second(incremental)}",
          flush=True)
    print(line("one day, naive (full)", naive)
          + f"  {naive.get('evaluated', 0):,} customers evaluated{_second(naive)}", flush=True)
    same = "the same" if after_inc[0] == after_naive[0] and after_inc[1] == after_naive[1] \
        else f"DIFFERENT ({after_inc} vs {after_naive})"
    print(f"incremental is {naive['seconds'] / incremental['seconds']:.1f}x faster than naive "
          f"(CPU {naive['cpu'] / incremental['cpu']:.1f}x); ledger after the day: {same}; "
          f"load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
