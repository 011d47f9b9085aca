"""Does ``clm lift`` recover planted effects? Coverage over seeded simulated stores.

Each seed is one simulated store (``clm_core.simulate.scenario``: journeys ``boost`` +50%
purchase rate, ``placebo`` no effect, ``costly`` a 50% coupon redeemed 90% of the time with a
+5% lift), run with the real lifecycle in process (scoring, journeys, dispatch to the sandbox
providers) on the simulated clock, then the real attribution and ``lift``. For every journey the
true effect is computed from the generating process in the report's own estimand (both
potential outcomes of every enrollment, common random numbers; ``clm_core.simulate.truth``).

Printed: how often the 95% interval covers the true effect (conversion points and revenue per
customer; target at least 90 of 100), how often the zero effect is called a winner (target at
most 5 of 100), and the costly journey's net incremental revenue (must be negative), with the
wall and CPU seconds per store beside the baseline of one store's history import (the
``load_synthetic`` bulk write of the same number of customers, measured in the same run).

    .venv/bin/python benchmarks/bench_lift_coverage.py --seeds 100 --jobs 2
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.measure import cpu_seconds  # noqa: E402


def _project(base: Path, sandbox_url: str) -> Path:
    from clm.project import create_project
    from clm_core.simulate.scenario import write_scenario

    project = base / "template"
    create_project(project, "UTC", "US", "en", "USD")
    write_scenario(project)
    toml = project / "clm.toml"
    toml.write_text(toml.read_text().replace('# sandbox_url = "http://127.0.0.1:8025"',
                                             f'sandbox_url = "{sandbox_url}"'))
    return project


def _worker(args: tuple[list[int], int, int, int, str, Any]) -> None:
    """Run ``seeds`` one after the other in this process, each in a fresh copy of a project
    on SQLite, with one sandbox; put one row per journey and seed on the queue."""
    seeds, customers, days, every, base, queue = args
    from clm_core.delivery.sandbox import SandboxServer
    from clm_core.simulate.scenario import copy_project, measure_store

    with SandboxServer("127.0.0.1", 0, None) as sandbox:
        template = _project(Path(base) / f"w{seeds[0]}", sandbox.url)
        for seed in seeds:
            started, cpu = time.perf_counter(), cpu_seconds()
            project = copy_project(template, Path(base) / f"seed-{seed}")
            rows: list[dict[str, Any]] = []
            try:
                measured = measure_store(project, seed, customers, days, every)
            except Exception as exc:  # noqa: BLE001  (a failed store is counted, not fatal)
                queue.put({"seed": seed, "rows": [], "error": f"{type(exc).__name__}: {exc}",
                           "seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu})
                continue
            for m in measured:
                c, tr = m.report, m.truth
                rows.append({
                    "seed": seed, "journey": m.journey, "treated": c.treated,
                    "control": c.control, "conv": c.conversion.diff,
                    "conv_ci": c.conversion.diff_ci, "true_conv": tr.conversion_effect,
                    "rev": c.revenue.diff, "rev_ci": c.revenue.diff_ci,
                    "true_rev": tr.revenue_effect, "call": c.verdict.call,
                    "rev_call": c.revenue_verdict.call, "net": c.net_incremental_revenue,
                    "net_ci": c.net_incremental_revenue_ci, "true_net": m.true_net,
                    "cost": c.coupon_cost})
            queue.put({"seed": seed, "rows": rows, "seconds": time.perf_counter() - started,
                       "cpu": cpu_seconds() - cpu})
            for path in project.glob("clm.db*"):
                path.unlink()


def _baseline(customers: int, base: str) -> tuple[float, float]:
    """Wall and CPU seconds to write one store's whole synthetic history (the same customers)."""
    from clm_core.db.migrate import open_database
    from clm_core.ingest.synthetic import load_synthetic

    engine = open_database(f"sqlite:///{base}/baseline.db")
    started, cpu = time.perf_counter(), cpu_seconds()
    load_synthetic(engine, customers, seed=0)
    engine.dispose()
    return time.perf_counter() - started, cpu_seconds() - cpu


