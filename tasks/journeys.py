"""The journey engine as a task: enroll, exit, advance and plan outbox messages."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.journeys.run import evaluate
from clm_core.journeys.store import Written
from tasks.context import Target, opened


@task(name="plan-journeys", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def plan_journeys(target: Target, now: datetime | None) -> Written:
    """One evaluation of every active journey; retry-safe because planning is idempotent
    (enrollments and message keys are unique, writes are ON CONFLICT DO NOTHING)."""
    with opened(target) as (settings, engine):
        ev = evaluate(engine, settings, now=now)
    return ev.written or Written(0, 0, 0)
