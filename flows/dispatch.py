"""Every few minutes: send what is due (new, deferred and retryable messages), then report."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.states import State

from clm_core.runclock import normalize_now
from flows.common import dispatch_due, recorded_run, report_and_finish, task_runner


@flow(name="dispatch", log_prints=False, task_runner=task_runner())
def dispatch(now: datetime | None = None, chunk_size: int = 2000, max_chunks: int = 8) -> State:
    """Send what is due at ``now`` (default: the wall clock at each claim; an aware time, as
    the Prefect UI sends it, counts in UTC)."""
    now = normalize_now(now)
    with recorded_run("dispatch", now) as (tgt, run, since):
        sent = dispatch_due(tgt, now, chunk_size, max_chunks)
        return report_and_finish(tgt, run, since, sent, "dispatch", {})
