"""The store report at scale: ``clm report`` on a scored store beside a naive pandas baseline.

    python benchmarks/bench_report.py [--customers 1000000] [--enrollments 200000]
                                      [--database URL] [--reuse]

Loads a synthetic store (about five orders per customer) unless ``--reuse`` finds one, fits and
scores it (not timed), adds journey enrollments with control groups and sent messages (bulk),
then measures, each in a fresh process so peak memory is its own:

- attribution: the ``attributions`` table rebuilt for every enrollment;
- clm report: every figure (lifecycle, value, churn, journeys and lift, model check,
  deliverability) collected and one HTML file written; its size;
- naive: every order and score read into pandas and only the retention curves and the stage
  table computed there (the part of the report a hand-written script would start with).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_scoring import _cpu, _peak_mb, line, measured  # noqa: E402
from clm_core.db import tables as t  # noqa: E402
from clm_core.db.bulk import write_frame  # noqa: E402
from clm_core.db.engine import make_engine  # noqa: E402
from clm_core.db.migrate import open_database  # noqa: E402
from clm_core.ingest.synthetic import load_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOURCE = (REPO / "journeys" / "winback.yaml").read_text(encoding="utf-8")


def _attribute(url: str, now: Any, out: Any) -> None:
    from clm_core.measure.attribution import rebuild

    engine = make_engine(url)
    start, cpu = time.perf_counter(), _cpu()
    r = rebuild(engine, now)
    out.put({"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "peak_mb": _peak_mb(),
             "steps": {}, "rows": r.enrollments})


def _report(url: str, path: str, out: Any) -> None:
    from clm_core.journeys.loader import load_journey
    from clm_core.journeys.store import journey_files
    from clm_core.measure.html import write_report

    engine = make_engine(url)
    journeys = [load_journey(p) for p in journey_files(REPO / "journeys")]
    start, cpu = time.perf_counter(), _cpu()
    written, _ = write_report(engine, path, None, "en", journeys)
    out.put({"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "peak_mb": _peak_mb(),
             "steps": {}, "bytes": written.stat().st_size})


def _naive(url: str, out: Any) -> None:
    engine = make_engine(url)
    start, cpu = time.perf_counter(), _cpu()
    with engine.connect() as conn:
        orders = pd.read_sql(
            sa.select(t.orders.c.customer_id, t.orders.c.ordered_at, t.orders.c.amount), conn
        )
        scores = pd.read_sql(
            sa.select(
                t.customer_scores.c.customer_id,
                t.customer_scores.c.stage,
                t.customer_scores.c.total_spend,
                t.customer_scores.c.clv_12m,
            ),
            conn,
        )
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"])
    first = orders.groupby("customer_id")["ordered_at"].min().dt.to_period("M").rename("cohort")
    orders = orders.join(first, on="customer_id")
    orders["k"] = (orders["ordered_at"].dt.to_period("M") - orders["cohort"]).apply(lambda p: p.n)
    active = orders.groupby(["cohort", "k"])["customer_id"].nunique().unstack(fill_value=0)
    _ = active.div(first.value_counts(), axis=0)
    _ = scores.groupby("stage").agg(n=("customer_id", "size"), revenue=("total_spend", "sum"),
                                    clv=("clv_12m", "sum"))
    out.put({"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "peak_mb": _peak_mb(),
             "steps": {}})


def _enroll(engine: sa.Engine, n: int, as_of: date, seed: int) -> None:
    """``n`` winback enrollments (10% control) entered the day after ``as_of``, a sent email
    per treated one."""
    rng = np.random.default_rng(seed)
    with engine.connect() as conn:
        ids = np.array(conn.execute(sa.select(t.customers.c.id)).scalars().all())
    ids = np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))
    entered = pd.Timestamp(as_of) + pd.Timedelta(days=1, hours=10)
    control = rng.random(len(ids)) < 0.1
    with engine.begin() as conn:
        conn.execute(t.messages.delete())
        conn.execute(t.attributions.delete())
        conn.execute(t.journey_enrollments.delete())
        conn.execute(t.journey_versions.delete())
        write_frame(conn, t.journey_versions, pd.DataFrame([{
            "journey": "winback", "version": 1, "content_hash": "bench", "status": "active",
            "definition": {"source": SOURCE, "file": "winback.yaml"}, "created_at": entered}]))
        write_frame(conn, t.journey_enrollments, pd.DataFrame({
            "id": np.arange(1, len(ids) + 1), "journey": "winback", "journey_version": 1,
            "customer_id": ids, "entry_seq": 1, "status": "completed", "is_control": control,
            "entered_at": entered}), bulk=True)
        treated = np.flatnonzero(~control) + 1
        write_frame(conn, t.messages, pd.DataFrame({
            "idempotency_key": [f"winback/offer/{i}" for i in treated], "enrollment_id": treated,
            "customer_id": ids[treated - 1], "journey": "winback", "journey_version": 1,
            "step_id": "offer", "channel": "email", "status": "sent", "send_after": entered,
            "created_at": entered, "updated_at": entered, "sent_at": entered}), bulk=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--enrollments", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database", help="database URL (default: a new SQLite file in a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="use the store already in --database")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="clm-bench-report-")
    url = args.database or f"sqlite:///{tmp}/bench.db"
    engine = open_database(url)
    with engine.connect() as conn:
        scored = (
            conn.execute(sa.select(sa.func.count()).select_from(t.customer_scores)).scalar() or 0
        )
        last = conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar()
    if not (args.reuse and scored):
        print(
            "loading: " + "; ".join(load_synthetic(engine, args.customers, seed=args.seed).lines()),
            flush=True,
        )
        with engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar()
        from clm_core.lifecycle.pipeline import LifecycleConfig, fit, score

        config = LifecycleConfig(time_unit="day", rules=REPO / "journeys" / "lifecycle.yaml")
        as_of = pd.Timestamp(last).date() - timedelta(days=90)
        start = time.perf_counter()
        fit(
            engine, config, as_of=as_of, holdout_end=pd.Timestamp(last).date()
        )  # with a model check
        score(engine, config, as_of=as_of)
        print(f"fit and score (not timed below): {time.perf_counter() - start:.1f} s", flush=True)
    with engine.connect() as conn:
        as_of = pd.Timestamp(
            conn.execute(sa.select(sa.func.max(t.customer_scores.c.as_of))).scalar()
        ).date()
    _enroll(engine, args.enrollments, as_of, args.seed)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    with engine.connect() as conn:
        n_customers = conn.execute(sa.select(sa.func.count()).select_from(t.customers)).scalar()
        n_orders = conn.execute(sa.select(sa.func.count()).select_from(t.orders)).scalar()
        n_enr = conn.execute(sa.select(sa.func.count()).select_from(t.journey_enrollments)).scalar()
    print(
        f"store: {n_customers:,} customers, {n_orders:,} orders, {n_enr:,} enrollments, scored as "
        f"of {as_of}; {engine.dialect.name}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    engine.dispose()

    attributed = measured(_attribute, url, pd.Timestamp(last).to_pydatetime())
    print(
        line("attribution rebuild", attributed) + f"  {attributed.get('rows', 0):,} rows",
        flush=True,
    )
    path = f"{tmp}/report.html"
    report = measured(_report, url, path)
    print(line("clm report", report) + f"  {report.get('bytes', 0) / 1e6:.2f} MB HTML", flush=True)
    naive = measured(_naive, url)
    print(line("naive pandas (2 tables)", naive), flush=True)
    print(f"clm report (every section) {report['seconds']:.1f} s wall, {report['cpu']:.1f} s CPU "
          f"vs naive retention + stage table {naive['seconds']:.1f} s wall, {naive['cpu']:.1f} s "
          f"CPU; load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
