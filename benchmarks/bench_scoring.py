"""Lifecycle scoring at scale: CLM's pipeline beside the naive pandas + lifetimes pipeline.

    python benchmarks/bench_scoring.py [--customers 1000000] [--database URL] [--reuse]

Loads a synthetic store (about five orders per customer) unless ``--reuse`` finds one, fits the
models once (reported apart: fits run less often than scoring), then measures, each in a fresh
process so peak memory is its own:

- clm, first scoring: features in SQL + scores + RFM + stages + transitions + writes, for a
  database that has never been scored (every customer gets a first stage);
- clm, next day: the same one day later (the daily run: few stage changes);
- naive: every order into pandas, lifetimes' ``summary_data_from_transaction_data``, its
  BG/NBD and Gamma-Gamma fitters, P(alive), expected purchases and ``customer_lifetime_value``
  (no stages, no writes).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import cpu_seconds as _cpu  # noqa: E402
from benchmarks.measure import line, measured
from benchmarks.measure import peak_mb as _peak_mb
from clm_core.db import tables as t  # noqa: E402
from clm_core.db.engine import make_engine  # noqa: E402
from clm_core.db.migrate import open_database  # noqa: E402
from clm_core.ingest.synthetic import load_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _clm_run(url: str, as_of: date, out: Any) -> None:
    from clm_core.lifecycle.pipeline import LifecycleConfig, score

    engine = make_engine(url)
    start, cpu = time.perf_counter(), _cpu()
    report = score(engine, LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml"), as_of)
    out.put({"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "peak_mb": _peak_mb(),
             "steps": report.seconds, "transitions": report.transitions,
             "customers": report.customers, "stages": report.stages})


def _naive_run(url: str, as_of: date, out: Any) -> None:
    import warnings

    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    warnings.simplefilter("ignore")
    engine = make_engine(url)
    start, cpu = time.perf_counter(), _cpu()
    steps: dict[str, float] = {}
    with engine.connect() as conn:
        tx = pd.read_sql(
            sa.select(t.orders.c.customer_id, t.orders.c.ordered_at, t.orders.c.amount), conn
        )
    steps["read orders"] = time.perf_counter() - start
    mark = time.perf_counter()
    s = summary_data_from_transaction_data(
        tx,
        "customer_id",
        "ordered_at",
        monetary_value_col="amount",
        observation_period_end=pd.Timestamp(as_of),
        freq="D",
    )
    steps["summary"] = time.perf_counter() - mark
    mark = time.perf_counter()
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(s["frequency"], s["recency"], s["T"])
    repeat = s[(s["frequency"] > 0) & (s["monetary_value"] > 0)]
    ggf = GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
    steps["fit"] = time.perf_counter() - mark
    mark = time.perf_counter()
    s["p_alive"] = bgf.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
    for days in (30, 90):
        s[f"e{days}"] = bgf.conditional_expected_number_of_purchases_up_to_time(
            days, s["frequency"], s["recency"], s["T"])
    s["aov"] = ggf.conditional_expected_average_profit(s["frequency"], s["monetary_value"])
    s["clv"] = ggf.customer_lifetime_value(
        bgf,
        s["frequency"],
        s["recency"],
        s["T"],
        s["monetary_value"],
        time=12,
        discount_rate=0.008,
        freq="D",
    )
    steps["scores"] = time.perf_counter() - mark
    out.put({"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "peak_mb": _peak_mb(),
             "steps": steps, "customers": len(s)})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database", help="database URL (default: a new SQLite file in a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="use the store already in --database")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-timeout", type=float, default=1800)
    args = ap.parse_args()
    url = args.database or f"sqlite:///{tempfile.mkdtemp(prefix='clm-bench-')}/bench.db"
    engine = open_database(url)
    with engine.connect() as conn:
        n_orders = conn.execute(sa.select(sa.func.count()).select_from(t.orders)).scalar() or 0
    if not (args.reuse and n_orders):
        print(
            "loading: " + "; ".join(load_synthetic(engine, args.customers, seed=args.seed).lines()),
            flush=True,
        )
    if engine.dialect.name == "sqlite":  # fold the load's write-ahead log into the file
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    with engine.begin() as conn:  # every measured run starts from a never-scored store
        conn.execute(t.stage_transitions.delete())
        conn.execute(t.customer_scores.delete())
        conn.execute(t.model_fits.delete())
    with engine.connect() as conn:
        n_customers = conn.scalar(sa.select(sa.func.count()).select_from(t.customers)) or 0
        n_orders = conn.scalar(sa.select(sa.func.count()).select_from(t.orders)) or 0
        last = conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar()
    as_of = pd.Timestamp(last).date()
    print(f"store: {n_customers:,} customers, {n_orders:,} orders, as of {as_of}; "
          f"{engine.dialect.name}; {mp.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    from clm_core.lifecycle.pipeline import LifecycleConfig, fit

    start = time.perf_counter()
    fitted = fit(engine, LifecycleConfig(time_unit="day"), as_of=as_of)
    print(
        f"fit (not in the figures below): {time.perf_counter() - start:.1f} s; "
        + ", ".join(
            f"{k} {v:.4g}" for k, v in {**fitted.purchases.params, **fitted.spend.params}.items()
        ),
        flush=True,
    )
    engine.dispose()

    first = measured(_clm_run, url, as_of)
    print(line("clm, first scoring", first), flush=True)
    daily = measured(_clm_run, url, as_of + timedelta(days=1))
    print(line("clm, next day", daily), flush=True)
    print(f"  stages: {first.get('stages')}; transitions: first {first.get('transitions', 0):,}, "
          f"next day {daily.get('transitions', 0):,}", flush=True)
    if not args.skip_naive:
        naive = measured(_naive_run, url, as_of, timeout=args.naive_timeout)
        print(line("naive pandas+lifetimes", naive), flush=True)
        print(
            f"clm first scoring is {naive['seconds'] / first['seconds']:.1f}x faster than naive "
            f"(CPU {naive['cpu'] / first['cpu']:.1f}x); next-day scoring "
            f"{naive['seconds'] / daily['seconds']:.1f}x (CPU {naive['cpu'] / daily['cpu']:.1f}x); "
            f"load average now {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
