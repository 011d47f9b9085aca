"""Fitting the BG/NBD (or modified BG/NBD) and Gamma-Gamma models with lifetimes' fitters.

The summary (frequency, recency, T, monetary value) comes from ``features``; identical
summaries are fitted once with a weight, which makes fits on a million customers quick. Every
failure becomes a ``ModelFitError`` that says what to try.

An unpenalised fit that does not converge (small early samples do this: a Gamma-Gamma fit on
14 repeat buyers, for one) is tried again with a small penalizer before the run gives up: an
unattended nightly run should score with a slightly shrunk fit rather than not at all. The fit
records the penalizer it used and why, and ``penalizer_fallback = false`` in ``[lifecycle]``
turns this off.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t
from clm_core.errors import ConfigError, ModelConvergenceError, ModelFitError
from clm_core.runs import utcnow

MIN_CUSTOMERS = 20  # below this, no fit is meaningful
MIN_REPEAT_CUSTOMERS = 10  # Gamma-Gamma fits repeat buyers only
PURCHASE_MODELS = ("bgnbd", "mbgnbd")
FALLBACK_PENALIZERS = (0.001, 0.01, 0.1)  # tried in turn after an unpenalised fit fails
PARAM_NAMES = {"bgnbd": ("r", "alpha", "a", "b"), "mbgnbd": ("r", "alpha", "a", "b"),
               "gamma_gamma": ("p", "q", "v")}
_ADVICE = ("try a penalizer ([lifecycle] penalizer = 0.001 in clm.toml), "
           "more data (an earlier window start or a later as-of date), or the other purchase "
           "model ([lifecycle] model = \"mbgnbd\" or \"bgnbd\")")


@dataclass
class ModelFit:
    """One fitted model, as stored in ``model_fits``."""

    model: str
    params: dict[str, float]
    log_likelihood: float
    n_customers: int
    penalizer: float
    seconds: float
    time_unit: str
    window_end: date
    window_start: datetime | None = None
    holdout_end: date | None = None
    diagnostics: dict[str, Any] | None = None
    id: int | None = field(default=None)


def _compressed(cols: dict[str, pd.Series]) -> tuple[pd.DataFrame, pd.Series]:
    """Unique rows of the summary and how many customers share each (the fit weights)."""
    df = pd.DataFrame(cols).round(6)
    grouped = df.groupby(list(df.columns), sort=False).size()
    return grouped.index.to_frame(index=False), grouped.reset_index(drop=True)


def _check(model: str, params: dict[str, float], n: int) -> None:
    bad = [k for k, v in params.items() if not np.isfinite(v) or v <= 0]
    if bad:
        raise ModelConvergenceError(f"{model} fit on {n:,} customers gave invalid parameters "
                            f"({', '.join(f'{k}={params[k]}' for k in bad)}); {_ADVICE}")


def _run(
    model: str, fitter: Any, args: tuple[pd.Series, ...], weights: pd.Series
) -> tuple[dict[str, float], float]:
    n = int(weights.sum())
    try:
        # lifetimes prints the optimiser's state when it gives up: keep stdout clean.
        with warnings.catch_warnings(), np.errstate(all="ignore"), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            fitter.fit(*args, weights=weights.to_numpy())
    except Exception as exc:  # lifetimes raises ConvergenceError, scipy may raise anything
        raise ModelConvergenceError(f"{model} fit on {n:,} customers did not converge "
                            f"({type(exc).__name__}); {_ADVICE}") from exc
    params = {k: float(fitter.params_[k]) for k in PARAM_NAMES[model]}
    _check(model, params, n)
    # lifetimes minimises a penalised mean on rescaled times: evaluate the plain total instead.
    log_params = np.log([params[k] for k in PARAM_NAMES[model]])
    w = weights.to_numpy(float)
    with np.errstate(all="ignore"):
        ll = -float(fitter._negative_log_likelihood(log_params, *(a.to_numpy(float) for a in args),
                                                    w, 0.0)) * float(w.sum())
    if not np.isfinite(ll):
        raise ModelConvergenceError(
            f"{model} fit on {n:,} customers gave a log-likelihood of {ll}; {_ADVICE}"
        )
    return params, ll


def fit_purchases(
    summary: pd.DataFrame, model: str = "bgnbd", penalizer: float = 0.0
) -> tuple[dict[str, float], float, int]:
    """Fit BG/NBD or modified BG/NBD on customers with at least one purchase.

    Returns (params, log-likelihood, customers)."""
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter

    if model not in PURCHASE_MODELS:
        raise ModelFitError(
            f"unknown purchase model {model!r}; use one of {', '.join(PURCHASE_MODELS)}"
        )
    s = summary[summary["T"].notna()]
    if len(s) < MIN_CUSTOMERS or (s["frequency"] > 0).sum() < MIN_REPEAT_CUSTOMERS:
        raise ModelFitError(
            f"{model}: {len(s):,} customers with orders, "
            f"{int((s['frequency'] > 0).sum()):,} repeat buyers: not enough to fit "
            f"(need {MIN_CUSTOMERS} and {MIN_REPEAT_CUSTOMERS}); import more orders "
            f"or choose a later as-of date"
        )
    rows, weights = _compressed({"frequency": s["frequency"], "recency": s["recency"], "T": s["T"]})
    fitter = (BetaGeoFitter if model == "bgnbd" else ModifiedBetaGeoFitter)(
        penalizer_coef=penalizer
    )
    params, ll = _run(model, fitter, (rows["frequency"], rows["recency"], rows["T"]), weights)
    return params, ll, len(s)


def fit_spend(summary: pd.DataFrame, penalizer: float = 0.0) -> tuple[dict[str, float], float, int]:
    """Fit Gamma-Gamma on repeat buyers' (frequency, average repeat spend)."""
    from lifetimes import GammaGammaFitter

    s = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    if len(s) < MIN_REPEAT_CUSTOMERS:
        raise ModelFitError(
            f"gamma_gamma: {len(s):,} repeat buyers with spend, need "
            f"{MIN_REPEAT_CUSTOMERS}; import more orders or choose a later as-of date"
        )
    rows, weights = _compressed(
        {"frequency": s["frequency"], "monetary_value": s["monetary_value"]}
    )
    fitter = GammaGammaFitter(penalizer_coef=penalizer)
    params, ll = _run("gamma_gamma", fitter, (rows["frequency"], rows["monetary_value"]), weights)
    return params, ll, len(s)


