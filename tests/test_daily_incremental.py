"""The nightly run from the purchase aggregates writes exactly what a full recompute from the
order history writes: scores, stage transitions, enrollments and planned messages, row for row,
after a day of new orders and cancellations (the store ``benchmarks/bench_daily.py`` times)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from benchmarks.bench_daily import (
    build_base,
    copy_of,
    day_orders,
    differences,
    drop,
    import_day,
    last_day,
    night,
    outputs,
)
from clm_core.db.engine import make_engine


@pytest.mark.parametrize("customers", [pytest.param(1_500, id="1.5k"),
                                       pytest.param(100_000, id="100k", marks=pytest.mark.slow)])
def test_incremental_night_writes_the_same_rows_as_a_full_recompute(
    db_url: str, tmp_path: Path, customers: int
) -> None:
    build_base(db_url, customers, seed=4)
    engine = make_engine(db_url)
    day = last_day(engine) + timedelta(days=1)
    orders = day_orders(engine, day)
    engine.dispose()
    path = tmp_path / "day.csv"
    orders.to_csv(path, index=False)
    urls = {label: copy_of(db_url, label, tmp_path) for label in ("incremental", "full")}
    try:
        nights = {}
        # The full recompute rewrites every column of every score row; the incremental
        # night (write "auto") rewrites most rows' daily columns alone on SQLite.
        for label, source, write in (("incremental", "aggregates", "auto"),
                                     ("full", "orders", "upsert")):
            assert import_day(urls[label], path)["rejected"] == 0
            nights[label] = night(urls[label], day, source, write)
        written = {label: outputs(url, day) for label, url in urls.items()}
    finally:
        for url in urls.values():
            drop(url)
    assert differences(written["incremental"], written["full"]) == {
        "scores": "", "transitions": "", "enrollments": "", "messages": ""}
    # The day changed something: new purchases moved stages and started journeys.
    assert nights["incremental"]["transitions"] > 0
    assert len(written["incremental"]["messages"]) > 0
    assert len(written["incremental"]["scores"]) >= customers
