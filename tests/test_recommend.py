"""Recommendations: the simulated catalogue's structure, the evaluation's point-in-time rule, the
recommender beating the most-popular baseline where there is something to learn (and tying it
where there is not), and the SQL counts matching the in-memory ones on both databases."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.errors import InputError
from clm_core.recommend.catalog import (
    CatalogParams,
    ItemChain,
    load_simulated,
    make_catalog,
    order_items,
    simulated_catalog,
    simulated_lines,
)
from clm_core.recommend.evaluate import evaluate, holdout_last_orders
from clm_core.recommend.model import MAX_SHRINK, ItemModel, counts_from_lines, popular_top
from clm_core.recommend.recommender import Recommender, read_counts, read_lines


@pytest.fixture(scope="module")
def structured() -> pd.DataFrame:
    return simulated_lines(2000, seed=3)


@pytest.fixture(scope="module")
def unstructured() -> pd.DataFrame:
    return simulated_lines(2000, seed=3, params=CatalogParams.unstructured())


def test_catalogue_is_deterministic_by_seed() -> None:
    orders = pd.DataFrame({"order_id": np.arange(1, 301), "customer_id": np.arange(300) // 3,
                           "ordered_at": pd.date_range("2025-01-01", periods=300, freq="h")})
    segments = pd.Series(np.arange(100) % 4, index=np.arange(100))
    one = order_items(np.random.default_rng(7), orders, segments)
    assert one.equals(order_items(np.random.default_rng(7), orders, segments))
    assert not one.equals(order_items(np.random.default_rng(8), orders, segments))
    assert set(one["order_id"]) == set(orders["order_id"])  # every order has items
    assert not one.duplicated(["order_id", "line_no"]).any()
    assert not one.duplicated(["order_id", "sku"]).any()
    assert (one.groupby("order_id")["line_no"].min() == 1).all()
    assert (one["quantity"] >= 1).all() and (one["unit_price"] > 0).all()
    with pytest.raises(InputError, match="segment"):
        order_items(np.random.default_rng(7), orders, segments.iloc[:50])


def test_a_chain_carries_each_customers_next_order_across_calls() -> None:
    """A store written day by day passes one chain to every day's ``order_items``: with every
    next main item the previous one's complement, a customer's first order of the second day
    is the complement of their last main item of the first (without the chain it is a fresh
    draw); customers new on the second day start fresh."""
    params = CatalogParams(p_follow=1.0, p_repeat=0.0, p_together=0.0, extra_items=0.0)
    catalog = make_catalog(np.random.default_rng(1), params)
    segments = pd.Series(np.arange(60) % 4, index=np.arange(60))
    day1 = pd.DataFrame({"order_id": np.arange(1, 41), "customer_id": np.arange(40) // 2,
                         "ordered_at": pd.date_range("2025-01-01", periods=40, freq="min")})
    day2 = pd.DataFrame({"order_id": np.arange(41, 81), "customer_id": np.arange(40) // 2 + 10,
                         "ordered_at": pd.date_range("2025-01-02", periods=40, freq="min")})
    chain = ItemChain()
    rng = np.random.default_rng(2)
    first = order_items(rng, day1, segments, params, catalog, chain)
    second = order_items(rng, day2, segments, params, catalog, chain)
    sku = {s: i for i, s in enumerate(catalog.skus)}
    main1 = first[first["line_no"] == 1].merge(day1, on="order_id")
    last1 = main1.groupby("customer_id")["sku"].last().map(sku)
    main2 = second[second["line_no"] == 1].merge(day2, on="order_id")
    first2 = main2.groupby("customer_id")["sku"].first().map(sku)
    returning = first2.index.intersection(last1.index)  # customers 10..19
    assert len(returning) == 10
    assert (first2[returning].to_numpy() == catalog.complement[last1[returning].to_numpy()]).all()
    assert chain.last.index.tolist() == list(range(30))  # customers 20..29 joined the chain
    without = order_items(np.random.default_rng(2), day2, segments, params, catalog)
    main_w = without[without["line_no"] == 1].merge(day2, on="order_id")
    fresh = main_w.groupby("customer_id")["sku"].first().map(sku)[returning].to_numpy()
    assert not (fresh == catalog.complement[last1[returning].to_numpy()]).all()


def test_complements_cooccur_far_more_than_chance(structured: pd.DataFrame,
                                                  unstructured: pd.DataFrame) -> None:
    def lift(lines: pd.DataFrame, params: CatalogParams) -> float:
        """Baskets holding a best seller and its complement, over the number chance gives
        (the complement's share of baskets), summed over the 20 best sellers."""
        catalog = simulated_catalog(3, params)  # the one the fixtures' stores use
        baskets = lines.groupby("order_id")["sku"].agg(set)
        share = lines["sku"].value_counts() / len(baskets)
        seen = expected = 0.0
        for sku in share.index[:20]:
            comp = catalog.skus[catalog.complement[np.flatnonzero(catalog.skus == sku)[0]]]
            with_it = baskets[baskets.map(lambda b, s=sku: s in b)]
            seen += with_it.map(lambda b, c=comp: c in b).sum()
            expected += len(with_it) * share.get(comp, 0.0)
        return seen / expected

    assert lift(structured, CatalogParams()) > 5
    assert 0.5 < lift(unstructured, CatalogParams.unstructured()) < 2


def test_popularity_differs_by_segment(structured: pd.DataFrame) -> None:
    tops = structured.groupby("segment")["sku"].agg(lambda s: s.value_counts().index[0])
    assert tops.nunique() > 1


def test_recommender_beats_most_popular_on_a_structured_store(structured: pd.DataFrame) -> None:
    ev = evaluate(structured, k=3)
    assert ev.customers == len(holdout_last_orders(structured)) > 1000
    assert ev.recommender.low > ev.baseline.high  # the intervals do not overlap
    assert ev.diff_low > 0 and ev.p_value < 0.001


def test_recommender_no_worse_than_popular_without_structure(unstructured: pd.DataFrame) -> None:
    ev = evaluate(unstructured, k=3)
    assert ev.diff_high >= 0 or ev.p_value > 0.05  # not worse beyond noise
    model = ItemModel.from_counts(*counts_from_lines(unstructured, 2000))
    assert model.shrink == MAX_SHRINK  # no structure found, so popularity throughout


def test_held_out_orders_never_shape_their_own_recommendation(structured: pd.DataFrame) -> None:
    """A SKU planted only in the held-out orders, in every one of them, would top any
    popularity count that saw them: it is never recommended and no model is trained on it."""
    held = holdout_last_orders(structured)
    planted = held.assign(sku="PLANTED", product_name="Planted", line_no=99)
    leaky = pd.concat([structured, planted], ignore_index=True)

    def spy(train: pd.DataFrame, ids: list[int], history: pd.DataFrame, k: int) -> np.ndarray:
        assert "PLANTED" not in set(train["sku"]) and "PLANTED" not in set(history["sku"])
        first = held.set_index("customer_id").loc[ids, "ordered_at"].min()
        assert train.empty or train["ordered_at"].max() < first  # strictly before the group
        assert not history["order_id"].isin(held["order_id"]).any()
        return np.full((len(ids), k), "PLANTED")  # would hit every time if it were offered

    clean, dirty = evaluate(structured), evaluate(leaky)
    assert (dirty.recommender.hits, dirty.baseline.hits) == (clean.recommender.hits,
                                                             clean.baseline.hits)
    spied = evaluate(leaky, method=spy)
    assert spied.recommender.hits == spied.customers  # the spy ran on every group


def test_sql_counts_match_the_in_memory_counts(engine: sa.Engine) -> None:
    load_simulated(engine, 300, seed=5)
    with engine.connect() as conn:
        lines = read_lines(conn)
        sql = read_counts(conn, limit=50)
    mem = counts_from_lines(lines, limit=50)

    def rows(frame: pd.DataFrame, cols: list[str]) -> list[tuple[object, ...]]:
        return sorted(tuple(r) for r in frame[cols].astype({"n": int}).itertuples(index=False))

    assert sql[3] == mem[3] == lines["order_id"].nunique()
    assert rows(sql[0], ["sku", "n"]) == rows(mem[0], ["sku", "n"])
    assert rows(sql[1], ["x", "y", "n"]) == rows(mem[1], ["x", "y", "n"])
    assert rows(sql[2], ["sku", "n"]) == rows(mem[2], ["sku", "n"])


def test_recommender_follows_what_was_bought_and_skips_what_is_owned(engine: sa.Engine) -> None:
    """Forty customers bought A then B (B follows A); customer 41 bought only A; sixty bought
    C once (the best seller). Customer 41 gets B first; nobody is offered what they own; a
    cancelled order and orders from ``as_of`` on do not count."""
    assert Recommender(engine).for_customers([1, 2]) == {1: [], 2: []}  # no items yet
    with engine.begin() as conn:
        conn.execute(sa.insert(t.customers), [{"id": i, "external_id": f"c{i}"}
                                              for i in range(1, 103)])
        orders, items = [], []

        def order(cid: int, day: int, skus: list[str], status: str = "completed") -> None:
            oid = len(orders) + 1
            orders.append({"id": oid, "external_id": f"o{oid}", "customer_id": cid,
                           "ordered_at": datetime(2026, 1, day), "amount": 10, "status": status})
            items.extend({"order_id": oid, "line_no": n, "sku": s, "product_name": f"Item {s}",
                          "quantity": 1} for n, s in enumerate(skus, start=1))

        for cid in range(1, 41):
            order(cid, 1, ["A"])
            order(cid, 2, ["B"])
        order(41, 1, ["A"])
        for cid in range(43, 103):
            order(cid, 3, ["C"])
        order(42, 3, ["D"], status="cancelled")
        order(42, 20, ["E"])
        conn.execute(sa.insert(t.orders), orders)
        conn.execute(sa.insert(t.order_items), items)
    rec = Recommender(engine, k=2, as_of=datetime(2026, 1, 10))
    assert set(rec.skus) == {"A", "B", "C"}  # not the cancelled D, not E from after as_of
    got = rec.for_customers([41, 1, 42, 41])
    assert list(got) == [41, 1, 42]
    assert [r["sku"] for r in got[41]] == ["B", "C"] and got[41][0]["name"] == "Item B"
    assert [r["sku"] for r in got[1]] == ["C"]  # owns the rest
    assert [r["sku"] for r in got[42]] == ["C", "A"]  # no history before as_of: best sellers


def test_clm_recommend_evaluate(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    (tmp_path / "clm.toml").write_text("[clm]\n", encoding="utf-8")
    base = ["--database", db_url, "--project", str(tmp_path), "recommend", "evaluate"]
    empty = CliRunner().invoke(cli, base)
    assert empty.exit_code == 1 and "no order items" in empty.output
    assert "Traceback" not in empty.output
    load_simulated(engine, 400, seed=2)
    text = CliRunner().invoke(cli, base)
    assert text.exit_code == 0, text.output
    assert "hit rate at 3: recommender" in text.output and "Wilson" in text.output
    out = CliRunner().invoke(cli, [*base, "--json", "-k", "5"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    with engine.connect() as conn:
        expected = evaluate(read_lines(conn), k=5)
    assert got["k"] == 5 and got["customers"] == expected.customers > 0
    assert got["recommender"]["hits"] == expected.recommender.hits
    assert got["baseline"]["hits"] == expected.baseline.hits


def test_owned_items_come_back_only_when_the_store_shows_repeats() -> None:
    """Thirty customers buy coffee K in each of three orders; thirty buy a grinder G, then a
    filter F. K is offered again to a customer who owns it; G, never bought twice, is not."""
    rows = []
    for cid in range(30):
        rows += [(cid, cid * 10 + n, n, "K") for n in range(3)]
    for cid in range(30, 60):
        rows += [(cid, cid * 10, 0, "G"), (cid, cid * 10 + 1, 1, "F")]
    lines = pd.DataFrame(rows, columns=["customer_id", "order_id", "day", "sku"])
    lines["ordered_at"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(lines.pop("day"), "D")
    lines["product_name"] = lines["sku"]
    model = ItemModel.from_counts(*counts_from_lines(lines, 10))
    assert list(model.skus[model.repeats]) == ["K"]
    history = pd.DataFrame({"customer_id": [100, 101], "sku": ["K", "G"], "weight": 1.0})
    top = model.top([100, 101], history, k=3)
    assert model.skus[top[0][0]] == "K"
    assert "G" not in {model.skus[j] for j in top[1] if j >= 0}
    base = popular_top(model, [100, 101], history, k=3)
    assert "K" in model.skus[base[0]] and "G" not in model.skus[base[1][base[1] >= 0]]
