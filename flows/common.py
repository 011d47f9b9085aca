"""Shared flow plumbing: settings, the task runner, dispatch fan-out, and the final state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, cast

from prefect import get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from clm_core.db.engine import make_engine
from clm_core.delivery.dispatcher import DispatchReport
from clm_core.lifecycle.pipeline import latest_order_date
from clm_core.reporting import RunSummary
from clm_core.runclock import RunClock, normalize_now, resolve
from clm_core.runs import Run, record_run, utcnow
from clm_core.settings import load_settings, redact
from tasks.context import Target
from tasks.dispatch import dispatch_chunk, due_count, plan_chunks
from tasks.report import publish_summary


def target() -> Target:
    return Target.from_settings(load_settings())


def task_runner() -> Any:
    """Threads by default; a Dask cluster when ``[orchestration] task_runner = "dask"`` or
    ``CLM_TASK_RUNNER=dask`` (``dask_address`` / ``CLM_DASK_ADDRESS`` names an existing
    cluster, otherwise a local one is started)."""
    section = load_settings().section("orchestration")
    kind = os.environ.get("CLM_TASK_RUNNER") or section.get("task_runner", "threads")
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        address = os.environ.get("CLM_DASK_ADDRESS") or section.get("dask_address")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(section.get("dask_workers", 2)),
                                              "threads_per_worker": 1, "processes": True})
    # Bounded: Prefect's default thread pool is unbounded.
    return ThreadPoolTaskRunner(max_workers=int(section.get("max_workers", 4)))


def dispatch_due(tgt: Target, now: datetime | None, chunk_size: int,
                 max_chunks: int) -> DispatchReport:
    """Fan out dispatch chunks over what is due now; waits for all of them."""
    n = plan_chunks(due_count(tgt, now), chunk_size, max_chunks)
    futures = [dispatch_chunk.submit(tgt, chunk=i, limit=chunk_size, now=now) for i in range(n)]
    wait(futures)
    total = DispatchReport()
    for f in futures:
        if f.state.is_completed():
            total.merge(cast(DispatchReport, f.result()))
        else:
            total.chunks_failed += 1
    return total


def final_state(report: RunSummary, dispatched: DispatchReport, what: str = "run") -> State:
    """Failed when any send failed for good, a provider halted its channel, or a dispatch
    chunk crashed; decided after all other work is done."""
    parts = []
    if report.failed:
        parts.append(f"{report.failed} sends failed for good (see the clm-failed-sends artifact)")
    for channel, why in sorted(dispatched.halted.items()):
        parts.append(f"channel {channel} halted, its messages wait: {redact(str(why))}")
    if dispatched.chunks_failed:
        parts.append(f"{dispatched.chunks_failed} dispatch chunks crashed")
    if parts:
        message = "; ".join(parts)
        get_run_logger().error(message)  # also in the run's logs, for operators and alerts
        return Failed(message=message)
    return Completed(message=f"{what} completed: {report.sent} sent, "
                             f"{report.planned} messages planned")


def run_clock(as_of: date | datetime | None, now: datetime | None) -> RunClock:
    """The run's as-of day and now, resolved as every entry point resolves them."""
    engine = make_engine(target().database_url)
    try:
        return resolve(as_of, now, lambda: latest_order_date(engine))
    finally:
        engine.dispose()


@contextmanager
def recorded_run(kind: str, now: datetime | None) -> Iterator[tuple[Target, Run, datetime]]:
    """The flow's target, its ``runs`` row, and the time its report counts from (the run's
    start, or ``now`` when a backfill's clock is earlier; an aware ``now`` counts in UTC)."""
    tgt = target()
    engine = make_engine(tgt.database_url)
    started = utcnow()
    now = normalize_now(now)
    try:
        with record_run(engine, kind, flow_run_id=str(flow_run.id or "") or None) as run:
            yield tgt, run, min(started, now) if now else started
    finally:
        engine.dispose()


def report_and_finish(tgt: Target, run: Run, since: datetime, dispatched: DispatchReport,
                      what: str, summary: dict[str, Any]) -> State:
    """Publish the run's artifacts, record its summary, and decide its final state."""
    report = publish_summary(tgt.database_url, since, f"{what.capitalize()} run",
                             recorded_since=run.started_at,
                             deliverability=(dispatched.deliverability.as_dict()
                                             if dispatched.deliverability else None))
    run.summary = {**summary, "dispatch": dispatched.totals(), "failed": report.failed}
    state = final_state(report, dispatched, what)
    if state.is_failed():
        run.status = "failed"
    return state
