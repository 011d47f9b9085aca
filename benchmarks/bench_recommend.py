"""Recommendations measured: hit rate at 3 on each customer's next purchase, beside the
most-popular baseline, on simulated stores and on a project's store.

    python benchmarks/bench_recommend.py [--customers 20000] [--seed 1] [--project DIR]

Stores:

- structured: the synthetic store's orders (BG/NBD) with ``recommend.catalog`` items: segment
  tastes, complements bought together or next, repeat purchases of favourites;
- unstructured: the same orders, every item drawn from one global popularity (nothing to learn:
  the recommender must not do worse than the baseline beyond noise);
- ``--project DIR``: the project's database (its ``order_items``), if given.

Each line gives the recommender's and the baseline's hit rates with Wilson intervals, the
paired difference with its bootstrap interval (see ``clm_core.recommend.evaluate``), for: the
recommender (owned SKUs offered again where the store rebuys them, the baseline under the same
rule); both with owned SKUs never offered; and the earlier recommender (raw same-basket
co-purchase counts, popularity breaking ties, owned never offered) under that rule. Then the
store-backed ``Recommender`` (the one dispatch uses) is timed on the structured store in a
SQLite file: reading its counts with SQL, and recommending for 1,000 customers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import cpu_seconds  # noqa: E402
from clm_core.db import tables as t  # noqa: E402
from clm_core.db.migrate import open_database  # noqa: E402
from clm_core.recommend.catalog import CatalogParams, load_simulated, simulated_lines  # noqa: E402
from clm_core.recommend.evaluate import Evaluation, evaluate  # noqa: E402
from clm_core.recommend.model import best  # noqa: E402
from clm_core.recommend.recommender import CATALOGUE_LIMIT, Recommender, read_lines  # noqa: E402


def timed(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    out = step()
    return out, time.perf_counter() - start, cpu_seconds() - cpu


def raw_copurchase(train: pd.DataFrame, ids: list[int], history: pd.DataFrame,
                   k: int) -> np.ndarray:
    """The earlier recommender: same-basket co-occurrence counts among the most popular SKUs,
    summed over what the customer bought, popularity breaking ties, owned SKUs excluded."""
    lines = train.drop_duplicates(["order_id", "sku"])
    n = lines.groupby("sku").size().sort_values(ascending=False, kind="stable").head(
        CATALOGUE_LIMIT)
    index = pd.Index(n.index.astype(str))
    kept = lines[lines["sku"].isin(index)]
    pairs = kept.merge(kept, on="order_id")
    pairs = pairs[pairs["sku_x"] != pairs["sku_y"]]
    co = np.zeros((len(index), len(index)), dtype=np.float32)
    np.add.at(co, (index.get_indexer(pairs["sku_x"]), index.get_indexer(pairs["sku_y"])), 1.0)
    have = np.zeros((len(ids), len(index)), dtype=np.float32)
    col = index.get_indexer(history["sku"])
    row = pd.Index(ids).get_indexer(history["customer_id"])
    have[row[col >= 0], col[col >= 0]] = 1.0
    score = have @ co + (n.to_numpy(dtype=np.float32) / max(float(n.max()), 1.0)) * 1e-3
    top = best(score, have > 0, k) if len(index) else np.full((len(ids), k), -1)
    skus = index.to_numpy()
    return np.where(top >= 0, skus[np.maximum(top, 0)] if len(skus) else "", "")


def earlier_sql(engine: sa.Engine) -> int:
    """The earlier recommender's SQL: popular SKUs, then same-basket pair counts among them by a
    self-join of ``order_items`` (the timing baseline for reading the counts)."""
    oi = t.order_items
    with engine.connect() as conn:
        popular = pd.read_sql(sa.select(oi.c.sku, sa.func.count(sa.distinct(oi.c.order_id))
                                        .label("n")).group_by(oi.c.sku)
                              .order_by(sa.text("n DESC"), oi.c.sku).limit(CATALOGUE_LIMIT), conn)
        a, b = oi.alias("a"), oi.alias("b")
        skus = popular["sku"].tolist()
        pairs = pd.read_sql(
            sa.select(a.c.sku.label("x"), b.c.sku.label("y"), sa.func.count().label("n"))
            .select_from(a.join(b, sa.and_(a.c.order_id == b.c.order_id, a.c.sku != b.c.sku)))
            .where(a.c.sku.in_(skus), b.c.sku.in_(skus)).group_by(a.c.sku, b.c.sku), conn)
    return len(pairs)


def report(name: str, ev: Evaluation, wall: float, cpu: float) -> None:
    print(f"{name}: {ev.customers:,} held-out orders, {wall:.1f} s wall {cpu:.1f} s CPU")
    for row in ev.lines()[1:]:
        print("  " + row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--project", metavar="DIR", help="also measure this project's store")
    ap.add_argument("--skip-sql", action="store_true", help="do not time the SQL recommender")
    ap.add_argument("--sql-only", action="store_true", help="only time the SQL recommender")
    ap.add_argument("--database", metavar="URL", help="time the SQL recommender on this empty "
                    "database (default: a new SQLite file)")
    args = ap.parse_args()

    stores = () if args.sql_only else (("structured", CatalogParams()),
                                       ("unstructured", CatalogParams.unstructured()))
    for name, params in stores:
        lines, wall, cpu = timed(lambda p=params: simulated_lines(args.customers, args.seed, p))
        print(f"\n{name} store: {args.customers:,} customers, "
              f"{lines['order_id'].nunique():,} orders, {len(lines):,} lines "
              f"(generated in {wall:.1f} s wall {cpu:.1f} s CPU)")
        ev, wall, cpu = timed(lambda ln=lines: evaluate(ln, k=args.k))
        report("  recommender", ev, wall, cpu)
        ev, wall, cpu = timed(lambda ln=lines: evaluate(ln, k=args.k, repeats=False))
        report("  recommender, owned SKUs never offered (both sides)", ev, wall, cpu)
        ev, wall, cpu = timed(lambda ln=lines: evaluate(ln, k=args.k, method=raw_copurchase,
                                                        repeats=False))
        report("  earlier: raw co-purchase counts, owned never offered (both sides)", ev, wall,
               cpu)

    if not args.skip_sql:
        url = args.database or f"sqlite:///{tempfile.mkdtemp(prefix='clm-bench-')}/recommend.db"
        engine = open_database(url)
        load_simulated(engine, args.customers, args.seed, CatalogParams())
        with engine.begin() as conn:  # planner statistics, as a live store's autovacuum keeps
            conn.exec_driver_sql("ANALYZE")
        rec, wall, cpu = timed(lambda: Recommender(engine, k=args.k))
        print(f"\nRecommender on {engine.dialect.name} ({args.customers:,} customers): counts "
              f"read in {wall:.2f} s wall {cpu:.2f} s CPU ({len(rec.skus):,} SKUs, "
              f"shrink {rec.model.shrink:.0f})")
        _, wall, cpu = timed(lambda: earlier_sql(engine))
        print(f"  earlier same-basket pair counts: {wall:.2f} s wall {cpu:.2f} s CPU")
        with engine.connect() as conn:
            ids = [int(i) for i in conn.execute(sa.select(t.customers.c.id).limit(1000))
                   .scalars()]
        _, wall, cpu = timed(lambda: rec.for_customers(ids))
        print(f"  for_customers(1,000 ids): {wall:.2f} s wall {cpu:.2f} s CPU")
        engine.dispose()

    if args.project:
        from clm_core.settings import load_settings

        engine = open_database(load_settings(Path(args.project)).database_url)
        with engine.connect() as conn:
            lines = read_lines(conn)
        print(f"\nproject store {args.project}: {lines['order_id'].nunique():,} orders with "
              f"{len(lines):,} lines")
        ev, wall, cpu = timed(lambda: evaluate(lines, k=args.k))
        report("  recommender", ev, wall, cpu)
        ev, wall, cpu = timed(lambda: evaluate(lines, k=args.k, repeats=False))
        report("  recommender, owned SKUs never offered (both sides)", ev, wall, cpu)


if __name__ == "__main__":
    main()
