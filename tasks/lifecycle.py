"""Tasks around the lifecycle engine: model fits and scoring."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.db import tables as t
from clm_core.lifecycle.pipeline import LifecycleConfig, fit, score
from clm_core.runs import utcnow
from tasks.context import Target, opened


@task(name="fit-models", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def fit_models(target: Target, as_of: date | None = None, holdout_end: date | None = None,
               run_id: str | None = None) -> dict[str, Any]:
    """Fit BG/NBD (or the configured model) and Gamma-Gamma; a rerun only adds a fit row."""
    with opened(target) as (settings, engine):
        report = fit(engine, LifecycleConfig.from_settings(settings), as_of=as_of,
                     holdout_end=holdout_end, run_id=run_id)
        return report.as_dict()


@task(name="fit-if-stale", cache_policy=NO_CACHE)
def fit_is_stale(target: Target, max_age_days: float) -> bool:
    """True when there is no fit or the newest is older than ``max_age_days``."""
    with opened(target) as (_, engine), engine.connect() as conn:
        newest: datetime | None = conn.scalar(sa.select(sa.func.max(t.model_fits.c.fitted_at)))
    return newest is None or utcnow() - newest > timedelta(days=max_age_days)


@task(name="score-customers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_customers(target: Target, as_of: date | None, run_id: str | None) -> dict[str, Any]:
    """Features, scores, RFM, stages and transitions; safe to retry (scores upsert, and the
    transition diff against the stored stage records nothing twice)."""
    with opened(target) as (settings, engine):
        r = score(engine, LifecycleConfig.from_settings(settings), as_of=as_of, run_id=run_id)
    return {"as_of": r.as_of.isoformat(), "customers": r.customers, "stages": r.stages,
            "segments": r.segments, "transitions": r.transitions, "seconds": r.seconds}
