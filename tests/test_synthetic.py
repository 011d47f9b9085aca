"""The synthetic store: deterministic, well formed, and faithful to the BG/NBD and Gamma-Gamma
models it claims to follow (checked by fitting lifetimes' models to what it produced)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from lifetimes import BetaGeoFitter, GammaGammaFitter

from clm import cli
from clm_core.db import tables as t
from clm_core.ingest import synthetic
from clm_core.ingest.synthetic import SyntheticParams, generate_frames, load_synthetic
from clm_core.lifecycle import aggregates

P = SyntheticParams()


def test_same_seed_same_data_other_seed_other_data() -> None:
    c1, o1 = generate_frames(2_000, seed=7)
    c2, o2 = generate_frames(2_000, seed=7)
    pd.testing.assert_frame_equal(c1, c2)
    pd.testing.assert_frame_equal(o1, o2)
    _, o3 = generate_frames(2_000, seed=8)
    assert not o1["ordered_at"].equals(o3["ordered_at"])


def test_shape_of_customers_and_orders() -> None:
    customers, orders = generate_frames(10_000, seed=1)
    assert len(customers) == 10_000 and customers["external_id"].is_unique
    assert orders["external_id"].is_unique
    assert set(orders["customer_external_id"]) <= set(customers["external_id"])
    buyers = orders["customer_external_id"].nunique()
    prospects = 10_000 - buyers
    assert 0.05 < prospects / 10_000 < 0.11  # the 8% prospect share
    assert 4.0 < len(orders) / 10_000 < 6.0  # about five orders per customer
    start = pd.Timestamp(P.end) - pd.Timedelta(days=P.days)
    assert orders["ordered_at"].between(start, pd.Timestamp(P.end)).all()
    assert (orders["amount"] >= 0).all() and 35 < orders["amount"].mean() < 65
    # Orders come grouped by customer in time order; a buyer signs up at the first order.
    first = orders.groupby("customer_external_id", sort=False)["ordered_at"]
    assert first.is_monotonic_increasing.all()
    signed = customers.set_index("external_id")["signed_up_at"]
    assert (first.min() == signed[first.min().index]).all()
    # Contacts are the clearly fake ones, every value valid for import.
    assert customers["email"].str.endswith("@example.com").all()
    assert customers["phone"].str.fullmatch(r"\+\d{10,14}").all()
    assert set(customers["locale"]) == {"en-US", "en-GB", "zh-CN", "de-DE"}


def _summary(orders: pd.DataFrame) -> pd.DataFrame:
    """frequency/recency/T in days and mean repeat value, computed from the orders here
    (lifetimes' own summary helper mishandles orders after the observation end)."""
    g = orders.groupby("customer_external_id")["ordered_at"]
    first, last, n = g.min(), g.max(), g.size()
    day = pd.Timedelta(days=1)
    repeat = orders[orders["ordered_at"] > orders["customer_external_id"].map(first)]
    return pd.DataFrame({"frequency": n - 1, "recency": (last - first) / day,
                         "T": (pd.Timestamp(P.end) - first) / day,
                         "monetary": repeat.groupby("customer_external_id")["amount"].mean()})


def test_bgnbd_and_gamma_gamma_fits_recover_the_generating_parameters() -> None:
    # 20k customers: over seeds 20-27 r and alpha came within 3% and a, b within 9% (they are
    # weakly identified: only dropouts inform them). The tolerances leave room for any seed and
    # still catch a wrong process: allowing dropout at the first purchase (the MBG/NBD story)
    # fits r 0.6 and alpha 31 instead of 0.8 and 40.
    _, orders = generate_frames(20_000, seed=11)
    s = _summary(orders)
    bg = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    fitted = bg.params_
    assert fitted["r"] == pytest.approx(P.r, rel=0.08)
    assert fitted["alpha"] == pytest.approx(P.alpha, rel=0.08)
    assert fitted["r"] / fitted["alpha"] == pytest.approx(P.r / P.alpha, rel=0.06)  # mean rate
    assert fitted["a"] == pytest.approx(P.a, rel=0.2)
    assert fitted["b"] == pytest.approx(P.b, rel=0.2)
    assert fitted["a"] / (fitted["a"] + fitted["b"]) == pytest.approx(P.a / (P.a + P.b), rel=0.15)

    rep = s[s["frequency"] > 0]
    gg = GammaGammaFitter().fit(rep["frequency"], rep["monetary"]).params_
    assert gg["p"] == pytest.approx(P.spend_p, rel=0.2)
    assert gg["q"] == pytest.approx(P.spend_q, rel=0.15)
    assert gg["v"] == pytest.approx(P.spend_gamma, rel=0.25)


def test_load_synthetic_writes_everything_once(engine: sa.Engine) -> None:
    first = load_synthetic(engine, 3_000, seed=5)
    assert first.written == {"customers": 3_000, "orders": first.orders}
    again = load_synthetic(engine, 3_000, seed=5)
    assert again.written == {"customers": 0, "orders": 0}
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.customers)) == 3_000
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.orders)) == first.orders
        revenue = conn.scalar(sa.select(sa.func.sum(t.orders.c.amount)))
        buyers = conn.scalar(sa.select(sa.func.count(sa.distinct(t.orders.c.customer_id))))
    assert float(revenue) == pytest.approx(first.revenue, abs=0.01)
    assert buyers == 3_000 - first.prospects