def _penalised(fit: Callable[[float], tuple[dict[str, float], float, int]], penalizer: float,
               fallback: bool) -> tuple[tuple[dict[str, float], float, int], float, str | None]:
    """``fit(penalizer)``; when an unpenalised fit does not converge and ``fallback`` is on,
    the first of ``FALLBACK_PENALIZERS`` that does. Returns (result, penalizer used, why it
    differs from the one asked for). A penalizer the store chose is never changed."""
    try:
        return fit(penalizer), penalizer, None
    except ModelConvergenceError as exc:
        if penalizer > 0 or not fallback:
            raise
        first = exc
    for tried in FALLBACK_PENALIZERS:
        try:
            # The error's advice ("try a penalizer") is what was just done: keep the cause.
            why = f"penalizer {tried:g}: unpenalised, the {str(first).split('; ')[0]}"
            return fit(tried), tried, why
        except ModelConvergenceError:
            continue
    raise first


def fallback_note(fit: ModelFit) -> str | None:
    """Why ``fit`` used a penalizer the store did not ask for, if it did."""
    return (fit.diagnostics or {}).get("penalizer_fallback")


def fit_models(
    summary: pd.DataFrame,
    *,
    as_of: date,
    time_unit: str,
    model: str = "bgnbd",
    penalizer: float = 0.0,
    holdout_end: date | None = None,
    fallback: bool = True,
) -> tuple[ModelFit, ModelFit]:
    """Both models on one summary, timed (each falls back to a small penalizer on its own when
    ``fallback`` and it does not converge unpenalised; see the module's docstring)."""
    start = time.perf_counter()
    (params, ll, n), used, why = _penalised(
        lambda pen: fit_purchases(summary, model, pen), penalizer, fallback)
    purchases = ModelFit(model, params, ll, n, used, time.perf_counter() - start, time_unit,
                         as_of, _window_start(summary), holdout_end,
                         diagnostics={"penalizer_fallback": why} if why else None)
    start = time.perf_counter()
    (params, ll, n), used, why = _penalised(lambda pen: fit_spend(summary, pen), penalizer,
                                            fallback)
    spend = ModelFit(
        "gamma_gamma",
        params,
        ll,
        n,
        used,
        time.perf_counter() - start,
        time_unit,
        as_of,
        purchases.window_start,
        holdout_end,
        diagnostics={"penalizer_fallback": why} if why else None,
    )
    return purchases, spend


def _window_start(summary: pd.DataFrame) -> datetime | None:
    first = summary["first_order_at"].min() if "first_order_at" in summary else None
    return None if first is None or pd.isna(first) else pd.Timestamp(first).to_pydatetime()


