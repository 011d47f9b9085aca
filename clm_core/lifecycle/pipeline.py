"""One fit and one scoring run: features -> models -> scores, RFM, stages -> transitions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.db.bulk import replace_frame, write_frame
from clm_core.errors import ConfigError, ModelFitError, NotEnoughHistoryError
from clm_core.lifecycle.features import UNIT_DAYS, customer_features, holdout_purchases
from clm_core.lifecycle.fitting import (
    PURCHASE_MODELS,
    ModelFit,
    choose_fits,
    fallback_note,
    fit_models,
    store_fit,
)
from clm_core.lifecycle.history import DEFAULT_GAP_DAYS, Rhythm, shortfall, without_model
from clm_core.lifecycle.rfm import rfm, rfm_population
from clm_core.lifecycle.scoring import calibration_holdout_table, score_frame
from clm_core.lifecycle.stages import StageRules, load_rules
from clm_core.lifecycle.transitions import diff, rules_view
from clm_core.runs import utcnow
from clm_core.settings import Settings

SCORE_COLUMNS = [
    "customer_id", "as_of", "fit_id", "n_orders", "purchase_days", "first_order_at",
    "last_order_at", "total_spend", "avg_order_value", "days_since_last_order", "frequency",
    "recency", "T", "monetary_value", "p_alive", "expected_purchases_30d", "expected_purchases_90d",
    "expected_aov", "clv_12m", "r_score", "f_score", "m_score", "rfm_segment", "stage",
    "stage_since", "recorded_at", "run_id",
]
# The columns that move with the as-of day alone (and with the fit, or the run): a customer
# whose purchases, stage and RFM scores stayed as they were needs only these rewritten.
DAILY_COLUMNS = [
    "customer_id", "as_of", "fit_id", "days_since_last_order", "T", "p_alive",
    "expected_purchases_30d", "expected_purchases_90d", "clv_12m", "recorded_at", "run_id",
]


@dataclass(frozen=True)
class LifecycleConfig:
    """The ``[lifecycle]`` section of clm.toml."""

    model: str = "bgnbd"
    time_unit: str = "week"
    penalizer: float = 0.0
    # An unpenalised fit that does not converge is tried with a small penalizer (fitting.py).
    penalizer_fallback: bool = True
    discount_rate: float = 0.10  # annual, for CLV
    rules: Path | None = None  # default: journeys/lifecycle.yaml
    # A scoring refits when the newest fit's data ends more than this before its as-of day.
    fit_max_age_days: float = 7.0
    default_gap_days: float = DEFAULT_GAP_DAYS  # the rhythm until there are enough repeat buyers
    rhythm_min_buyers: int = Rhythm.min_buyers

    @property
    def rhythm(self) -> Rhythm:
        return Rhythm(self.default_gap_days, self.rhythm_min_buyers)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LifecycleConfig":
        raw = dict(settings.section("lifecycle"))
        keys = ("model", "time_unit", "penalizer", "penalizer_fallback", "discount_rate", "rules",
                "fit_max_age_days", "default_gap_days", "rhythm_min_buyers")
        unknown = set(raw) - set(keys)
        if unknown:
            raise ConfigError(f"unknown keys in [lifecycle]: {', '.join(sorted(unknown))}; valid: "
                              + ", ".join(keys))
        try:
            gap = float(raw.get("default_gap_days", cls.default_gap_days))
            buyers = int(raw.get("rhythm_min_buyers", cls.rhythm_min_buyers))
        except (TypeError, ValueError) as exc:
            raise ConfigError("[lifecycle] default_gap_days must be a number of days and "
                              "rhythm_min_buyers a whole number") from exc
        if gap <= 0 or buyers < 1:
            raise ConfigError("[lifecycle] default_gap_days must be > 0 and rhythm_min_buyers >= 1")
        cfg = cls(model=str(raw.get("model", cls.model)),
                  time_unit=str(raw.get("time_unit", cls.time_unit)),
                  penalizer=float(raw.get("penalizer", cls.penalizer)),
                  penalizer_fallback=bool(raw.get("penalizer_fallback", cls.penalizer_fallback)),
                  discount_rate=float(raw.get("discount_rate", cls.discount_rate)),
                  fit_max_age_days=float(raw.get("fit_max_age_days", cls.fit_max_age_days)),
                  default_gap_days=gap, rhythm_min_buyers=buyers,
                  rules=settings.project_dir / raw["rules"] if raw.get("rules")
                  else settings.journeys_dir / "lifecycle.yaml")
        if cfg.model not in PURCHASE_MODELS:
            raise ConfigError(
                f"[lifecycle] model {cfg.model!r}: use one of {', '.join(PURCHASE_MODELS)}"
            )
        if cfg.time_unit not in UNIT_DAYS:
            raise ConfigError(
                f"[lifecycle] time_unit {cfg.time_unit!r}: use one of {', '.join(UNIT_DAYS)}"
            )
        if cfg.fit_max_age_days < 0:
            raise ConfigError("[lifecycle] fit_max_age_days must be >= 0 (days)")
        if cfg.penalizer < 0 or not -1 < cfg.discount_rate < 10:
            raise ConfigError(
                "[lifecycle] penalizer must be >= 0 and discount_rate a yearly rate such as 0.1"
            )
        return cfg

    def load_rules(self) -> StageRules:
        if self.rules is None or not self.rules.is_file():
            raise ConfigError(f"no stage rules at {self.rules}: add journeys/lifecycle.yaml "
                              "(see docs/lifecycle.md) or set [lifecycle] rules")
        return load_rules(self.rules)


def latest_order_date(engine: Engine) -> date:
    """The default as-of date: the day of the newest order."""
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar()
    if last is None:
        raise ModelFitError(
            "there are no orders to fit on: import orders first (clm import orders)"
        )
    return (pd.Timestamp(last)).date()


@dataclass
class FitReport:
    purchases: ModelFit
    spend: ModelFit
    holdout: pd.DataFrame | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.purchases.model,
            "time_unit": self.purchases.time_unit,
            "params": {**self.purchases.params, **self.spend.params},
            "log_likelihood": {
                self.purchases.model: self.purchases.log_likelihood,
                "gamma_gamma": self.spend.log_likelihood,
            },
            "customers": {
                self.purchases.model: self.purchases.n_customers,
                "gamma_gamma": self.spend.n_customers,
            },
            "window": {
                "start": _iso(self.purchases.window_start),
                "end": _iso(self.purchases.window_end),
                "holdout_end": _iso(self.purchases.holdout_end),
            },
            "fit_seconds": round(self.purchases.seconds + self.spend.seconds, 3),
            "fit_ids": {self.purchases.model: self.purchases.id, "gamma_gamma": self.spend.id},
        }
        if self.holdout is not None:
            out["holdout"] = holdout_rows(self.holdout)
        return out


def holdout_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The calibration/holdout table as JSON-ready rows."""
    return [{"calibration_frequency": k, **{c: float(v) for c, v in row.items()}}
            for k, row in table.iterrows()]


