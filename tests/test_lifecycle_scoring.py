"""Scoring on a real database: hand-computed customers, transitions, and CDNOW's stages."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.ingest.cdnow import import_cdnow
from clm_core.lifecycle.aggregates import rebuild
from clm_core.lifecycle.fitting import ModelFit, store_fit
from clm_core.lifecycle.pipeline import LifecycleConfig, customer_ranges, population, score
from clm_core.lifecycle.stages import load_rules
from tests.test_lifecycle_rules import REPO, STAGES

AS_OF = date(2024, 6, 30)
BG = {"r": 0.5, "alpha": 10.0, "a": 0.5, "b": 2.0}  # per day
GG = {"p": 6.0, "q": 4.0, "v": 15.0}
# The store's own rhythm from its three repeat buyers (not the default of a younger store).
CONFIG = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", rhythm_min_buyers=3)

# customer: [(day, amount), ...]; "P" never ordered; L's July order is after the as-of date.
ORDERS = {
    "P": [],
    "N": [("2024-06-20", 30.0)],
    "R": [("2024-05-20", 25.0)],
    "C": [("2024-04-01", 50.0)],
    "D": [("2024-03-01", 45.0)],
    "A": [("2024-01-01 09:00", 10.0), ("2024-01-01 17:30", 20.0), ("2024-06-25", 40.0)],
    "B": [("2024-06-10", 15.0), ("2024-06-20", 35.0)],
    "L": [(d, 20.0) for d in ("2024-05-01", "2024-05-15", "2024-06-01", "2024-06-15", "2024-06-29",
                              "2024-07-02")],
}


def seed(engine: sa.Engine) -> dict[str, int]:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.customers),
            [{"external_id": k, "signed_up_at": datetime(2023, 1, 1)} for k in ORDERS],
        )
        ids = dict(conn.execute(sa.select(t.customers.c.external_id, t.customers.c.id)).all())
        conn.execute(
            sa.insert(t.orders),
            [
                {
                    "external_id": f"{k}-{i}",
                    "customer_id": ids[k],
                    "ordered_at": datetime.fromisoformat(d),
                    "amount": a,
                }
                for k, rows in ORDERS.items()
                for i, (d, a) in enumerate(rows)
            ],
        )
        for model, params in (("bgnbd", BG), ("gamma_gamma", GG)):
            store_fit(conn, ModelFit(model, params, -1.0, 7, 0.0, 0.0, "day", AS_OF))
    return ids


def add_order(engine: sa.Engine, customer_id: int, when: str, amount: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.orders).values(
                external_id=f"extra-{when}",
                customer_id=customer_id,
                ordered_at=datetime.fromisoformat(when),
                amount=amount,
            )
        )


def scores(engine: sa.Engine) -> dict[int, dict]:
    with engine.connect() as conn:
        return {
            r["customer_id"]: dict(r) for r in conn.execute(sa.select(t.customer_scores)).mappings()
        }


def transitions(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(
                    t.stage_transitions.c.customer_id,
                    t.stage_transitions.c.from_stage,
                    t.stage_transitions.c.to_stage,
                    t.stage_transitions.c.as_of,
                ).order_by(t.stage_transitions.c.id)
            )
        ]


def p_alive_by_hand(x: int, tx: float, T: float) -> float:
    r, alpha, a, b = BG["r"], BG["alpha"], BG["a"], BG["b"]
    return 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))


def test_hand_computed_customers(engine: sa.Engine) -> None:
    ids = seed(engine)
    config = CONFIG
    report = score(engine, config, AS_OF)
    assert not report.fitted and report.customers == 8
    s = {k: scores(engine)[v] for k, v in ids.items()}
    # A: two orders on 1 Jan are one purchase day; 176 days to 25 Jun; 181 days old.
    assert (s["A"]["n_orders"], s["A"]["purchase_days"], s["A"]["frequency"]) == (3, 2, 1)
    assert (s["A"]["recency"], s["A"]["T"], s["A"]["monetary_value"]) == (176, 181, 40)
    assert s["A"]["total_spend"] == 70 and s["A"]["avg_order_value"] == pytest.approx(70 / 3)
    assert s["A"]["days_since_last_order"] == 5
    assert s["A"]["p_alive"] == pytest.approx(p_alive_by_hand(1, 176, 181))
    # L: the July order is after the as-of date and ignored.
    assert (s["L"]["n_orders"], s["L"]["frequency"], s["L"]["recency"], s["L"]["T"]) == (
        5,
        4,
        59,
        60,
    )
    assert s["L"]["p_alive"] == pytest.approx(p_alive_by_hand(4, 59, 60))
    assert s["B"]["p_alive"] == pytest.approx(p_alive_by_hand(1, 10, 20))
    # One-time buyers are alive for BG/NBD; their stage follows the store's rhythm instead:
    # median gap of repeat buyers A 176, L 59/4 = 14.75, B 10 -> 14.75 days.
    assert s["N"]["p_alive"] == 1.0 and s["N"]["frequency"] == 0 and s["N"]["monetary_value"] == 0
    gg_mean = GG["p"] * GG["v"] / (GG["q"] - 1)
    assert s["N"]["expected_aov"] == pytest.approx(gg_mean)
    w = GG["p"] * 1 / (GG["p"] * 1 + GG["q"] - 1)
    assert s["A"]["expected_aov"] == pytest.approx((1 - w) * gg_mean + w * 40)
    assert s["P"]["p_alive"] is None and s["P"]["n_orders"] == 0 and s["P"]["rfm_segment"] is None
    stages = {k: v["stage"] for k, v in s.items()}
    assert stages == {"P": "prospect", "N": "new", "R": "at_risk", "C": "churned", "D": "churned",
                      "A": "active", "B": "active", "L": "loyal"}
    assert all(v["stage_since"] == datetime(2024, 6, 30) for v in s.values())
    assert report.transitions == 8
    assert {(c, f, to) for c, f, to, _ in transitions(engine)} == {
        (ids[k], None, v) for k, v in stages.items()}


def test_rescoring_the_same_day_records_nothing_and_churned_buyers_reactivate(
    engine: sa.Engine,
) -> None:
    ids = seed(engine)
    config = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", fit_max_age_days=365,
                             rhythm_min_buyers=3)
    score(engine, config, AS_OF)
    before = scores(engine)
    again = score(engine, config, AS_OF)
    assert again.transitions == 0 and len(transitions(engine)) == 8
    assert {k: v["stage"] for k, v in scores(engine).items()} == {
        k: v["stage"] for k, v in before.items()
    }
    # C was churned; buying again makes it reactivated from that purchase on, and it stays so
    # when re-scored that day.
    add_order(engine, ids["C"], "2024-07-20", 30.0)
    score(engine, config, date(2024, 7, 31))
    c = scores(engine)[ids["C"]]
    assert (c["stage"], c["stage_since"]) == ("reactivated", datetime(2024, 7, 20))
    assert (ids["C"], "churned", "reactivated", date(2024, 7, 31)) in transitions(engine)
    # Only a purchase reactivates: D, churned too, did not buy and stays churned.
    assert scores(engine)[ids["D"]]["stage"] == "churned"
    assert [k for k, v in scores(engine).items() if v["stage"] == "reactivated"] == [ids["C"]]
    n = len(transitions(engine))
    assert score(engine, config, date(2024, 7, 31)).transitions == 0
    assert len(transitions(engine)) == n and scores(engine)[ids["C"]]["stage"] == "reactivated"


def test_every_default_stage_is_reached_on_cdnow(engine: sa.Engine) -> None:
    import_cdnow(engine, prospects=300)
    config = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml")
    url = engine.url.render_as_string(hide_password=False)
    seen: set[str] = set()
    for as_of in ("1997-03-31", "1997-09-30", "1998-06-30"):
        result = CliRunner().invoke(cli, ["--database", url, "--project", str(REPO), "score",
                                          "--as-of", as_of])
        assert result.exit_code == 0, result.output
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.select(t.customer_scores.c.stage, sa.func.count())
                                       .group_by(t.customer_scores.c.stage)).all())
        for stage, n in counts.items():
            assert f"{stage} " in result.output and f"{n:,}" in result.output
        seen |= set(counts)
        # each as-of day is later than every stored fit's data by more than a week: refit
        assert f"fitted now on orders up to {as_of}" in result.output
    assert seen == set(STAGES)
    assert load_rules(config.rules).names == STAGES


def test_reactivated_lasts_90_days_from_the_comeback_purchase(engine: sa.Engine) -> None:
    """With rare scoring, the scoring that notices a comeback may come long after it: the 90
    days count from the purchase, not from that scoring."""
    ids = seed(engine)
    config = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", fit_max_age_days=3650,
                             rhythm_min_buyers=3)
    score(engine, config, AS_OF)  # C and D churned as of 2024-06-30
    assert {scores(engine)[ids[k]]["stage"] for k in "CD"} == {"churned"}
    add_order(engine, ids["C"], "2024-07-05", 30.0)  # C comes back early in the quarter
    add_order(engine, ids["D"], "2024-09-20", 30.0)  # D comes back late in it
    score(engine, config, date(2024, 9, 30))  # the next (quarterly) scoring notices both
    s = scores(engine)
    # D bought 10 days ago: reactivated since that purchase.
    assert (s[ids["D"]]["stage"], s[ids["D"]]["stage_since"]) == (
        "reactivated",
        datetime(2024, 9, 20),
    )
    # C's comeback was 87 days ago: reactivated, but only for three more days.
    assert (s[ids["C"]]["stage"], s[ids["C"]]["stage_since"]) == (
        "reactivated",
        datetime(2024, 7, 5),
    )
    score(engine, config, date(2024, 10, 15))
    s = scores(engine)
    assert s[ids["C"]]["stage"] != "reactivated"  # 102 days after the purchase
    assert s[ids["D"]]["stage"] == "reactivated"  # 25 days after its purchase
    # A rerun of that day restores the stage before it and reaches the same answer.
    before = {k: v["stage"] for k, v in scores(engine).items()}
    assert score(engine, config, date(2024, 10, 15)).transitions == 0
    assert {k: v["stage"] for k, v in scores(engine).items()} == before


def test_a_comeback_noticed_after_90_days_is_not_reactivated(engine: sa.Engine) -> None:
    ids = seed(engine)
    config = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", fit_max_age_days=3650,
                             rhythm_min_buyers=3)
    score(engine, config, AS_OF)
    add_order(engine, ids["C"], "2024-07-01", 30.0)
    score(engine, config, date(2024, 10, 31))  # 122 days after the comeback
    assert scores(engine)[ids["C"]]["stage"] != "reactivated"
    assert not [r for r in transitions(engine) if r[2] == "reactivated"]


def test_scoring_uses_the_newest_fit_that_does_not_look_ahead(engine: sa.Engine) -> None:
    """A fit on data after the as-of day is never used for it; --fit chooses one, and the
    command says which fit it used and why."""
    seed(engine)
    with engine.begin() as conn:  # a later fit, on data up to the end of the year
        later = store_fit(conn, ModelFit("bgnbd", {**BG, "a": 0.05}, -1.0, 7, 0.0, 0.0, "day",
                                         date(2024, 12, 31)))
        store_fit(conn, ModelFit("gamma_gamma", GG, -1.0, 7, 0.0, 0.0, "day", date(2024, 12, 31)))
    with engine.connect() as conn:
        first = conn.scalar(sa.select(sa.func.min(t.model_fits.c.id)))
    config = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", fit_max_age_days=3650,
                             rhythm_min_buyers=3)
    report = score(engine, config, AS_OF)
    assert (report.fit_id, report.fitted) == (first, False)
    assert {v["fit_id"] for v in scores(engine).values()} == {first}
    assert report.fit_reason == f"the newest fit whose data ends on or before {AS_OF}"
    # From 2024-12-31 on, the later fit is the newest usable one.
    assert score(engine, config, date(2025, 1, 15)).fit_id == later

    url = engine.url.render_as_string(hide_password=False)

    def run(*args: str) -> object:
        return CliRunner().invoke(cli, ["--database", url, "--project", str(REPO), "score", *args])

    result = run("--as-of", "2024-06-30", "--fit", str(later))
    assert result.exit_code == 1 and "would look ahead" in result.output
    assert "Traceback" not in result.output
    result = run("--as-of", "2024-12-31", "--fit", str(first))
    assert result.exit_code == 0, result.output
    assert f"fit {first} (orders up to 2024-06-30): chosen with --fit" in result.output
    assert {v["fit_id"] for v in scores(engine).values()} == {first}
    assert run("--fit", "999").exit_code == 1


def _score_day(engine: sa.Engine, day: date, write: str, chunked: bool) -> int:
    """Score every customer as of ``day`` (in two chunks, as the flow does, or whole); the
    rows rewritten in their daily columns alone."""
    if not chunked:
        return score(engine, CONFIG, day, write=write).unmoved
    shared = population(engine, CONFIG, day)
    return sum(score(engine, CONFIG, day, ids=ids, shared=shared, write=write).unmoved
               for ids in customer_ranges(engine, 2))


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunks"])
def test_rewriting_the_daily_columns_alone_leaves_what_a_full_rewrite_leaves(
    engine: sa.Engine, chunked: bool
) -> None:
    """A scoring rewrites of a customer whose purchases, stage and RFM scores did not change
    only the columns that move with the day. Every other change must still reach the row,
    including those the purchase columns cannot show: an order's time corrected within its
    day, two amended orders whose total is the same (the first day's spend, hence the repeat
    spend, moves), others' RFM ranks moved by a new buyer, stages moved by time alone, the
    models' time unit, a new spend model, no model at all. Each comes on its own day, the one
    change there that moves its rows, and after each scoring the rows must equal what a full
    rewrite of the same day leaves."""
    ids = seed(engine)
    with engine.begin() as conn:
        rebuild(conn)  # the nightly path: features from the purchase aggregates
    _score_day(engine, AS_OF, "auto", chunked)
    o = t.orders

    def rescored(day: date) -> tuple[int, dict[int, dict], dict[int, dict]]:
        """Score ``day`` the daily way, then again in full; the unmoved rows, both tables."""
        before = scores(engine)
        unmoved = _score_day(engine, day, "auto", chunked)
        daily = scores(engine)
        assert _score_day(engine, day, "upsert", chunked) == 0
        full = scores(engine)
        for rows in (daily, full):
            for r in rows.values():
                del r["recorded_at"], r["run_id"]
        assert daily == full
        return unmoved, before, daily

    daily_path = chunked or engine.dialect.name == "sqlite"  # a whole PostgreSQL run reloads

    # Each change on its own day, so that each is the only thing that moves its rows.
    with engine.begin() as conn:  # the time of L's last order corrected within its day
        conn.execute(o.update().where(o.c.external_id == "L-4")
                     .values(ordered_at=datetime(2024, 6, 29, 18)))
        rebuild(conn)
    unmoved, before, after = rescored(date(2024, 7, 1))
    assert after[ids["L"]]["last_order_at"] != before[ids["L"]]["last_order_at"]
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0

    with engine.begin() as conn:  # A's two orders amended, the total the same
        for external_id, amount in (("A-0", 15.0), ("A-2", 35.0)):
            conn.execute(o.update().where(o.c.external_id == external_id).values(amount=amount))
        rebuild(conn)
    unmoved, before, after = rescored(date(2024, 7, 2))
    assert after[ids["A"]]["monetary_value"] != before[ids["A"]]["monetary_value"]
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0

    with engine.begin() as conn:  # a new buyer: others' RFM ranks move, no purchase of theirs
        conn.execute(sa.insert(t.customers).values(external_id="Z",
                                                   signed_up_at=datetime(2024, 7, 1)))
        z = conn.scalar(sa.select(t.customers.c.id).where(t.customers.c.external_id == "Z"))
        conn.execute(sa.insert(o).values(external_id="Z-0", customer_id=z,
                                         ordered_at=datetime(2024, 7, 2, 12), amount=500.0))
        rebuild(conn)
    unmoved, before, after = rescored(date(2024, 7, 3))
    moved = [k for k in ids.values() if after[k]["m_score"] != before[k]["m_score"]]
    assert moved and all(after[k]["stage"] == before[k]["stage"] for k in moved)
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0

    def refit(day: date, unit: str = "day", spend: dict[str, float] = GG) -> None:
        with engine.begin() as conn:
            store_fit(conn, ModelFit("bgnbd", BG, -1.0, 7, 0.0, 0.0, unit, day))
            store_fit(conn, ModelFit("gamma_gamma", spend, -1.0, 7, 0.0, 0.0, unit, day))

    refit(date(2024, 7, 25))  # the same models, fresh: time alone moves stages
    unmoved, before, after = rescored(date(2024, 7, 25))
    moved = [k for k in ids.values() if after[k]["stage"] != before[k]["stage"]]
    assert moved and all(after[k]["r_score"] == before[k]["r_score"]
                         and after[k]["expected_aov"] == before[k]["expected_aov"] for k in moved)
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0

    refit(date(2024, 7, 26), unit="week")  # the same models in weeks: recency moves
    unmoved, before, after = rescored(date(2024, 7, 26))
    assert after[ids["A"]]["recency"] == pytest.approx(before[ids["A"]]["recency"] / 7)
    assert after[ids["A"]]["expected_aov"] == before[ids["A"]]["expected_aov"]
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0

    refit(date(2024, 7, 27), spend={**GG, "v": 25.0})  # a new spend model
    unmoved, before, after = rescored(date(2024, 7, 27))
    assert after[ids["L"]]["expected_aov"] != before[ids["L"]]["expected_aov"]
    assert unmoved == (1 if daily_path else 0)  # the prospect has no expected value

    with engine.begin() as conn:  # no model (too little history): the repeat spend alone
        conn.execute(sa.delete(t.model_fits))
        for external_id, amount in (("A-0", 20.0), ("A-2", 30.0)):
            conn.execute(o.update().where(o.c.external_id == external_id).values(amount=amount))
        rebuild(conn)
    rescored(date(2024, 7, 28))  # every expected value gone
    with engine.begin() as conn:
        for external_id, amount in (("A-0", 25.0), ("A-2", 25.0)):
            conn.execute(o.update().where(o.c.external_id == external_id).values(amount=amount))
        rebuild(conn)
    unmoved, before, after = rescored(date(2024, 7, 29))
    assert after[ids["A"]]["expected_aov"] is None
    assert after[ids["A"]]["monetary_value"] != before[ids["A"]]["monetary_value"]
    assert 0 < unmoved < len(after) if daily_path else unmoved == 0
