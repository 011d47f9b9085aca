"""The journey engine as a task: enroll, exit, advance and plan outbox messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.journeys.run import evaluate
from tasks.context import Target, opened


@task(name="plan-journeys", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def plan_journeys(target: Target, now: datetime | None) -> dict[str, Any]:
    """One evaluation of every active journey; retry-safe because planning is idempotent
    (enrollments and message keys are unique, writes are ON CONFLICT DO NOTHING)."""
    with opened(target) as (settings, engine):
        ev = evaluate(engine, settings, now=now)
    return {"journeys": [j.name for j in ev.journeys], "versions": ev.versions,
            "written": vars(ev.written) if ev.written is not None else {}}
