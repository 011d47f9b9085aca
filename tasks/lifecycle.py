"""Tasks around the lifecycle engine: model fits and scoring."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.errors import NotEnoughHistoryError
from clm_core.lifecycle.pipeline import (
    LifecycleConfig,
    Population,
    ScoreReport,
    customer_ranges,
    fit,
    population,
    score,
)
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


@task(name="score-customers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_customers(target: Target, as_of: date | None, run_id: str | None,
                    fit_id: int | None = None, max_fit_age_days: float | None = None,
                    ) -> ScoreReport:
    """Features, scores, RFM, stages and transitions of every customer in one vectorised pass,
    with the fit chosen as ``clm score`` chooses it (refitted when none is fresh enough); safe
    to retry (scores upsert, and the transition diff against the stored stage records nothing
    twice)."""
    with opened(target) as (settings, engine):
        return score(engine, LifecycleConfig.from_settings(settings), as_of=as_of,
                     run_id=run_id, fit_id=fit_id, max_fit_age_days=max_fit_age_days)


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
                run_id: str | None) -> ScoreReport:
    """One id range, scored against the shared population; retry-safe like the whole run."""
    with opened(target) as (settings, engine):
        return score(engine, LifecycleConfig.from_settings(settings), run_id=run_id, ids=ids,
                     shared=shared)


def merge_reports(parts: list[ScoreReport]) -> ScoreReport:
    """The chunks' reports as one (they share the run's date and fits)."""
    out = ScoreReport(as_of=parts[0].as_of, customers=0, stages={}, segments={}, transitions=0,
                      fit_id=parts[0].fit_id, fitted=any(p.fitted for p in parts),
                      fit_reason=parts[0].fit_reason, fit_window_end=parts[0].fit_window_end,
                      no_model=parts[0].no_model)
    for p in parts:
        out.customers += p.customers
        out.transitions += p.transitions
        for mine, theirs in ((out.stages, p.stages), (out.segments, p.segments)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        for k, sec in p.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + sec
    return out
