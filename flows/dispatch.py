"""Every few minutes: send what is due (new, deferred and retryable messages), then report."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State

from clm_core.db.engine import make_engine
from clm_core.runs import record_run, utcnow
from flows.common import dispatch_due, final_state, target, task_runner
from tasks.report import publish_summary


@flow(name="dispatch", log_prints=False, task_runner=task_runner())
def dispatch(now: datetime | None = None, chunk_size: int = 2000, max_chunks: int = 8) -> State:
    tgt = target()
    engine = make_engine(tgt.database_url)
    started = utcnow()
    since = min(started, now) if now else started
    with record_run(engine, "dispatch", flow_run_id=str(flow_run.id or "") or None) as run:
        sent = dispatch_due(tgt, now, chunk_size, max_chunks)
        report = publish_summary(tgt.database_url, since, "Dispatch run")
        run.summary = {"dispatch": sent, "failed": report["failed"]}
        state = final_state(report, sent, "dispatch")
        if state.is_failed():
            run.status = "failed"
    engine.dispose()
    return state