def _iso(v: date | datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def fit(engine: Engine, config: LifecycleConfig, as_of: date | None = None,
        holdout_end: date | None = None, time_unit: str | None = None,
        run_id: str | None = None) -> FitReport:
    """Fit on orders up to ``as_of`` (the calibration end when ``holdout_end`` is given)."""
    as_of = as_of or latest_order_date(engine)
    unit = time_unit or config.time_unit
    if holdout_end is not None and holdout_end <= as_of:
        raise ConfigError(f"holdout end {holdout_end} must be after the calibration end {as_of}")
    with engine.connect() as conn:
        features = customer_features(conn, as_of, unit).frame
        holdout = holdout_purchases(conn, as_of, holdout_end) if holdout_end else None
    short = shortfall(features)
    if short is not None:
        raise NotEnoughHistoryError(f"{short.message()}; scoring works without them meanwhile "
                                    "(clm score), with the model fields left empty")
    purchases, spend = fit_models(features, as_of=as_of, time_unit=unit, model=config.model,
                                  penalizer=config.penalizer, holdout_end=holdout_end,
                                  fallback=config.penalizer_fallback)
    table = None
    if holdout is not None and holdout_end is not None:
        duration = (holdout_end - as_of).days / UNIT_DAYS[unit]
        table = calibration_holdout_table(features.set_index("customer_id"), holdout,
                                          purchases.model, purchases.params, duration)
        purchases.diagnostics = {**(purchases.diagnostics or {}),
                                 "calibration_holdout": holdout_rows(table)}
    with engine.begin() as conn:
        store_fit(conn, purchases, run_id)
        store_fit(conn, spend, run_id)
    return FitReport(purchases, spend, table)


@dataclass
class ScoreReport:
    as_of: date
    customers: int
    stages: dict[str, int]
    segments: dict[str, int]
    transitions: int
    fit_id: int | None
    fitted: bool
    seconds: dict[str, float] = field(default_factory=dict)
    fit_reason: str = ""  # why this fit: chosen, the newest usable one, or fitted now (and why)
    fit_window_end: date | None = None
    no_model: str | None = None  # why the model fields are empty (too little history)
    unmoved: int = 0  # score rows rewritten in their daily columns alone (``_unmoved``)


@dataclass(frozen=True)
class Population:
    """What every chunk of one scoring run shares: the fits and the store-level statistics
    (the purchase rhythm and the RFM rank tables) that no chunk can compute alone."""

    as_of: date
    purchases: ModelFit | None  # None: too little history for a fit yet
    spend: ModelFit | None
    typical_gap_days: float
    rfm: dict[str, np.ndarray]
    fitted: bool
    fit_reason: str = ""
    no_model: str | None = None  # why there is no fit yet


def _fits(engine: Engine, config: LifecycleConfig, features: Callable[[str], pd.DataFrame],
          as_of: date, run_id: str | None, fit_id: int | None = None,
          max_age_days: float | None = None,
          ) -> tuple[ModelFit | None, ModelFit | None, bool, str]:
    """The fits to score as of ``as_of`` with (``choose_fits``), or new ones fitted on the
    orders up to ``as_of`` and stored now when none is usable; with the reason. (None, None)
    while the store has too little history for a fit (see ``history``)."""
    age = config.fit_max_age_days if max_age_days is None else max_age_days
    with engine.connect() as conn:
        choice = choose_fits(conn, as_of, fit_id, age)
    if choice.purchases is not None and choice.spend is not None:
        return choice.purchases, choice.spend, False, choice.reason
    short = shortfall(features(config.time_unit))
    if short is not None:
        return None, None, False, short.message()
    purchases, spend = fit_models(
        features(config.time_unit),
        as_of=as_of,
        time_unit=config.time_unit,
        model=config.model,
        penalizer=config.penalizer,
        fallback=config.penalizer_fallback,
    )
    with engine.begin() as conn:
        for fitted_model in (purchases, spend):
            store_fit(conn, fitted_model, run_id)
    return purchases, spend, True, (f"fitted now on orders up to {as_of}: {choice.reason}"
                                    + "".join(f"; {f.model} with {fallback_note(f)}"
                                              for f in (purchases, spend) if fallback_note(f)))


def population(engine: Engine, config: LifecycleConfig, as_of: date | None = None,
               run_id: str | None = None, fit_id: int | None = None,
               max_fit_age_days: float | None = None, source: str = "auto") -> Population:
    """The shared part of a chunked scoring run (fits first if there is no fit); ``source``:
    where the features come from (see ``customer_features``)."""
    as_of = as_of or latest_order_date(engine)
    cache: dict[str, pd.DataFrame] = {}

    def features(unit: str) -> pd.DataFrame:
        if unit not in cache:
            with engine.connect() as conn:
                cache[unit] = customer_features(conn, as_of, unit, rhythm=config.rhythm,
                                                source=source).frame
        return cache[unit]

    purchases, spend, fitted, why = _fits(engine, config, features, as_of, run_id, fit_id,
                                          max_fit_age_days)
    f = features(purchases.time_unit if purchases else config.time_unit)
    short = shortfall(f) if purchases is None else None
    return Population(as_of, purchases, spend, float(f["typical_gap_days"].iloc[0]) if len(f)
                      else float("nan"), rfm_population(f), fitted, why,
                      short.message() if short else None)


def customer_ranges(engine: Engine, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` id ranges [lo, hi) holding about as many customers each."""
    with engine.connect() as conn:
        ids = np.array(
            [r[0] for r in conn.execute(sa.select(t.customers.c.id).order_by(t.customers.c.id))]
        )
    if not len(ids):
        return []
    cuts = np.unique(ids[np.linspace(0, len(ids), max(1, chunks) + 1, dtype=int)[:-1]])
    bounds = [*cuts.tolist(), int(ids[-1]) + 1]
    return list(zip(bounds[:-1], bounds[1:]))


def _rules_frame(engine: Engine, config: LifecycleConfig, f: pd.DataFrame,
                 purchases: ModelFit | None, spend: ModelFit | None, as_of: date,
                 shared: Population | None) -> pd.DataFrame:
    """Features + model scores + RFM + previous stage: every value a stage rule reads (the
    model fields empty while the store has too little history for a fit)."""
    if purchases is None or spend is None:
        scores = without_model(f.index)
    else:
        scores = score_frame(f, purchases.model, purchases.params, spend.params,
                             purchases.time_unit, config.discount_rate)
    with engine.connect() as conn:
        return rules_view(
            conn, pd.concat([f, scores, rfm(f, shared.rfm if shared else None)], axis=1), as_of
        )


def rules_values(engine: Engine, config: LifecycleConfig, rules: StageRules, as_of: date,
                 customer_id: int) -> tuple[pd.DataFrame, Population]:
    """The one-row frame the stage rules saw for ``customer_id`` when scored as of ``as_of``
    (computed again by the same code, against the same store-wide statistics)."""
    shared = population(engine, config, as_of)
    with engine.connect() as conn:
        unit = shared.purchases.time_unit if shared.purchases else config.time_unit
        f = customer_features(conn, as_of, unit, customer_columns=rules.fields,
                              ids=(customer_id, customer_id + 1),
                              typical_gap=shared.typical_gap_days, rhythm=config.rhythm).frame
    return _rules_frame(engine, config, f, shared.purchases, shared.spend, as_of, shared), shared


def _unmoved(view: pd.DataFrame, out: pd.DataFrame) -> np.ndarray:
    """Rows of ``out`` whose stored row differs from them in ``DAILY_COLUMNS`` at most.

    The stored purchase columns must equal the purchases now (``stored_purchases``, compared
    in the database: then so do the order value and frequency made from them alone), and the
    values other inputs decide must be equal too: the recency (the models' time unit), the
    repeat spend (the first day's spend: with a spend model the expected order value moves
    with it, without one only it shows), the expected order value (the spend model), the RFM
    scores (the store's ranks; the segment follows from them) and the stage (when it began
    moves only with it: ``transitions.diff``). Equal means the same number, or missing on
    both sides: the same inputs give the same float, and what reads back from the database
    is what was written. A row without a stored one is never unmoved."""
    def same(new: pd.Series, old: pd.Series) -> np.ndarray:
        a, b = new.to_numpy(), old.to_numpy()
        missing = pd.isna(a)
        return np.asarray((missing & pd.isna(b)) | (~missing & (a == b)), dtype=bool)

    rfm_code = (out["r_score"].fillna(0).astype("int64") * 100
                + out["f_score"].fillna(0).astype("int64") * 10
                + out["m_score"].fillna(0).astype("int64")).astype("float64")
    return ((view["stored_purchases"].to_numpy() == 1)
            & same(out["recency"].astype("float64"), view["stored_recency"])
            & same(out["monetary_value"].astype("float64"), view["stored_monetary_value"])
            & same(out["expected_aov"].astype("float64"), view["stored_expected_aov"])
            & same(rfm_code, view["stored_rfm"])
            & same(out["stage"].astype(object), view["stored_stage"].astype(object)))


def score(engine: Engine, config: LifecycleConfig, as_of: date | None = None,
          rules: StageRules | None = None, run_id: str | None = None,
          ids: tuple[int, int] | None = None, shared: Population | None = None,
          fit_id: int | None = None, max_fit_age_days: float | None = None,
          source: str = "auto", write: str = "auto") -> ScoreReport:
    """Score every customer as of ``as_of`` and record stage changes.

    ``source``: where the features come from: ``auto`` (the purchase aggregates when they
    cover ``as_of``, else the orders), ``orders`` (aggregate the whole history) or
    ``aggregates`` (see ``customer_features``); every choice gives the same scores.
    ``write``: how the score rows are stored: ``auto`` reloads the table afresh for a whole
    run on PostgreSQL (``replace_frame``: every row changes daily, and a reload leaves no dead
    row versions; at 1M rows 8.5 s against 23.2 s) and otherwise upserts in place, of most
    rows only the ``DAILY_COLUMNS`` (``_unmoved``; SQLite empties a table with foreign keys
    row by row, so there a reload costs more; a chunk's rows are a part of the table);
    ``upsert`` always updates every column in place. All leave the same rows
    (``benchmarks/bench_daily.py --writes`` and ``--check`` measure and compare them).

    The fits: ``fit_id`` when given, else the newest whose data ends on or before ``as_of`` and
    at most ``max_fit_age_days`` (default: the config's) before it; fitted first when none is.

    A chunk: ``ids`` = (lo, hi) scores the customers with lo <= id < hi against ``shared``
    (from ``population``), giving exactly what the whole run gives those customers.
    """
    if ids is not None and shared is None:
        raise ValueError("a chunk (ids) needs the shared population of its run")
    if write not in ("auto", "upsert"):
        raise ValueError(f"write must be auto or upsert, got {write!r}")
    rules = rules or config.load_rules()
    as_of = shared.as_of if shared else (as_of or latest_order_date(engine))
    clock: dict[str, float] = {}
    start = time.perf_counter()
    cache: dict[str, pd.DataFrame] = {}
    reload = write == "auto" and ids is None and engine.dialect.name == "postgresql"
    daily = write == "auto" and not reload  # rows that only moved with the day: those columns

    def features(unit: str) -> pd.DataFrame:
        if unit not in cache:
            with engine.connect() as conn:
                cache[unit] = customer_features(
                    conn, as_of, unit, customer_columns=rules.fields, ids=ids,
                    typical_gap=shared.typical_gap_days if shared else None,
                    rhythm=config.rhythm, source=source, stored=daily).frame
        return cache[unit]

    if shared is not None:
        purchases, spend, fitted, why = shared.purchases, shared.spend, False, shared.fit_reason
    else:
        purchases, spend, fitted, why = _fits(engine, config, features, as_of, run_id, fit_id,
                                              max_fit_age_days)
    f = features(purchases.time_unit if purchases else config.time_unit)
    clock["features"] = time.perf_counter() - start
    mark = time.perf_counter()
    no_model = None
    if purchases is None or spend is None:
        short = shortfall(f) if shared is None else None
        no_model = short.message() if short else shared.no_model if shared else None
    view = _rules_frame(engine, config, f, purchases, spend, as_of, shared)
    del f
    cache.clear()  # the chunk's features are not needed past this point
    clock["scores"] = time.perf_counter() - mark
    mark = time.perf_counter()
    stage = rules.assign(view)
    recorded = utcnow()  # the wall clock, kept only as recorded_at
    moves, since = diff(view, stage, as_of, run_id, rules.since_of(view, stage), recorded)
    clock["stages"] = time.perf_counter() - mark
    mark = time.perf_counter()
    segments = view["rfm_segment"].value_counts()
    n_customers = len(view)
    out = view[[c for c in SCORE_COLUMNS if c in view.columns]].assign(
        as_of=pd.Timestamp(as_of), fit_id=purchases.id if purchases else None, stage=stage,
        stage_since=since, recorded_at=pd.Timestamp(recorded), run_id=run_id)[SCORE_COLUMNS]
    unmoved = _unmoved(view, out) if daily else np.zeros(len(out), dtype=bool)
    del view
    # bulk: other writers wait for this transaction (a scoring run is the only writer of
    # scores; its chunks take turns).
    with engine.begin() as conn:
        if reload:
            replace_frame(conn, t.customer_scores, out, key="customer_id")
        else:
            write_frame(conn, t.customer_scores, out[~unmoved], keys=["customer_id"],
                        update=SCORE_COLUMNS[1:], bulk=True, runs_by=())
            # No index holds a daily column: the rows are updated with the indexes kept.
            write_frame(conn, t.customer_scores, out.loc[unmoved, DAILY_COLUMNS],
                        keys=["customer_id"], update=DAILY_COLUMNS[1:], bulk=True, runs_by=(),
                        keep_indexes=True)
        write_frame(conn, t.stage_transitions, moves, bulk=True)
    clock["write"] = time.perf_counter() - mark
    counts = stage.value_counts()
    return ScoreReport(as_of, n_customers, {s: int(counts.get(s, 0)) for s in rules.names},
                       {k: int(v) for k, v in segments.items()}, len(moves),
                       purchases.id if purchases else None, fitted, clock, why,
                       purchases.window_end if purchases else None, no_model,
                       int(unmoved.sum()))
