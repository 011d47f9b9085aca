"""Bulk writes on SQLite with the values a run of rows shares written into the statement: the
same table as binding every value, whatever the runs, nulls and quoting; and the times as
text exactly as numpy writes them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import literals
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.db.timetext import times_as_text
from clm_core.loyalty.ledger import text_order


def _ledger(n: int, customers: list[int]) -> pd.DataFrame:
    """Ledger-like rows in runs of kinds and reasons, some short, with quotes and nulls."""
    rng = np.random.default_rng(3)
    kind = np.repeat(["bonus", "earn", "expire", "reverse", "reward"], n // 5)
    reason = np.where(kind == "bonus", "it's a bonus", None).astype(object)
    reason[kind == "reverse"] = [f"order {i} cancelled" for i in range(int((kind == "reverse")
                                                                         .sum()))]
    reason[kind == "expire"] = "expired"
    when = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 10**9, len(kind)), "s")
    return pd.DataFrame({
        "key": [f"k:{i}" for i in range(len(kind))],
        "customer_id": np.array(customers)[rng.integers(0, len(customers), len(kind))],
        "kind": kind, "points": np.where(kind == "reward", -500, rng.integers(1, 99, len(kind))),
        "order_id": pd.array([None] * len(kind), dtype="Int64"),
        "occurred_at": np.where(kind == "reward", pd.Timestamp("2025-06-30 23:00"), when),
        "expires_at": pd.Series(when + pd.Timedelta(days=365)).where(kind == "earn"),
        "reason": reason, "recorded_at": pd.Timestamp("2025-07-01 01:02:03.456789"),
        "run_id": None})


@pytest.mark.parametrize("min_run", [1, 300, 10**9])
def test_runs_written_with_literals_give_the_bound_table(engine: sa.Engine, monkeypatch,
                                                        min_run: int) -> None:
    monkeypatch.setattr(literals, "MIN_RUN", min_run)
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({"external_id": ["a", "b", "c"]}))
        ids = conn.scalars(sa.select(t.customers.c.id)).all()
    df = _ledger(5000, ids)
    lg = t.points_ledger
    cols = [lg.c[c] for c in df.columns]
    with engine.begin() as conn:
        write_frame(conn, lg, df, bulk=True, runs_by=["kind", "reason"])
        with_literals = conn.execute(sa.select(*cols).order_by(lg.c.key)).all()
        conn.execute(lg.delete())
        write_frame(conn, lg, df)  # every value bound
        bound = conn.execute(sa.select(*cols).order_by(lg.c.key)).all()
    assert with_literals == bound and len(bound) == 5000
    assert {r.reason for r in bound} >= {"it's a bonus", "expired", None}


def test_runs_inline_what_each_run_shares(monkeypatch) -> None:
    monkeypatch.setattr(literals, "MIN_RUN", 1)
    df = pd.DataFrame({"kind": ["a"] * 4 + ["b"] * 4, "n": [1, 1, 1, 1, 1, 2, 3, 4],
                       "s": [None] * 6 + ["x", "y"], "v": [5, 6, 7, 8, 9, 9, 9, 9]})
    def value(c: str, row: int) -> object:
        return df[c].to_numpy(dtype=object, na_value=None)[row]

    runs = literals.runs(df, value, ["kind"])
    assert [(r.start, r.stop, r.literals) for r in runs] == [
        (0, 4, {"kind": "'a'", "n": "1", "s": "NULL"}), (4, 8, {"kind": "'b'", "v": "9"})]
    monkeypatch.setattr(literals, "MIN_RUN", 5)  # short runs share only what all of them do
    assert [(r.start, r.stop, r.literals) for r in literals.runs(df, value, ["kind"])] == [
        (0, 8, {})]


def test_times_as_text_is_numpy_text_with_a_space() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(-5 * 10**16, 10**17, 20_000).astype("datetime64[us]")
    values[::9] = np.datetime64("NaT")
    want = [None if np.isnat(v) else str(s).replace("T", " ")
            for v, s in zip(values, np.datetime_as_string(values, unit="us"))]
    assert times_as_text(values) == want  # years 0385 to 5138: both ways of writing them
    ns = pd.to_datetime(rng.integers(0, 4 * 10**18, 1000)).to_numpy()  # truncated to us
    assert times_as_text(ns) == [str(s).replace("T", " ")
                                 for s in np.datetime_as_string(ns, unit="us")]
    same = np.full(5, np.datetime64("2025-02-03 04:05:06.000007"))
    assert times_as_text(same) == ["2025-02-03 04:05:06.000007"] * 5
    assert times_as_text(np.array([], dtype="datetime64[ns]")) == []


def test_text_order_is_the_order_of_the_keys() -> None:
    ids = np.random.default_rng(1).integers(0, 10**7, 5000)
    ids[:4] = [0, 1, 10, 100]
    keys = [f"earn:{i}" for i in ids.tolist()]
    assert [keys[i] for i in text_order(ids)] == sorted(keys)
