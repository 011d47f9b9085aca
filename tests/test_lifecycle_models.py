"""CLV models on CDNOW: published parameters, the model check, and the closed forms."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter
from lifetimes.utils import _customer_lifetime_value

from clm import cli
from clm_core.db import tables as t
from clm_core.errors import ModelFitError
from clm_core.ingest.cdnow import import_cdnow, read_cdnow
from clm_core.lifecycle.fitting import fit_purchases
from clm_core.lifecycle.pipeline import LifecycleConfig, fit
from clm_core.lifecycle.scoring import expected_purchases, expected_spend, p_alive, score_frame

CAL_END, HOLDOUT_END = date(1997, 9, 30), date(1998, 6, 30)
# Fader, Hardie & Lee (2005), "Counting your customers the easy way", and (2005b) for spend.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}
PUBLISHED_LL = -9582.4


def test_cdnow_sample_reproduces_published_parameters(engine: sa.Engine) -> None:
    import_cdnow(engine, sample=True)
    report = fit(engine, LifecycleConfig(time_unit="week"), as_of=CAL_END)
    params = {**report.purchases.params, **report.spend.params}
    for name, value in PUBLISHED.items():
        assert params[name] == pytest.approx(value, rel=0.01), name
    assert report.purchases.log_likelihood == pytest.approx(PUBLISHED_LL, rel=0.01)
    assert report.purchases.n_customers == 2357 and report.spend.n_customers == 946
    # The published example: x = 2, t_x = 30.43, T = 38.86 weeks expects 1.226 in 39 weeks.
    one = pd.DataFrame({"frequency": [2.0], "recency": [30.43], "T": [38.86]})
    assert expected_purchases("bgnbd", params, one, 39.0)[0] == pytest.approx(1.226, rel=0.01)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.model_fits.c.model, t.model_fits.c.params,
                                      t.model_fits.c.log_likelihood, t.model_fits.c.window_end)
                            .order_by(t.model_fits.c.id)).all()
    assert [r.model for r in rows] == ["bgnbd", "gamma_gamma"]
    assert rows[0].params["r"] == pytest.approx(0.243, rel=0.01)
    assert rows[0].window_end.date() == CAL_END


def independent_holdout_table() -> pd.DataFrame:
    """The model check straight from the raw file with pandas and lifetimes' own predictions."""
    tx = read_cdnow(sample=True)
    days = tx[["customer", "date"]].drop_duplicates()
    cal = days[days["date"] <= pd.Timestamp(CAL_END)]
    hold = days[
        (days["date"] > pd.Timestamp(CAL_END)) & (days["date"] <= pd.Timestamp(HOLDOUT_END))
    ]
    g = cal.groupby("customer")["date"]
    summary = pd.DataFrame({
        "frequency": g.size() - 1,
        "recency": (g.max() - g.min()).dt.days / 7,
        "T": (pd.Timestamp(CAL_END) - g.min()).dt.days / 7,
    })
    bgf = BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    actual = hold.groupby("customer").size().reindex(summary.index).fillna(0)
    predicted = bgf.conditional_expected_number_of_purchases_up_to_time(
        (HOLDOUT_END - CAL_END).days / 7, summary["frequency"], summary["recency"], summary["T"])
    band = summary["frequency"].clip(upper=7).map(lambda k: "7+" if k == 7 else str(k))
    return (
        pd.DataFrame({"band": band, "actual": actual, "predicted": predicted})
        .groupby("band")
        .mean()
    )


def test_calibration_holdout_table_matches_independent_computation(engine: sa.Engine) -> None:
    import_cdnow(engine, sample=True)
    result = CliRunner().invoke(
        cli,
        [
            "--database",
            str(engine.url.render_as_string(hide_password=False)),
            "fit",
            "--calibration-end",
            "1997-09-30",
            "--holdout-end",
            "1998-06-30",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out["params"]) == {"r", "alpha", "a", "b", "p", "q", "v"}
    mine = pd.DataFrame(out["holdout"]).set_index("calibration_frequency")
    expected = independent_holdout_table()
    assert list(mine.index[:-1]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    for band, row in expected.iterrows():
        assert mine.loc[band, "actual"] == pytest.approx(row["actual"], abs=1e-9), band
        assert mine.loc[band, "predicted"] == pytest.approx(row["predicted"], rel=1e-3), band
    assert mine.loc["all", "customers"] == 2357
    assert mine.loc["all", "actual"] == 1882  # purchase days in the holdout, counted from the file
    text = CliRunner().invoke(
        cli,
        [
            "--database",
            str(engine.url.render_as_string(hide_password=False)),
            "fit",
            "--calibration-end",
            "1997-09-30",
            "--holdout-end",
            "1998-06-30",
        ],
    )
    assert "Model check" in text.output and "7+" in text.output


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    T = rng.uniform(1, 80, n)
    recency = T * rng.uniform(0, 1, n)
    freq = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 40, n)).astype(float)
    recency[freq == 0] = 0
    money = np.where(freq > 0, rng.gamma(4, 10, n), 0.0)
    return pd.DataFrame({"frequency": freq, "recency": recency, "T": T, "monetary_value": money})


