"""The daily evaluation: score (refitting when no fit is fresh enough), stages, journeys,
dispatch what is due, report."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime

from prefect import flow, get_run_logger
from prefect.states import State

from clm_core.delivery.dispatcher import DispatchReport
from flows.common import dispatch_due, recorded_run, report_and_finish, run_clock, task_runner
from tasks.journeys import plan_journeys
from tasks.lifecycle import merge_reports, score_chunk, score_customers, score_population
from tasks.loyalty import evaluate_loyalty
from tasks.measure import attribute, publish_report


@flow(name="lifecycle", log_prints=False, task_runner=task_runner())
def lifecycle(as_of: date | None = None, now: datetime | None = None,
              fit_max_age_days: float | None = None, fit_id: int | None = None,
              dispatch: bool = True, dispatch_chunk_size: int = 2000,
              dispatch_max_chunks: int = 8, score_chunks: int = 1, simulated: bool = False,
              report_path: str | None = None) -> State:
    """Evaluate every customer and send what is due.

    One clock for the whole run (``clm_core.runclock.resolve``, which says why): ``as_of`` is
    the scoring date (default: the newest order's day, never after ``now``'s day); ``now`` the
    journeys' and dispatcher's clock (default: the end of the as-of day when ``as_of`` is given
    and that day is over, else the wall clock), settable for backfills and demos; an aware
    ``now`` (as the Prefect UI sends it) is converted to UTC.
    Scoring uses ``fit_id``, else the newest fit whose data ends on or before ``as_of`` and at
    most ``fit_max_age_days`` (default: ``[lifecycle] fit_max_age_days``) before it, refitting
    when there is none. ``score_chunks`` > 1 scores customer id ranges as separate tasks (on a
    Dask cluster, in parallel) against shared store-level statistics; the results are the same
    as one pass. ``simulated`` marks a run on a simulated clock (the demo, a replay): it is
    recorded with the run, and ``clm run`` continues that clock.
    Attribution is rebuilt for ``now`` after dispatch; with ``report_path`` the store report
    is written there and its summary published as the ``clm-report`` artifact.
    """
    log = get_run_logger()
    clock = run_clock(as_of, now)
    for line in clock.describe():
        log.info(line)
    with recorded_run("lifecycle", clock.now) as (tgt, run, since):
        if score_chunks > 1:
            shared, ranges = score_population(tgt, clock.as_of, run.id, score_chunks, fit_id,
                                              fit_max_age_days)
            futures = [score_chunk.submit(tgt, shared, ids, run.id) for ids in ranges]
            scored = merge_reports([f.result() for f in futures])
        else:
            scored = score_customers(tgt, clock.as_of, run.id, fit_id, fit_max_age_days)
        log.info("fit %s (orders up to %s): %s", scored.fit_id, scored.fit_window_end,
                 scored.fit_reason)
        log.info("scored %s customers as of %s: %s", scored.customers, scored.as_of, scored.stages)
        # Points and tiers before planning, so tier changes and rewards enter journeys today.
        members = evaluate_loyalty(tgt, clock.now, run.id)
        if members is not None:
            log.info("; ".join(members.lines()))
        planned = plan_journeys(tgt, clock.now)
        log.info("journeys: %s", planned)
        sent = (dispatch_due(tgt, clock.now, dispatch_chunk_size, dispatch_max_chunks) if dispatch
                else DispatchReport())
        attributed = attribute(tgt, clock.now, run.id)
        log.info("attribution: %s", attributed)
        if report_path:
            written = publish_report(tgt, report_path)
            log.info("report written to %s", written["path"])
        return report_and_finish(tgt, run, since, sent, "lifecycle",
                                 {"as_of": clock.as_of.isoformat(), "now": clock.now.isoformat(),
                                  "fit_id": scored.fit_id, "scored": scored.customers,
                                  "transitions": scored.transitions,
                                  "planned": asdict(planned), "simulated": simulated})
