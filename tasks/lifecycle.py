"""Tasks around the lifecycle engine: model fits and scoring."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.db import tables as t
from clm_core.errors import NotEnoughHistoryError
from clm_core.lifecycle.pipeline import (LifecycleConfig, Population, ScoreReport, customer_ranges,
                                         fit, latest_order_date, population, score)
from clm_core.runs import utcnow
from tasks.context import Target, opened


@task(name="fit-models", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def fit_models(target: Target, as_of: date | None = None, holdout_end: date | None = None,
               run_id: str | None = None) -> dict[str, Any]:
    """Fit BG/NBD (or the configured model) and Gamma-Gamma; a rerun only adds a fit row."""
    with opened(target) as (settings, engine):
        try:
            report = fit(engine, LifecycleConfig.from_settings(settings), as_of=as_of,
                         holdout_end=holdout_end, run_id=run_id)
        except NotEnoughHistoryError as exc:  # scoring goes on without the models
            return {"model": None, "not_fitted": str(exc)}
        return report.as_dict()


@task(name="fit-if-stale", cache_policy=NO_CACHE)
def fit_is_stale(target: Target, max_age_days: float, as_of: date | None = None) -> bool:
    """True when there is no fit, the newest was made more than ``max_age_days`` ago, or its
    data ends more than ``max_age_days`` before the scoring date."""
    mf = t.model_fits
    with opened(target) as (_, engine), engine.connect() as conn:
        newest = conn.execute(sa.select(mf.c.fitted_at, mf.c.window_end)
                              .order_by(mf.c.id.desc()).limit(1)).first()
        if newest is None:
            return True
        if as_of is None:
            as_of = latest_order_date(engine)
    age = timedelta(days=max_age_days)
    return utcnow() - newest.fitted_at > age or \
        abs(datetime.combine(as_of, datetime.min.time()) - newest.window_end) > age


def _report(r: ScoreReport) -> dict[str, Any]:
    return {"as_of": r.as_of.isoformat(), "customers": r.customers, "stages": r.stages,
            "segments": r.segments, "transitions": r.transitions, "seconds": r.seconds,
            "no_model": r.no_model}


@task(name="score-customers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_customers(target: Target, as_of: date | None, run_id: str | None) -> dict[str, Any]:
    """Features, scores, RFM, stages and transitions of every customer in one vectorised pass;
    safe to retry (scores upsert, and the transition diff against the stored stage records
    nothing twice)."""
    with opened(target) as (settings, engine):
        return _report(score(engine, LifecycleConfig.from_settings(settings), as_of=as_of, run_id=run_id))


@task(name="score-population", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_population(target: Target, as_of: date | None, run_id: str | None,
                     chunks: int) -> tuple[Population, list[tuple[int, int]]]:
    """What the chunks share (fits, store rhythm, RFM rank tables) and their id ranges."""
    with opened(target) as (settings, engine):
        shared = population(engine, LifecycleConfig.from_settings(settings), as_of, run_id)
        return shared, customer_ranges(engine, chunks)


@task(name="score-chunk", task_run_name="score-customers-{ids[0]}-{ids[1]}", cache_policy=NO_CACHE,
      retries=1, retry_delay_seconds=10)
def score_chunk(target: Target, shared: Population, ids: tuple[int, int],
                run_id: str | None) -> dict[str, Any]:
    """One id range, scored against the shared population; retry-safe like the whole run."""
    with opened(target) as (settings, engine):
        return _report(score(engine, LifecycleConfig.from_settings(settings), run_id=run_id,
                             ids=ids, shared=shared))


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' reports as one."""
    out: dict[str, Any] = {"as_of": parts[0]["as_of"], "customers": 0, "stages": {}, "segments": {},
                           "transitions": 0, "seconds": {}, "no_model": parts[0].get("no_model")}
    for p in parts:
        out["customers"] += p["customers"]
        out["transitions"] += p["transitions"]
        for key in ("stages", "segments", "seconds"):
            for k, v in p[key].items():
                out[key][k] = out[key].get(k, 0) + v
    return out