def test_a_store_written_in_slices_is_whole_and_its_aggregates_follow_it(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "SLICE", 700)
    # up to one slice, the seed's own data
    one, = synthetic.slices(700, seed=5)
    for got, want in zip(one, generate_frames(700, seed=5)):
        pd.testing.assert_frame_equal(got, want)
    first = load_synthetic(engine, 2_000, seed=5)  # slices of 700, 700 and 600 customers
    assert first.customers == 2_000 and first.written == {"customers": 2_000,
                                                          "orders": first.orders}
    again = load_synthetic(engine, 2_000, seed=5)
    assert again.written == {"customers": 0, "orders": 0}
    o, c = t.orders, t.customers
    with engine.begin() as conn:
        assert conn.scalar(sa.select(sa.func.count(sa.distinct(c.c.external_id)))) == 2_000
        stored = conn.scalar(sa.select(sa.func.count()).select_from(o))
        assert stored == first.orders == conn.scalar(
            sa.select(sa.func.count(sa.distinct(o.c.external_id))))
        # every order belongs to the customer its slice made it for
        owners = pd.read_sql(sa.select(o.c.external_id, c.c.external_id.label("customer"))
                             .join(c, c.c.id == o.c.customer_id), conn)
        made = pd.concat([orders for _, orders in synthetic.slices(2_000, seed=5)])
        assert dict(zip(owners["external_id"], owners["customer"])) == dict(
            zip(made["external_id"], made["customer_external_id"]))
        assert made["customer_external_id"].str.startswith("syn-").all()
        assert len(set(made["customer_external_id"])) == 2_000 - first.prospects
        # the purchase aggregates follow the orders: rebuilding them changes nothing
        a = t.customer_purchase_aggregates
        assert aggregates.in_step(conn)
        kept = pd.read_sql(sa.select(a).order_by(a.c.customer_id), conn)
        aggregates.rebuild(conn)
        pd.testing.assert_frame_equal(kept, pd.read_sql(sa.select(a).order_by(a.c.customer_id),
                                                        conn))
        assert len(kept) == 2_000 - first.prospects


def test_csv_files_written_in_slices_hold_every_slice_once(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "SLICE", 700)
    report = synthetic.write_csv(tmp_path, 2_000, seed=5)
    people, orders = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("customers", "orders"))
    made = list(synthetic.slices(2_000, seed=5))
    assert report.customers == len(people) == 2_000 and report.orders == len(orders)
    assert list(people["external_id"]) == [e for c, _ in made for e in c["external_id"]]
    assert list(orders["external_id"]) == [e for _, o in made for e in o["external_id"]]
    assert list(orders["customer_id"]) == [e for _, o in made
                                           for e in o["customer_external_id"]]


def test_generate_csv_files_import_cleanly(db_url: str, tmp_path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--database", db_url, "generate", "--customers", "500", "--seed",
                              "2", "--csv", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "500 customers" in out.output
    orders = pd.read_csv(tmp_path / "orders.csv")
    for entity, name in (("customers", "customers.csv"), ("orders", "orders.csv")):
        res = runner.invoke(cli, ["--database", db_url, "import", entity, str(tmp_path / name),
                                  "--timezone", "Asia/Shanghai"])
        assert res.exit_code == 0, res.output
        assert "0 rejected" in res.output
    _, frames = generate_frames(500, seed=2)
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        stored = pd.read_sql(sa.select(t.orders.c.external_id, t.orders.c.ordered_at)
                             .order_by(t.orders.c.external_id), conn)
    engine.dispose()
    assert len(stored) == len(orders)
    # Times carry their UTC offset, so --timezone does not shift them.
    assert (pd.to_datetime(stored["ordered_at"]).to_numpy()
            == frames.sort_values("external_id")["ordered_at"].to_numpy()).all()


def test_generate_command_loads_the_database(db_url: str) -> None:
    res = CliRunner().invoke(cli, ["--database", db_url, "generate", "--customers", "300"])
    assert res.exit_code == 0, res.output
    assert "new or changed rows: customers 300" in res.output
    per_customer = re.search(r"\(([\d.]+) per customer\)", res.output)
    assert per_customer and 3 < float(per_customer.group(1)) < 7
