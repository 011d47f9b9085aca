"""The journey evaluation's parts at scale, each timed alone: load the snapshot, plan, write.

    python benchmarks/bench_plan_write.py [--customers 1000000] [--databases sqlite,postgresql]
                                          [--cache DIR] [--code DIR]

Takes ``bench_daily``'s cached base store (built first when missing: scored, journeys evaluated
the morning after the last order day), copies it, and evaluates the journeys one day later
(without rescoring): in this store the waits of about half the enrollments end, so the write
changes hundreds of thousands of them. Each part runs in a fresh process; wall and CPU seconds
of this process (SQLite works in it), and on PostgreSQL the server's CPU of the write.

``--code DIR`` measures the clm_core of another checkout (an earlier commit, for a before and
after on the same store and machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _evaluate(url: str, out: Any) -> None:
    """Load, plan and write as ``clm_core.journeys.run.evaluate`` does, each part timed."""
    import pandas as pd
    import sqlalchemy as sa

    from benchmarks.bench_daily import _server_cpu, last_day, morning_after, settings_for
    from benchmarks.measure import cpu_seconds, peak_mb
    from clm_core.db import tables as t
    from clm_core.db.engine import make_engine
    from clm_core.journeys.engine import plan
    from clm_core.journeys.store import (
        load_journeys,
        load_previous,
        load_snapshot,
        project_policy,
        sync_versions,
        write_plan,
    )

    engine = make_engine(url)
    settings = settings_for(url)
    now = morning_after(last_day(engine) + timedelta(days=1))
    policy = project_policy(settings.section("journeys"))
    journeys = [j for j in load_journeys(settings.journeys_dir, policy)
                if j.spec.status != "draft"]
    parts: dict[str, tuple[float, float]] = {}
    with engine.begin() as conn:
        sync_versions(conn, journeys, now)
        e = t.journey_enrollments
        in_use = conn.execute(sa.select(e.c.journey, e.c.journey_version).distinct()
                              .where(e.c.status == "active")).all()
        current = {j.key for j in journeys}
        everything = journeys + load_previous(conn, [(r[0], r[1]) for r in in_use
                                                     if (r[0], r[1]) not in current], policy)
        mark, cpu = time.perf_counter(), cpu_seconds()
        snap = load_snapshot(conn, everything, now, policy)
        parts["load"] = (time.perf_counter() - mark, cpu_seconds() - cpu)
        mark, cpu = time.perf_counter(), cpu_seconds()
        result = plan(everything, snap, pd.Timestamp(now), policy, settings.default_timezone)
        parts["plan"] = (time.perf_counter() - mark, cpu_seconds() - cpu)
        del snap
        server = _server_cpu(engine)
        mark, cpu = time.perf_counter(), cpu_seconds()
        written = write_plan(conn, result)
    parts["write"] = (time.perf_counter() - mark, cpu_seconds() - cpu)  # commit included
    server = _server_cpu(engine) - server
    engine.dispose()
    out.put({"parts": parts, "server_cpu": server, "peak_mb": peak_mb(),
             "written": written.__dict__})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "clm-bench-daily"))
    ap.add_argument("--code", help="the checkout whose clm_core is measured (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.code:  # first on the path, for this process and the measured ones
        sys.path.insert(0, str(Path(args.code).resolve()))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(args.code).resolve()), str(ROOT)])
    from benchmarks.bench_daily import base_store, copy_of, drop
    from benchmarks.measure import measured

    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="clm-plan-write-") as tmp:
        for backend in args.databases.split(","):
            base = base_store(backend, args.customers, args.seed, Path(args.cache))
            url = copy_of(base, "plan_write", Path(tmp))
            r = measured(_evaluate, url)
            drop(url)
            if "error" in r:
                print(f"{backend}: {r['error']}", flush=True)
                continue
            parts = ", ".join(f"{k} {w:.1f} s wall / {c:.1f} s CPU"
                              for k, (w, c) in r["parts"].items())
            server = f" (+ {r['server_cpu']:.1f} s server CPU in the write)" \
                if r["server_cpu"] else ""
            print(f"{backend}: {parts}{server}; peak {r['peak_mb']:,.0f} MB; "
                  f"written {r['written']}; load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