def store_fit(conn: Connection, fit: ModelFit, run_id: str | None = None) -> int:
    result = conn.execute(t.model_fits.insert().values(
        model=fit.model, params=fit.params, log_likelihood=fit.log_likelihood,
        penalizer=fit.penalizer, time_unit=fit.time_unit, window_start=fit.window_start,
        window_end=datetime.combine(fit.window_end, datetime.min.time()),
        holdout_end=(datetime.combine(fit.holdout_end, datetime.min.time())
                     if fit.holdout_end else None),
        n_customers=fit.n_customers,
        diagnostics={**(fit.diagnostics or {}), "fit_seconds": round(fit.seconds, 3)},
        recorded_at=utcnow(), run_id=run_id))
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row
    fit.id = int(key[0])
    return fit.id


def _model_fit(row: Any) -> ModelFit:
    return ModelFit(
        row["model"],
        {k: float(v) for k, v in row["params"].items()},
        row["log_likelihood"],
        row["n_customers"],
        row["penalizer"],
        float((row["diagnostics"] or {}).get("fit_seconds", 0)),
        row["time_unit"],
        row["window_end"].date(),
        row["window_start"],
        row["holdout_end"].date() if row["holdout_end"] else None,
        row["diagnostics"],
        row["id"],
    )


def _partner(conn: Connection, fit: ModelFit, run_id: str | None) -> ModelFit | None:
    """The fit stored beside ``fit`` (the spend model of a purchase model or the reverse):
    same data window, same run when known, the nearest id."""
    mf = t.model_fits
    models = ("gamma_gamma",) if fit.model in PURCHASE_MODELS else PURCHASE_MODELS
    end = datetime.combine(fit.window_end, datetime.min.time())
    q = sa.select(mf).where(mf.c.model.in_(models), mf.c.window_end == end)
    if run_id is not None:
        q = q.order_by(sa.case((mf.c.run_id == run_id, 0), else_=1))
    row = conn.execute(q.order_by(sa.func.abs(mf.c.id - int(fit.id or 0)))
                       .limit(1)).mappings().first()
    return _model_fit(row) if row is not None else None


@dataclass(frozen=True)
class FitChoice:
    """The fits a scoring uses, and why: ``None`` fits mean none qualifies (fit first)."""

    purchases: ModelFit | None
    spend: ModelFit | None
    reason: str


def choose_fits(conn: Connection, as_of: date, fit_id: int | None = None,
                max_age_days: float | None = None) -> FitChoice:
    """The fits to score as of ``as_of`` with: ``fit_id`` when given, else the newest fit whose
    data window ends on or before ``as_of`` (a later one would look ahead), as long as its
    window ends at most ``max_age_days`` before ``as_of`` (None: any age)."""
    mf = t.model_fits
    day = datetime.combine(as_of, datetime.min.time())
    if fit_id is not None:
        row = conn.execute(sa.select(mf).where(mf.c.id == fit_id)).mappings().first()
        if row is None:
            raise ConfigError(f"there is no fit {fit_id}: `clm status` lists the models, "
                              "`clm fit` makes one")
        if row["window_end"] > day:
            raise ConfigError(f"fit {fit_id} was fitted on orders up to "
                              f"{row['window_end']:%Y-%m-%d}, after the as-of day {as_of}: scoring "
                              "with it would look ahead; choose an earlier fit or a later --as-of")
        chosen = _model_fit(row)
        other = _partner(conn, chosen, row["run_id"])
        if other is None:
            raise ConfigError(f"fit {fit_id} ({chosen.model}) has no companion "
                              f"{'gamma_gamma' if chosen.model in PURCHASE_MODELS else 'purchase'} "
                              "fit on the same data window; run `clm fit`")
        purchases, spend = (chosen, other) if chosen.model in PURCHASE_MODELS else (other, chosen)
        return FitChoice(purchases, spend, "chosen with --fit")
    row = (
        conn.execute(
            sa.select(mf)
            .where(mf.c.model.in_(PURCHASE_MODELS), mf.c.window_end <= day)
            .order_by(mf.c.window_end.desc(), mf.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    if row is None:
        later = conn.scalar(sa.select(sa.func.count()).select_from(mf).where(mf.c.window_end > day))
        why = (f"every stored fit uses orders after {as_of}" if later
               else "there is no stored fit")
        return FitChoice(None, None, why)
    purchases = _model_fit(row)
    if max_age_days is not None and day - datetime.combine(
        purchases.window_end, datetime.min.time()
    ) > timedelta(days=max_age_days):
        return FitChoice(None, None, f"the newest usable fit ({purchases.id}) ends "
                                     f"{purchases.window_end}, more than {max_age_days:g} days "
                                     f"before {as_of}")
    partner = _partner(conn, purchases, row["run_id"])
    if partner is None:
        return FitChoice(None, None, f"fit {purchases.id} has no gamma_gamma fit beside it")
    return FitChoice(purchases, partner,
                     f"the newest fit whose data ends on or before {as_of}")
