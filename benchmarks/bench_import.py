"""Import speed: a synthetic store's CSV files into fresh SQLite and PostgreSQL databases.

    ./run.sh bench bench_import [--orders 1000000] [--backends sqlite,postgresql]

Generates ``customers.csv`` and ``orders.csv`` with ``clm_core.ingest.synthetic`` (about five
orders a customer), then times ``clm import customers`` and ``clm import orders`` through
``import_csv`` on each database, each backend in its own process so that peak memory is its own.
Per stage (read, validate, write) it prints wall time, CPU time and the peak resident memory of
the process; for PostgreSQL also the CPU time of the server process that did the work.

The baseline, measured in the same run on the same files: ``pandas.read_csv`` plus
``DataFrame.to_sql`` (its default: an ``executemany`` of one-row INSERTs, no validation) of the
first ``--baseline-rows`` orders into the same orders table, extrapolated linearly to all orders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GOAL_SECONDS = 30.0


def _generate(directory: Path, n_orders: int, seed: int) -> dict[str, int]:
    from clm_core.ingest.synthetic import generate_frames, save_csv

    customers, orders = generate_frames(math.ceil(n_orders / 4.9), seed=seed)
    orders = orders.iloc[:n_orders]
    save_csv(directory, customers, orders)
    return {"customers": len(customers), "orders": len(orders)}


class PeakMemory:
    """Samples this process's resident memory every 20 ms; keeps the peak per stage."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.stage = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = self._proc.memory_info().rss / 2**20
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), mb)
            self._stop.wait(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _server_cpu(engine: Any) -> Any:
    """CPU seconds used so far by the PostgreSQL backend serving ``engine``'s pooled
    connection (None on SQLite, whose work is done in this process)."""
    if engine.dialect.name != "postgresql":
        return lambda: 0.0
    import psutil

    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    proc = psutil.Process(pid)
    return lambda: sum(proc.cpu_times()[:2])


def _child(backend: str, data: Path, baseline_rows: int) -> dict[str, Any]:
    from clm_core.db.engine import make_engine
    from clm_core.ingest.importer import import_csv
    from clm_core.testing import DatabaseFactory

    factory = DatabaseFactory(backend, Path(tempfile.mkdtemp(prefix=f"clm-bench-{backend}-")))
    out: dict[str, Any] = {"backend": backend, "imports": []}
    memory = PeakMemory()
    try:
        url = factory.create()
        # One pooled connection on PostgreSQL: the server process measured is the one working.
        engine = make_engine(url) if backend == "sqlite" else make_engine(url, pool_size=1)
        server = _server_cpu(engine)
        # The same orders file twice: the second run must change nothing.
        for entity, label in (("customers", "customers"), ("orders", "orders"),
                              ("orders", "again")):
            memory.stage = f"{label}.start"
            wall, cpu, srv = time.perf_counter(), time.process_time(), server()
            report = import_csv(engine, entity, data / f"{entity}.csv",
                                rejects=data / f"rejects-{backend}-{entity}.csv",
                                on_stage=lambda s, e=label: setattr(memory, "stage", f"{e}.{s}"))
            out["imports"].append({
                "entity": label, "rows": report.rows_read, "imported": report.imported,
                "unchanged": report.unchanged,
                "rejected": report.rejected, "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu, "server_cpu": server() - srv,
                "stages": {name: [w, c, memory.peaks.get(f"{label}.{name}", 0.0)]
                           for name, (w, c) in report.stages.items()},
                "peak_mb": max(v for k, v in memory.peaks.items() if k.startswith(label))})
        engine.dispose()
        factory.drop(url)
        out["baseline"] = _baseline(factory, data, baseline_rows)
    finally:
        memory.close()
        factory.close()
    return out


def _baseline(factory: Any, data: Path, rows: int) -> dict[str, float]:
    """pandas read_csv + to_sql of the first ``rows`` orders (customers loaded untimed)."""
    import pandas as pd
    import sqlalchemy as sa

    from clm_core.db import tables as t
    from clm_core.db.engine import make_engine
    from clm_core.ingest.importer import import_csv

    url = factory.create()
    engine = make_engine(url)
    try:
        import_csv(engine, "customers", data / "customers.csv", rejects=os.devnull)
        started, cpu = time.perf_counter(), time.process_time()
        df = pd.read_csv(data / "orders.csv", nrows=rows)
        with engine.connect() as conn:
            ids = pd.read_sql(sa.select(t.customers.c.id, t.customers.c.external_id), conn)
        df["customer_id"] = df["customer_id"].map(ids.set_index("external_id")["id"])
        df["ordered_at"] = pd.to_datetime(df["ordered_at"]).dt.tz_localize(None)
        df.to_sql("orders", engine, if_exists="append", index=False)
        return {"rows": len(df), "wall": time.perf_counter() - started,
                "cpu": time.process_time() - cpu}
    finally:
        engine.dispose()
        factory.drop(url)


def _print(results: list[dict[str, Any]], n_orders: int, load: tuple[float, float]) -> None:
    print(f"\nload average (1 min) before/after: {load[0]:.1f} / {load[1]:.1f} on "
          f"{os.cpu_count()} CPUs (other work on the machine slows wall times, not CPU times)")
    print(f"\n{'database':<11}{'import':<11}{'stage':<10}{'rows':>11}{'wall s':>8}{'cpu s':>7}"
          f"{'db cpu s':>9}{'rows/s':>10}{'peak MB':>9}")
    for r in results:
        for imp in r["imports"]:
            print(f"{r['backend']:<11}{imp['entity']:<11}{'total':<10}{imp['rows']:>11,}"
                  f"{imp['wall']:>8.1f}{imp['cpu']:>7.1f}{imp['server_cpu']:>9.1f}"
                  f"{imp['rows'] / imp['wall']:>10,.0f}{imp['peak_mb']:>9,.0f}")
            for name, (wall, cpu, peak) in imp["stages"].items():
                print(f"{'':<22}{name:<10}{'':>11}{wall:>8.1f}{cpu:>7.1f}{'':>9}"
                      f"{imp['rows'] / wall if wall else 0:>10,.0f}{peak:>9,.0f}")
    print("\n| database | orders | seconds | rows/s | CPU s (client + db) | peak MB "
          "| customers import s | same orders again s | naive baseline s (extrapolated) "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cust, orders, again = r["imports"]
        base = r["baseline"]
        naive = base["wall"] / base["rows"] * orders["rows"]
        print(f"| {r['backend']} | {orders['rows']:,} | {orders['wall']:.1f} "
              f"| {orders['rows'] / orders['wall']:,.0f} "
              f"| {orders['cpu']:.1f} + {orders['server_cpu']:.1f} | {orders['peak_mb']:,.0f} "
              f"| {cust['wall']:.1f} ({cust['rows']:,} rows) | {again['wall']:.1f} "
              f"| {naive:,.1f} ({base['rows']:,} rows in {base['wall']:.1f}) "
              f"| {naive / orders['wall']:.0f}x |")
    for r in results:
        orders = r["imports"][1]
        verdict = "meets" if orders["wall"] < GOAL_SECONDS else "MISSES"
        print(f"{r['backend']}: {orders['rows']:,} orders in {orders['wall']:.1f}s: {verdict} the "
              f"{GOAL_SECONDS:.0f}s goal")
        if orders["rejected"] or orders["imported"] != orders["rows"]:
            print(f"  warning: {orders['rejected']} rows rejected")
        again = r["imports"][2]
        if again["unchanged"] != again["rows"]:
            print(f"  warning: importing the same orders again changed "
                  f"{again['rows'] - again['unchanged']:,} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, Path(args.data), args.baseline_rows)))
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="clm-bench-import-") as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        sizes = _generate(data, args.orders, args.seed)
        mb = sum(f.stat().st_size for f in data.glob("*.csv")) / 2**20
        print(f"generated {sizes['customers']:,} customers and {sizes['orders']:,} orders "
              f"({mb:,.0f} MB of CSV) in {time.perf_counter() - started:.1f}s")
        results = []
        for backend in args.backends.split(","):
            print(f"importing into {backend} ...", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", backend, "--data", str(data),
                 "--baseline-rows", str(min(args.baseline_rows, args.orders))],
                capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{backend} run failed:\n{proc.stderr}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    _print(results, args.orders, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
