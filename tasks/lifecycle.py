"""Tasks around the lifecycle engine: model fits and scoring."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.lifecycle.pipeline import (LifecycleConfig, Population, ScoreReport, customer_ranges,
                                         fit, population, score)
from tasks.context import Target, opened


@task(name="fit-models", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def fit_models(target: Target, as_of: date | None = None, holdout_end: date | None = None,
               run_id: str | None = None) -> dict[str, Any]:
    """Fit BG/NBD (or the configured model) and Gamma-Gamma; a rerun only adds a fit row."""
    with opened(target) as (settings, engine):
        report = fit(engine, LifecycleConfig.from_settings(settings), as_of=as_of,
                     holdout_end=holdout_end, run_id=run_id)
        return report.as_dict()


def _report(r: ScoreReport) -> dict[str, Any]:
    return {"as_of": r.as_of.isoformat(), "customers": r.customers, "stages": r.stages,
            "segments": r.segments, "transitions": r.transitions, "seconds": r.seconds,
            "fit_id": r.fit_id, "fit_reason": r.fit_reason,
            "fit_window_end": r.fit_window_end.isoformat() if r.fit_window_end else None}


@task(name="score-customers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_customers(target: Target, as_of: date | None, run_id: str | None,
                    fit_id: int | None = None, max_fit_age_days: float | None = None) -> dict[str, Any]:
    """Features, scores, RFM, stages and transitions of every customer in one vectorised pass,
    with the fit chosen as ``clm score`` chooses it (refitted when none is fresh enough); safe
    to retry (scores upsert, and the transition diff against the stored stage records nothing
    twice)."""
    with opened(target) as (settings, engine):
        return _report(score(engine, LifecycleConfig.from_settings(settings), as_of=as_of,
                             run_id=run_id, fit_id=fit_id, max_fit_age_days=max_fit_age_days))


@task(name="score-population", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_population(target: Target, as_of: date | None, run_id: str | None, chunks: int,
                     fit_id: int | None = None, max_fit_age_days: float | None = None,
                     ) -> tuple[Population, list[tuple[int, int]]]:
    """What the chunks share (fits, store rhythm, RFM rank tables) and their id ranges."""
    with opened(target) as (settings, engine):
        shared = population(engine, LifecycleConfig.from_settings(settings), as_of, run_id,
                            fit_id, max_fit_age_days)
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
                           "transitions": 0, "seconds": {},
                           **{k: parts[0][k] for k in ("fit_id", "fit_reason", "fit_window_end")}}
    for p in parts:
        out["customers"] += p["customers"]
        out["transitions"] += p["transitions"]
        for key in ("stages", "segments", "seconds"):
            for k, v in p[key].items():
                out[key][k] = out[key].get(k, 0) + v
    return out
