"""Tasks around the lifecycle engine: model fits and scoring."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.db import tables as t
from clm_core.lifecycle.pipeline import LifecycleConfig, fit, latest_order_date, score
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


@task(name="score-customers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def score_customers(target: Target, as_of: date | None, run_id: str | None) -> dict[str, Any]:
    """Features, scores, RFM, stages and transitions; safe to retry (scores upsert, and the
    transition diff against the stored stage records nothing twice)."""
    with opened(target) as (settings, engine):
        r = score(engine, LifecycleConfig.from_settings(settings), as_of=as_of, run_id=run_id)
    return {"as_of": r.as_of.isoformat(), "customers": r.customers, "stages": r.stages,
            "segments": r.segments, "transitions": r.transitions, "seconds": r.seconds}
