"""The whole daily run at scale, incremental beside a full recompute, on SQLite and PostgreSQL.

    python benchmarks/bench_daily.py [--customers 1000000] [--databases sqlite,postgresql]
                                     [--check] [--rerun] [--skip-naive] [--cache DIR]

Builds (once, cached under ``--cache`` keyed by size, seed, schema revision and
``STORE_FORMAT``) a synthetic store of about five orders per customer whose last order is on
day L, fitted, scored as of L and with the journeys evaluated the next morning: the state
after a night's run (on PostgreSQL vacuumed and analyzed, as a live server's autovacuum keeps
it). Each measured run starts from a copy of that store (a file copy on SQLite, ``CREATE
DATABASE ... TEMPLATE`` on PostgreSQL), imports day L+1's orders (new orders of about 0.2%
of customers, a tenth as many earlier orders cancelled) through ``clm import orders``'s code,
then times the nightly run in a fresh process: scoring as of L+1 (features from the purchase
aggregates, scores, stages, transitions; the score rows reloaded on PostgreSQL, upserted on
SQLite) and the journey evaluation the morning after (every active journey of
``journeys/``: load, plan, write; no sending). Beside it, in the same run:

- full recompute: the same nightly run as before the purchase aggregates: features
  aggregated from the whole order history, score rows upserted in place;
- naive: every order into pandas, lifetimes' summary, BG/NBD and Gamma-Gamma fits and scores
  (``bench_scoring``'s naive pipeline; no stages, no journeys, no writes).

``--check`` compares what both nightly runs wrote (scores, transitions, enrollments, messages)
row for row. CPU is the run's process; on PostgreSQL the server's CPU of the run's connections
is given apart (read from /proc; parallel workers not counted).

``--rerun`` then runs the incremental night again on the store it left (a flow retried after
its scoring committed) and reports what that added: nothing, when the run is sound.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scoring import _naive_run  # noqa: E402
from benchmarks.measure import cpu_seconds, line, measured, peak_mb  # noqa: E402
from clm_core.db import tables as t  # noqa: E402
from clm_core.db.engine import make_engine  # noqa: E402
from clm_core.db.migrate import head_revision, open_database  # noqa: E402
from clm_core.settings import Settings, load_settings  # noqa: E402
from clm_core.testing import pg_admin_url  # noqa: E402

NEW_SHARE = 0.002  # customers ordering on the measured day
CANCEL_SHARE = 0.1  # earlier orders cancelled that day, per new order
MORNING = timedelta(hours=6)  # the journeys run the morning after the day scored
RERUN_TIMEOUT = 900  # s: a retried night slower than this is reported as such
# How a cached store is built; a change that builds it differently bumps it, so that stores
# built the old way are not measured as new ones (2: PostgreSQL's vacuumed; the purchase
# aggregates rebuilt in customer order).
STORE_FORMAT = 2


def settings_for(url: str) -> Settings:
    return load_settings(ROOT, env={"CLM_DATABASE_URL": url,
                                    "CLM_SECRET_KEY": os.environ.get("CLM_SECRET_KEY", "bench")})


def last_day(engine: sa.Engine) -> date:
    with engine.connect() as conn:
        return pd.Timestamp(conn.scalar(sa.select(sa.func.max(t.orders.c.ordered_at)))).date()


def morning_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), datetime.min.time()) + MORNING


def night(url: str, as_of: date, source: str = "auto", write: str = "auto") -> dict[str, Any]:
    """Score as of ``as_of`` and evaluate the journeys the morning after (what the nightly
    flow does before sending); wall seconds per step."""
    from clm_core.journeys.run import evaluate
    from clm_core.lifecycle.pipeline import LifecycleConfig, score

    settings = settings_for(url)
    engine = make_engine(url)
    try:
        cpu = cpu_seconds()
        report = score(engine, LifecycleConfig.from_settings(settings), as_of, source=source,
                       write=write)
        steps = dict(report.seconds)
        cpus = {"scoring": cpu_seconds() - cpu}
        mark, cpu = time.perf_counter(), cpu_seconds()
        ev = evaluate(engine, settings, morning_after(as_of))
        steps["journeys"] = time.perf_counter() - mark
        cpus["journeys"] = cpu_seconds() - cpu
        written = ev.written
        server = _server_cpu(engine)
    finally:
        engine.dispose()
    return {"steps": steps, "cpus": cpus, "transitions": report.transitions,
            "customers": report.customers, "unmoved": report.unmoved,
            "enrolled": written.enrollments_created if written else 0,
            "messages": written.messages_created if written else 0, "server_cpu": server}


def _server_cpu(engine: sa.Engine) -> float:
    """CPU seconds of the PostgreSQL backends serving this engine's pooled connections."""
    if engine.dialect.name != "postgresql":
        return 0.0
    with engine.connect() as conn:
        pids = [r[0] for r in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def day_orders(engine: sa.Engine, day: date, seed: int = 3) -> pd.DataFrame:
    """One day's orders file: new orders of ``NEW_SHARE`` of the customers at random times of
    ``day``, and earlier purchases re-sent as cancelled."""
    rng = np.random.default_rng(seed)
    c, o = t.customers, t.orders
    with engine.connect() as conn:
        ids = np.array([r[0] for r in conn.execute(sa.select(c.c.id).order_by(c.c.id))])
        n_new = max(1, int(len(ids) * NEW_SHARE))
        chosen = np.sort(rng.choice(ids, size=n_new, replace=False)).tolist()
        who = dict(conn.execute(sa.select(c.c.id, c.c.external_id).where(c.c.id.in_(chosen))).all())
        top = int(conn.scalar(sa.select(sa.func.max(o.c.id))) or 0)
        picks = sorted({int(v) for v in rng.integers(1, top + 1, int(n_new * CANCEL_SHARE))})
        earlier = pd.read_sql(sa.select(o.c.external_id, c.c.external_id.label("customer"),
                                        o.c.ordered_at, o.c.amount).join(c)
                              .where(o.c.id.in_(picks)), conn)
    start = pd.Timestamp(day)
    new = pd.DataFrame({
        "order_id": [f"day-{day:%Y%m%d}-{k}" for k in range(n_new)],
        "customer_id": [who[i] for i in chosen],
        "ordered_at": (start + pd.to_timedelta(rng.integers(0, 86_400, n_new), unit="s")
                       ).strftime("%Y-%m-%d %H:%M:%S"),
        "amount": np.round(rng.gamma(2.0, 30.0, n_new) + 1, 2), "status": "completed"})
    cancelled = pd.DataFrame({
        "order_id": earlier["external_id"], "customer_id": earlier["customer"],
        "ordered_at": pd.to_datetime(earlier["ordered_at"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
        "amount": earlier["amount"].astype(float).round(2), "status": "cancelled"})
    return pd.concat([new, cancelled], ignore_index=True)


def import_day(url: str, path: Path) -> dict[str, Any]:
    from clm_core.ingest.importer import import_csv

    engine = make_engine(url)
    start, cpu = time.perf_counter(), cpu_seconds()
    report = import_csv(engine, "orders", path)
    engine.dispose()
    return {"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu,
            "rows": report.imported, "rejected": report.rejected}


def _nightly(url: str, csv_path: str, as_of: date, source: str, write: str, out: Any) -> None:
    """The measured process: the day's import, then the night."""
    start, cpu = time.perf_counter(), cpu_seconds()
    imported = import_day(url, Path(csv_path))
    mark = time.perf_counter()
    result = night(url, as_of, source, write)
    out.put({"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu,
             "peak_mb": peak_mb(), "night_seconds": time.perf_counter() - mark,
             "steps": {"import": imported["seconds"], **result.pop("steps")},
             "cpus": {"import": imported["cpu"], **result.pop("cpus")},
             "imported": imported, **result})


def _rerun(url: str, as_of: date, out: Any) -> None:
    """The measured retry: the same night run again on the store it left (a flow retried
    after its scoring committed), which must find its own transitions and add nothing."""
    start, cpu = time.perf_counter(), cpu_seconds()
    result = night(url, as_of)
    out.put({"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu,
             "peak_mb": peak_mb(), **result})


def _score_write(url: str, how: str, out: Any) -> None:
    """Rewrite every score row as the next night would (as-of day + 1, every value touched),
    by ``how``: ``upsert`` (update in place) or ``replace`` (the table reloaded afresh)."""
    from clm_core.db.bulk import replace_frame, write_frame
    from clm_core.lifecycle.pipeline import SCORE_COLUMNS

    engine = make_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(t.customer_scores), conn)[SCORE_COLUMNS]
    for col in ("fit_id", "n_orders", "purchase_days", "r_score", "f_score", "m_score"):
        frame[col] = frame[col].astype("Int64")  # read back as floats where NULLs are
    frame["as_of"] = pd.to_datetime(frame["as_of"]) + pd.Timedelta(days=1)
    frame["T"] = frame["T"] + 1
    frame["recorded_at"] = pd.Timestamp("2026-01-01")
    start, cpu = time.perf_counter(), cpu_seconds()
    with engine.begin() as conn:
        if how == "replace":
            replace_frame(conn, t.customer_scores, frame, key="customer_id")
        else:
            write_frame(conn, t.customer_scores, frame, keys=["customer_id"],
                        update=SCORE_COLUMNS[1:], bulk=True)
    seconds, used = time.perf_counter() - start, cpu_seconds() - cpu
    server = _server_cpu(engine)
    engine.dispose()
    out.put({"seconds": seconds, "cpu": used, "peak_mb": peak_mb(), "server_cpu": server})


# --- what a night writes, for the row-for-row comparison ----------------------------------

def outputs(url: str, as_of: date) -> dict[str, pd.DataFrame]:
    """Everything the night of ``as_of`` wrote, without ids and wall-clock columns, sorted."""
    s, tr, e, m = t.customer_scores, t.stage_transitions, t.journey_enrollments, t.messages
    skip = {"id", "recorded_at", "run_id", "enrollment_id", "created_at", "updated_at"}
    now = morning_after(as_of)
    queries = {
        "scores": (sa.select(*[c for c in s.c if c.name not in skip]), ["customer_id"]),
        "transitions": (sa.select(*[c for c in tr.c if c.name not in skip])
                        .where(tr.c.as_of == as_of), ["customer_id"]),
        "enrollments": (sa.select(*[c for c in e.c if c.name not in skip])
                        .where(sa.or_(e.c.entered_at == now, e.c.exited_at == now)),
                        ["journey", "customer_id", "entry_seq"]),
        # The idempotency key is made from the enrollment's database id, which two databases
        # may hand out in a different order: compare what the message is, not its key.
        "messages": (sa.select(*[c for c in m.c if c.name not in skip | {"idempotency_key"}])
                     .where(m.c.created_at == now),
                     ["journey", "customer_id", "step_id", "channel", "send_after"]),
    }
    engine = make_engine(url)
    out = {}
    with engine.connect() as conn:
        for name, (stmt, keys) in queries.items():
            frame = pd.read_sql(stmt, conn)
            out[name] = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    engine.dispose()
    return out


def differences(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Per table: '' when the rows are identical, else what differs."""
    found = {}
    for name in a:
        x, y = a[name], b[name]
        if x.shape != y.shape:
            found[name] = f"{len(x)} rows vs {len(y)}"
            continue
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
            found[name] = ""
        except AssertionError as exc:
            found[name] = str(exc).splitlines()[0]
    return found


# --- the cached base store ------------------------------------------------------------------

def _pg_url(name: str) -> str:
    return make_url(pg_admin_url()).set(database=name).render_as_string(hide_password=False)


def _admin() -> sa.Engine:
    return make_engine(pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _pg_exists(name: str) -> bool:
    with _admin().connect() as conn:
        return bool(conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": name}))


def build_base(url: str, customers: int, seed: int) -> None:
    """Load, fit, score as of the last order day, evaluate the journeys the morning after."""
    from clm_core.ingest.synthetic import load_synthetic
    from clm_core.lifecycle.pipeline import LifecycleConfig, fit

    engine = open_database(url)
    start = time.perf_counter()
    load = load_synthetic(engine, customers, seed=seed)
    print(f"  loaded {load.customers:,} customers, {load.orders:,} orders in "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    day = last_day(engine)
    mark = time.perf_counter()
    fit(engine, LifecycleConfig.from_settings(settings_for(url)), as_of=day)
    print(f"  fitted as of {day} in {time.perf_counter() - mark:.0f}s", flush=True)
    engine.dispose()
    mark = time.perf_counter()
    done = night(url, day)
    print(f"  scored as of {day} and evaluated the journeys in "
          f"{time.perf_counter() - mark:.0f}s ({done['enrolled']:,} enrolled, "
          f"{done['messages']:,} messages)", flush=True)
    settled(url)


def settled(url: str) -> None:
    """A built store as a live one stands: on PostgreSQL vacuumed and with the planner's
    statistics, as a live server's autovacuum keeps it (a server with autovacuum off, as
    CI's, has neither until something runs them: every plan of the night is then made blind,
    and each night's updated enrollments and messages leave their old row versions in the
    tables and their indexes, where the next nights walk past them); SQLite's write-ahead log
    folded back."""
    engine = make_engine(url)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def settle(url: str, nights: int) -> None:
    """Run ``nights`` more nights on a base store, each importing its day's orders first: a
    store some days past its first scoring, when the first scoring's stage moves have left
    the entry windows and most enrollments wait for a later step."""
    for k in range(nights):
        engine = make_engine(url)
        day = last_day(engine) + timedelta(days=1)
        orders = day_orders(engine, day, seed=100 + k)
        engine.dispose()
        with tempfile.TemporaryDirectory(prefix="clm-settle-") as tmp:
            path = Path(tmp) / f"orders-{day}.csv"
            orders.to_csv(path, index=False)
            import_day(url, path)
        mark = time.perf_counter()
        done = night(url, day)
        print(f"  night of {day}: {time.perf_counter() - mark:.0f}s ({done['enrolled']:,} "
              f"enrolled, {done['messages']:,} messages)", flush=True)
    settled(url)


def base_store(backend: str, customers: int, seed: int, cache: Path, nights: int = 0) -> str:
    """The cached base store's URL, built first when missing; ``nights``: that many more
    nights run on it (``settle``), cached apart."""
    key = f"daily_{customers}_s{seed}_r{head_revision()}_f{STORE_FORMAT}" + \
        (f"_n{nights}" if nights else "")
    first = base_store(backend, customers, seed, cache) if nights else None
    if backend == "sqlite":
        path = cache / f"{key}.db"
        if not path.exists():
            print(f"building the {backend} base store {path} ...", flush=True)
            tmp = path.with_suffix(".building.db")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)
            if first is None:
                build_base(f"sqlite:///{tmp}", customers, seed)
            else:
                shutil.copyfile(str(make_url(first).database), tmp)
                settle(f"sqlite:///{tmp}", nights)
            tmp.rename(path)
        return f"sqlite:///{path}"
    name = f"clm_{key}"
    if not _pg_exists(name):
        print(f"building the {backend} base store {name} ...", flush=True)
        building = f"{name}_building"
        with _admin().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            if first is not None:
                conn.exec_driver_sql(f'CREATE DATABASE "{building}" '
                                     f'TEMPLATE "{make_url(first).database}"')
        if first is None:
            build_base(_pg_url(building), customers, seed)
        else:
            settle(_pg_url(building), nights)
        with _admin().connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    return _pg_url(name)


def copy_of(base: str, label: str, workdir: Path) -> str:
    """A copy of the base store to measure on, its writes on disk before the measuring starts.

    Why: the copy is gigabytes of writes. Left to the kernel's writeback (SQLite) or to the
    checkpoints its write-ahead log sets off (PostgreSQL's default copy logs the whole database,
    three times ``max_wal_size``), they are flushed while the measured run works, adding seconds
    at random to its figures. PostgreSQL copies the files instead (``STRATEGY FILE_COPY``,
    PostgreSQL 15 and later), then checkpoints."""
    if make_url(base).get_backend_name() == "sqlite":
        path = workdir / f"{label}.db"
        shutil.copyfile(str(make_url(base).database), path)
        os.sync()
        return f"sqlite:///{path}"
    name = f"{make_url(base).database}_{label}"
    with _admin().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        files = " STRATEGY FILE_COPY" if (conn.dialect.server_version_info or (0,)) >= (15,) \
            else ""
        conn.exec_driver_sql(
            f'CREATE DATABASE "{name}" TEMPLATE "{make_url(base).database}"{files}')
        conn.exec_driver_sql("CHECKPOINT")
    os.sync()
    return _pg_url(name)


def drop(url: str) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{make_url(url).database}{suffix}").unlink(missing_ok=True)
        return
    with _admin().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


# --- the run ----------------------------------------------------------------------------------

def _fmt(r: dict[str, Any]) -> str:
    server = f" + {r['server_cpu']:.1f} s server" if r.get("server_cpu") else ""
    return line("", r).strip() + server


def bench(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = base_store(backend, args.customers, args.seed, Path(args.cache), args.settle)
    engine = make_engine(base)
    with engine.connect() as conn:
        n_customers = conn.scalar(sa.select(sa.func.count()).select_from(t.customers))
        n_orders = conn.scalar(sa.select(sa.func.count()).select_from(t.orders))
    day = last_day(engine) + timedelta(days=1)
    orders = day_orders(engine, day)
    engine.dispose()
    csv_path = workdir / f"orders-{day}.csv"
    orders.to_csv(csv_path, index=False)
    print(f"\n{backend}: {n_customers:,} customers, {n_orders:,} orders; day {day}: "
          f"{int((orders['status'] == 'completed').sum()):,} new orders, "
          f"{int((orders['status'] == 'cancelled').sum()):,} cancellations; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, Any] = {}
    urls = {}
    nights = () if args.skip_nights else (("incremental", "auto", "auto"),
                                          ("full", "orders", "upsert"))[:1 if args.skip_full
                                                                         else 2]
    for label, source, write in nights:
        urls[label] = copy_of(base, label, workdir)
        r = measured(_nightly, urls[label], str(csv_path), day, source, write)
        results[label] = r
        title = {"incremental": "clm incremental", "full": "clm full recompute"}[label]
        print(f"{title:<22} {_fmt(r)}", flush=True)
        if "error" not in r:
            print(f"{'':<22} night {r['night_seconds']:.1f} s; {r['transitions']:,} stage "
                  f"changes, {r['enrolled']:,} enrolled, {r['messages']:,} messages; "
                  f"{r['unmoved']:,} score rows rewritten in their daily columns alone; "
                  f"import {r['imported']['rows']:,} rows in {r['imported']['seconds']:.1f} s; "
                  "CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpus"].items()),
                  flush=True)
    if args.writes:
        for how in ("upsert", "replace"):
            url = copy_of(base, f"write_{how}", workdir)
            r = measured(_score_write, url, how)
            print(f"{'scores ' + how:<22} {_fmt(r)}  (every score row rewritten)", flush=True)
            drop(url)
    if not args.skip_naive and urls:  # any store with the day's orders
        r = measured(_naive_run, urls.get("full", urls["incremental"]), day)
        results["naive"] = r
        print(f"{'naive pandas+lifetimes':<22} {_fmt(r)}", flush=True)
    inc = results.get("incremental", {"error": "not run"})
    for other in ("full", "naive"):
        if other in results and "error" not in inc and "error" not in results[other]:
            o = results[other]
            print(f"  incremental vs {other}: {o['seconds'] / inc['seconds']:.1f}x wall, "
                  f"{(o['cpu'] + o.get('server_cpu', 0)) / (inc['cpu'] + inc['server_cpu']):.1f}x "
                  "CPU", flush=True)
    if args.check and "full" in urls:
        diff = differences(outputs(urls["incremental"], day), outputs(urls["full"], day))
        rows = {k: len(v) for k, v in outputs(urls["incremental"], day).items()}
        verdict = "identical" if not any(diff.values()) else "DIFFERENT"
        print(f"  incremental vs full recompute, rows written: {verdict} "
              + "; ".join(f"{k} {rows[k]:,}{' ' + v if v else ''}" for k, v in diff.items()),
              flush=True)
        results["identical"] = not any(diff.values())
    if args.rerun and "incremental" in urls:
        r = measured(_rerun, urls["incremental"], day, timeout=RERUN_TIMEOUT)
        results["rerun"] = r
        print(f"{'the night run again':<22} {_fmt(r)}", flush=True)
        if "error" not in r:
            print(f"{'':<22} added {r['transitions']:,} stage changes, {r['enrolled']:,} "
                  f"enrollments, {r['messages']:,} messages", flush=True)
    for url in urls.values():
        drop(url)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "clm-bench-daily"),
                    help="where base stores are kept between runs (PostgreSQL: databases "
                    "named clm_daily_*)")
    ap.add_argument("--settle", type=int, default=0, metavar="NIGHTS",
                    help="measure a store NIGHTS nights past its first scoring and evaluation "
                    "(default 0: the night right after, when every customer has just moved "
                    "into a stage and been enrolled)")
    ap.add_argument("--check", action="store_true",
                    help="compare the rows both nightly runs wrote")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-full", action="store_true",
                    help="only the incremental night (one copy of the store: at ten million "
                    "customers each copy is tens of gigabytes)")
    ap.add_argument("--writes", action="store_true",
                    help="also time rewriting every score row: upsert in place vs reload")
    ap.add_argument("--skip-nights", action="store_true",
                    help="only the --writes comparison")
    ap.add_argument("--rerun", action="store_true",
                    help="then run the measured night again on the store it left, as a "
                    "retried flow would (it must add nothing)")
    args = ap.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    print(f"{mp.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="clm-daily-") as tmp:
        for backend in args.databases.split(","):
            bench(backend, args, Path(tmp))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