def inside(ci: tuple[float, float], x: float) -> bool:
    return ci[0] <= x <= ci[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--every", type=int, default=7, help="days between lifecycle steps")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="clm-coverage-") as base:
        base_wall, base_cpu = _baseline(a.customers, base)
        started = time.perf_counter()
        procs = [ctx.Process(target=_worker, args=((seeds[j::a.jobs], a.customers, a.days,
                                                    a.every, base, queue),))
                 for j in range(a.jobs) if seeds[j::a.jobs]]
        for p in procs:
            p.start()
        results = []
        while len(results) < len(seeds):
            results.append(queue.get(timeout=1800))
            r = results[-1]
            if r.get("error"):
                print(f"  seed {r['seed']:>3}: failed: {r['error']}", flush=True)
                continue
            print(f"  seed {r['seed']:>3}: {r['seconds']:.1f}s wall, {r['cpu']:.1f}s CPU  "
                  + "  ".join(f"{x['journey']} {100 * x['conv']:+.1f} pts "
                              f"(true {100 * x['true_conv']:+.1f}"
                              f"{', covered' if inside(x['conv_ci'], x['true_conv']) else ''}"
                              f"{', rev covered' if inside(x['rev_ci'], x['true_rev']) else ''})"
                              for x in r["rows"]),
                  flush=True)
        for p in procs:
            p.join()
        wall = time.perf_counter() - started
    rows = [x for r in results for x in r["rows"]]
    n = len(results)
    failed = [r["seed"] for r in results if r.get("error")]
    print(f"\n{n - len(failed)} of {n} simulated stores completed"
          + (f" (failed: seeds {failed})" if failed else ""))
    print(f"{n} simulated stores of {a.customers:,} customers, {a.days} days, the lifecycle "
          f"every {a.every} days (seeds {seeds[0]}-{seeds[-1]})")
    print("method: 95% intervals of clm lift (Newcombe hybrid score for conversion points, "
          "Welch t for revenue per customer); true effect = mean over the journey's complete "
          "enrollments of Y(1) - Y(0) from both simulated potential outcomes (common random "
          "numbers); a winner is a verdict of better on either figure, which clm lift calls "
          "on each figure's 97.5% interval (Bonferroni over the two)")
    print(f"{'journey':<8} {'stores':>6} {'treated':>8} {'control':>8} {'true conv':>10} "
          f"{'est conv':>9} {'covered':>8} {'true rev':>9} {'est rev':>8} {'covered':>8} "
          f"{'winner':>7}")
    for journey in sorted({x["journey"] for x in rows}):
        mine = [x for x in rows if x["journey"] == journey and not math.isnan(x["conv"])]
        k = len(mine)
        cov = sum(inside(x["conv_ci"], x["true_conv"]) for x in mine)
        cov_r = sum(inside(x["rev_ci"], x["true_rev"]) for x in mine)
        winners = sum(x["call"] == "better" or x["rev_call"] == "better" for x in mine)
        mean = lambda key: sum(x[key] for x in mine) / max(k, 1)  # noqa: E731
        print(f"{journey:<8} {k:>6} {mean('treated'):>8.0f} {mean('control'):>8.0f} "
              f"{100 * mean('true_conv'):>+9.2f}p {100 * mean('conv'):>+8.2f}p "
              f"{cov:>4}/{k:<3} {mean('true_rev'):>+9.2f} {mean('rev'):>+8.2f} "
              f"{cov_r:>4}/{k:<3} {winners:>3}/{k:<3}")
    placebo = [x for x in rows if x["journey"] == "placebo"]
    false_wins = sum(x["call"] == "better" or x["rev_call"] == "better" for x in placebo)
    conv_wins = sum(x["call"] == "better" for x in placebo)
    rev_wins = sum(x["rev_call"] == "better" for x in placebo)
    print(f"\nzero effect (placebo) called a winner (conversion or revenue): {false_wins} of "
          f"{len(placebo)} (target at most 5 of 100); by conversion {conv_wins}, by revenue "
          f"{rev_wins}")
    costly = [x for x in rows if x["journey"] == "costly"]
    if costly:
        neg = sum(x["net"] < 0 for x in costly)
        neg_ci = sum(x["net_ci"][1] < 0 for x in costly)
        cov_net = sum(inside(x["net_ci"], x["true_net"]) for x in costly)
        print(f"costly coupon: net incremental revenue negative in {neg} of {len(costly)} "
              f"stores (95% interval wholly below zero in {neg_ci}); mean net "
              f"{sum(x['net'] for x in costly) / len(costly):+,.0f} (true "
              f"{sum(x['true_net'] for x in costly) / len(costly):+,.0f}, coupon cost "
              f"{sum(x['cost'] for x in costly) / len(costly):,.0f}); interval covers the "
              f"true net in {cov_net} of {len(costly)}")
    boost = [x for x in rows if x["journey"] == "boost"]
    cov_all = sum(inside(x["conv_ci"], x["true_conv"]) for x in boost)
    print(f"planted +50% effect (boost): true conversion effect inside the 95% interval in "
          f"{cov_all} of {len(boost)} stores (target at least 90 of 100)")
    per = [r["seconds"] for r in results]
    cpu = [r["cpu"] for r in results]
    print(f"\ntime: {wall:.0f}s wall for {n} stores with {a.jobs} processes; per store "
          f"{sum(per) / n:.1f}s wall, {sum(cpu) / n:.1f}s CPU (baseline: writing one store's "
          f"synthetic history of {a.customers:,} customers {base_wall:.1f}s wall, "
          f"{base_cpu:.1f}s CPU)")


if __name__ == "__main__":
    main()
