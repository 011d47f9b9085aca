"""The daily evaluation: fit if stale, score, stages, journeys, dispatch what is due, report."""

from __future__ import annotations

from datetime import date, datetime

from prefect import flow, get_run_logger
from prefect.states import State

from flows.common import dispatch_due, recorded_run, report_and_finish, task_runner
from tasks.journeys import plan_journeys
from tasks.loyalty import evaluate_loyalty
from tasks.lifecycle import (fit_is_stale, fit_models, merge_reports, score_chunk, score_customers,
                             score_population)


def loyalty_clock(now: datetime | None, as_of: str) -> datetime:
    """The loyalty evaluation's clock: the run's ``now``, else the end of the scoring day."""
    if now is not None:
        return now
    return datetime.combine(date.fromisoformat(str(as_of)[:10]), datetime.max.time())


@flow(name="lifecycle", log_prints=False, task_runner=task_runner())
def lifecycle(as_of: date | None = None, now: datetime | None = None, fit_max_age_days: float = 7.0,
              dispatch: bool = True, dispatch_chunk_size: int = 2000,
              dispatch_max_chunks: int = 8, score_chunks: int = 1) -> State:
    """Evaluate every customer and send what is due.

    ``as_of`` (default: the newest order's day) is the scoring date; ``now`` (default: the
    current time) is the journeys' and dispatcher's clock, settable for backfills and demos.
    ``score_chunks`` > 1 scores customer id ranges as separate tasks (on a Dask cluster, in
    parallel) against shared store-level statistics; the results are the same as one pass.
    """
    log = get_run_logger()
    with recorded_run("lifecycle", now) as (tgt, run, since):
        if fit_is_stale(tgt, fit_max_age_days, as_of):
            fit = fit_models(tgt, as_of=as_of, run_id=run.id)
            log.info("fitted %s: %s", fit["model"], fit["params"])
        if score_chunks > 1:
            shared, ranges = score_population(tgt, as_of, run.id, score_chunks)
            futures = [score_chunk.submit(tgt, shared, ids, run.id) for ids in ranges]
            scored = merge_reports([f.result() for f in futures])
        else:
            scored = score_customers(tgt, as_of, run.id)
        log.info("scored %s customers as of %s: %s", scored["customers"], scored["as_of"], scored["stages"])
        # Points and tiers before planning, so tier changes and rewards enter journeys today.
        members = evaluate_loyalty(tgt, loyalty_clock(now, scored["as_of"]), run.id)
        if members is not None:
            log.info("; ".join(members.lines()))
        planned = plan_journeys(tgt, now)
        log.info("journeys: %s", planned["written"])
        sent = dispatch_due(tgt, now, dispatch_chunk_size, dispatch_max_chunks) if dispatch else {}
        return report_and_finish(tgt, run, since, sent, "lifecycle",
                                 {"scored": scored["customers"], "transitions": scored["transitions"],
                                  "planned": planned["written"]})