@pytest.mark.parametrize(
    "model, fitter_cls", [("bgnbd", BetaGeoFitter), ("mbgnbd", ModifiedBetaGeoFitter)]
)
def test_closed_forms_agree_with_lifetimes(
    summary: pd.DataFrame, model: str, fitter_cls: type
) -> None:
    params = {"r": 0.6, "alpha": 9.0, "a": 0.9, "b": 3.1}
    ref = fitter_cls()
    ref.params_ = pd.Series(params)
    f, r, T = summary["frequency"], summary["recency"], summary["T"]
    np.testing.assert_allclose(p_alive(model, params, summary),
                               ref.conditional_probability_alive(f, r, T), rtol=1e-10)
    for horizon in (4.3, 13.0, 52.0):
        np.testing.assert_allclose(
            expected_purchases(model, params, summary, horizon),
            ref.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, T),
            rtol=1e-8,
        )


def test_spend_and_clv_agree_with_lifetimes(summary: pd.DataFrame) -> None:
    purchase = {"r": 0.6, "alpha": 9.0, "a": 0.9, "b": 3.1}
    spend = {"p": 6.25, "q": 3.74, "v": 15.44}
    ggf = GammaGammaFitter()
    ggf.params_ = pd.Series(spend)
    aov = expected_spend(
        spend, summary["frequency"].to_numpy(), summary["monetary_value"].to_numpy()
    )
    np.testing.assert_allclose(aov, ggf.conditional_expected_average_profit(
        summary["frequency"], summary["monetary_value"]), rtol=1e-10)
    bgf = BetaGeoFitter()
    bgf.params_ = pd.Series(purchase)
    bgf.predict = bgf.conditional_expected_number_of_purchases_up_to_time  # as fit() sets it
    scores = score_frame(
        summary, "bgnbd", purchase, spend, "day", annual_discount_rate=1.01**12 - 1
    )
    ref = _customer_lifetime_value(
        bgf,
        summary["frequency"],
        summary["recency"],
        summary["T"],
        pd.Series(aov, index=summary.index),
        time=12,
        discount_rate=0.01,
        freq="D",
    )
    np.testing.assert_allclose(scores["clv_12m"], ref, rtol=1e-8)
    np.testing.assert_allclose(
        scores["expected_purchases_90d"],
        bgf.conditional_expected_number_of_purchases_up_to_time(
            90, summary["frequency"], summary["recency"], summary["T"]
        ),
        rtol=1e-8,
    )


def test_fit_without_enough_data_says_what_to_do() -> None:
    few = pd.DataFrame({"frequency": [0.0] * 30, "recency": [0.0] * 30, "T": [10.0] * 30})
    with pytest.raises(ModelFitError, match="not enough to fit"):
        fit_purchases(few)


def test_fit_that_does_not_converge_suggests_a_penalizer() -> None:
    # Everyone buys every week and nobody ever drops out: the dropout parameters run off to
    # the boundary and the optimiser cannot settle.
    n = 200
    weeks = np.arange(n) % 50 + 5.0
    degenerate = pd.DataFrame({"frequency": weeks, "recency": weeks, "T": weeks})
    with pytest.raises(ModelFitError, match="penalizer"):
        fit_purchases(degenerate)



def test_a_fit_that_does_not_converge_unpenalised_falls_back_to_a_small_penalizer(
        engine: sa.Engine) -> None:
    """The CDNOW sample as of 1997-01-13: its Gamma-Gamma fit (14 repeat buyers) does not
    converge unpenalised. The fit takes the first fallback penalizer that settles it (the same
    parameters as asking for that penalizer), says so, and keeps the purchase model
    unpenalised; with the fallback off, or a penalizer the store chose, the error stands."""
    from clm_core.lifecycle.features import customer_features
    from clm_core.lifecycle.fitting import FALLBACK_PENALIZERS, fallback_note, fit_models, fit_spend

    import_cdnow(engine, sample=True)
    as_of = date(1997, 1, 13)
    with engine.connect() as conn:
        summary = customer_features(conn, as_of, "week").frame
    with pytest.raises(ModelFitError, match="did not converge"):
        fit_spend(summary)
    purchases, spend = fit_models(summary, as_of=as_of, time_unit="week")
    assert purchases.penalizer == 0.0 and fallback_note(purchases) is None
    assert spend.penalizer == FALLBACK_PENALIZERS[0]
    assert spend.params == fit_spend(summary, FALLBACK_PENALIZERS[0])[0]
    assert fallback_note(spend) == ("penalizer 0.001: unpenalised, the gamma_gamma fit on 14 "
                                    "customers did not converge (ConvergenceError)")
    with pytest.raises(ModelFitError, match="did not converge"):
        fit_models(summary, as_of=as_of, time_unit="week", fallback=False)
    # A store's own penalizer is its choice: never replaced by another.
    chosen = fit_models(summary, as_of=as_of, time_unit="week", penalizer=0.05)[1]
    assert chosen.penalizer == 0.05 and fallback_note(chosen) is None
