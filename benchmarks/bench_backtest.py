"""Backtest speed on CDNOW: the in-memory replay beside the naive way (the real pipeline through
a database, a full recompute per simulated day), on the same steps, with the same result.

    python benchmarks/bench_backtest.py [--naive-steps 26] [--database URL]

Loads the full CDNOW store (23,570 customers, 78 weeks) into a scratch SQLite database unless
``--database`` names one that holds it, then measures, each in a fresh process:

- the replay weekly over 1997-01-01 .. 1998-06-30 (78 steps) and daily (546 steps), the
  sample journeys, no sending;
- the naive replay on the first ``--naive-steps`` steps of each (it costs a whole scoring and
  planning run through the database per step; its per-step cost is extrapolated to the whole
  period, and marked so);
- the replay on the same first steps, whose weekly table must equal the naive one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import (  # noqa: E402
    cpu_seconds,
    cpu_seconds_with_children,
    line,
    measured,
    peak_mb,
)
from clm_core.settings import load_settings  # noqa: E402

START, END = date(1997, 1, 1), date(1998, 6, 30)
REPO = Path(__file__).resolve().parent.parent


def _settings(url: str) -> Any:
    return load_settings(REPO, env={"CLM_DATABASE_URL": url})


def _replay(url: str, every: int, steps: int | None, out: Any) -> None:
    from clm_core.backtest.run import Period, backtest, select_journeys
    from clm_core.db.engine import make_engine

    settings = _settings(url)
    end = END if steps is None else START + timedelta(days=every * (steps - 1))
    wall = time.perf_counter()
    r = backtest(make_engine(url), settings, Period(START, end, timedelta(days=every)),
                 select_journeys(settings, None))
    weekly = r.tally.weekly()
    # the replay's fits run in a second process it waits for: its CPU is counted too
    out.put({"seconds": time.perf_counter() - wall, "cpu": cpu_seconds_with_children(),
             "peak_mb": peak_mb(), "n": r.tally.steps,
             "weekly": weekly.to_json(date_format="iso"),
             "entered": int(weekly["entered"].sum()),
             "messages": int(weekly["email"].sum() + weekly["sms"].sum())})


def _naive(url: str, every: int, steps: int, out: Any) -> None:
    from clm_core.backtest.oracle import copy_store, replay_through_database
    from clm_core.backtest.replay import steps_between
    from clm_core.backtest.tally import tally
    from clm_core.db.engine import make_engine
    from clm_core.db.migrate import open_database

    settings = _settings(url)
    scratch = tempfile.mkdtemp(prefix="clm-naive-")
    copy_url = f"sqlite:///{scratch}/copy.db"
    copy = open_database(copy_url)
    copy_store(make_engine(url), copy)
    wall = time.perf_counter()
    plan = steps_between(START, START + timedelta(days=every * (steps - 1)),
                         timedelta(days=every), 10, settings.default_timezone)
    t = tally(replay_through_database(copy, settings.with_database(copy_url), plan))
    out.put({"seconds": time.perf_counter() - wall, "cpu": cpu_seconds(), "peak_mb": peak_mb(),
             "n": t.steps, "weekly": t.weekly().to_json(date_format="iso")})
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", help="a database holding CDNOW (default: load it)")
    ap.add_argument("--naive-steps", type=int, default=26)
    ap.add_argument("--only", choices=["weekly", "daily"], help="measure one period only")
    args = ap.parse_args()
    url = args.database
    if url is None:
        from clm_core.db.migrate import open_database
        from clm_core.ingest.cdnow import import_cdnow

        url = f"sqlite:///{tempfile.mkdtemp(prefix='clm-bt-')}/cdnow.db"
        import_cdnow(open_database(url))
    print(f"CDNOW replay {START} .. {END}, sample journeys (database {url.split(':')[0]})")
    for name, every in (("weekly", 7), ("daily", 1)):
        if args.only and args.only != name:
            continue
        full = measured(_replay, url, every, None)
        naive = measured(_naive, url, every, args.naive_steps)
        part = measured(_replay, url, every, args.naive_steps)
        print(line(f"replay {name} ({full.get('n', 0)} steps)", full))
        print(f"{'':<22} entered {full.get('entered', 0):,}, messages {full.get('messages', 0):,}"
              f", {1000 * full['seconds'] / max(1, full.get('n', 1)):.0f} ms per step")
        print(line(f"replay {name} first {args.naive_steps}", part))
        print(line(f"naive {name} first {args.naive_steps}", naive))
        same = part.get("weekly") == naive.get("weekly")
        steps = full.get("n", 0)
        per_naive = naive["seconds"] / max(1, naive.get("n", 1))
        per_part = part["seconds"] / max(1, part.get("n", 1))
        print(f"{'':<22} same weekly table: {'yes' if same else 'NO'}; per step replay "
              f"{1000 * per_part:.0f} ms vs naive {1000 * per_naive:.0f} ms "
              f"({per_naive / per_part:.1f}x); naive whole period extrapolated "
              f"{per_naive * steps:.0f} s vs replay {full['seconds']:.0f} s measured")


if __name__ == "__main__":
    main()
