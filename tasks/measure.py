"""Measurement as tasks: rebuild the attribution table; write the report and publish its key
figures as a markdown artifact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from clm_core.journeys.store import project_policy
from clm_core.measure.attribution import rebuild
from clm_core.measure.publish import build_report, summary_markdown
from tasks.context import Target, opened


@task(name="attribute", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def attribute(target: Target, now: datetime | None, run_id: str | None = None) -> dict[str, Any]:
    """Rebuild the attribution table for ``now`` (one transaction: a retry recomputes it)."""
    with opened(target) as (settings, engine):
        r = rebuild(engine, now, project_policy(settings.section("journeys")), run_id)
    return {"now": r.now.isoformat(), "enrollments": r.enrollments, "complete": r.complete,
            "converted": r.converted}


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(target: Target, out: str, since: datetime | None = None,
                   locale: str = "en") -> dict[str, Any]:
    """Write the HTML report and publish its summary (with the file's path) as an artifact."""
    with opened(target) as (settings, engine):
        path, summary = build_report(engine, settings, out, since, locale)
    create_markdown_artifact(summary_markdown(path.resolve(), summary), key="clm-report",
                             description=f"Store report: {path.resolve()}")
    return {"path": str(path.resolve()), **summary}
