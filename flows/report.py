"""Weekly: rebuild attribution and write the store report (HTML) with its summary artifact."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

from clm_core.db.engine import make_engine
from clm_core.runs import record_run
from flows.common import target
from tasks.measure import attribute, publish_report


@flow(name="report", log_prints=False)
def report(out: str = "reports/report.html", locale: str = "en", since: datetime | None = None,
           now: datetime | None = None) -> State:
    """``now``: the measuring clock (default: the store's newest order or enrollment)."""
    tgt = target()
    engine = make_engine(tgt.database_url)
    try:
        with record_run(engine, "report", flow_run_id=str(flow_run.id or "") or None) as run:
            attributed = attribute(tgt, now, run.id)
            written = publish_report(tgt, out, since, locale)
            run.summary = {"path": written["path"], "attributed": attributed["enrollments"]}
    finally:
        engine.dispose()
    return Completed(message=f"report written to {written['path']}")
