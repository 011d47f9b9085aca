"""The run's report in the Prefect UI: summary and failed-sends artifacts, failure events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from clm_core.db.engine import make_engine
from clm_core.feedback import guard
from clm_core.reporting import RunSummary, failed_sends, summarize, summary_markdown

FAILED_EVENT = "clm.send.failed"
MAX_EVENTS = 5000  # per run; the summary event carries the full count


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(database_url: str, since: datetime, title: str,
                    recorded_since: datetime | None = None,
                    deliverability: dict[str, Any] | None = None) -> RunSummary:
    """Markdown summary (with complaint and bounce rates), table of every failed send, one
    event per failed send, and an event per deliverability warning or halted channel.

    ``since``: the run's clock at its start (outcomes); ``recorded_since``: the wall clock at
    its start (transitions and messages it wrote)."""
    engine = make_engine(database_url)
    try:
        summary = summarize(engine, since=since, recorded_since=recorded_since)
        failures = failed_sends(engine, since=since)
    finally:
        engine.dispose()
    text = summary_markdown(summary, title)
    if deliverability:
        text += "\n" + guard.markdown(deliverability)
        for warning in deliverability.get("warnings") or []:
            emit_event(event="clm.deliverability.warning", resource={
                "prefect.resource.id": "clm.deliverability"}, payload={"warning": warning})
        for channel in deliverability.get("halted") or []:
            emit_event(
                event="clm.channel.halted",
                resource={"prefect.resource.id": f"clm.channel.{channel}"},
                payload={
                    "reason": "complaint rate over the limit",
                    "resume": f"clm resume {channel}",
                },
            )
    create_markdown_artifact(text, key="clm-summary",
                             description=f"{title}: stages, transitions, messages, models")
    columns = [
        "customer",
        "journey",
        "step",
        "channel",
        "provider",
        "status",
        "error",
        "attempts",
        "at",
    ]
    create_table_artifact(
        [{k: f[k] for k in columns} for f in failures],
        key="clm-failed-sends",
        description=f"{len(failures)} failed sends" if failures else "no failed sends",
    )
    for f in failures[:MAX_EVENTS]:
        emit_event(event=FAILED_EVENT,
                   resource={"prefect.resource.id": f"clm.message.{f['message']}",
                             "clm.journey": f["journey"], "clm.channel": f["channel"],
                             "clm.provider": f["provider"]},
                   payload={"customer": f["customer"], "step": f["step"], "status": f["status"],
                            "error": f["error"], "attempts": f["attempts"]})
    if failures:
        emit_event(event="clm.run.failed-sends", resource={"prefect.resource.id": "clm.outbox"},
                   payload={"count": len(failures)})
    return summary
