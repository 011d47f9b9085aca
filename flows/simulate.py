"""The daily evaluation replayed on a simulated clock: one ``lifecycle`` run per step.

``clm demo`` runs it over the CDNOW data's own period, so that journeys enter customers when
their stage changed, waits end, goals are reached by the orders that really followed, and the
numbers (entered, sent, converted, control vs treated) mean something.
"""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow
from prefect.states import Completed, Failed, State

from clm_core.simclock import simulated_steps
from flows.common import target
from flows.lifecycle import lifecycle


@flow(name="simulate", log_prints=False)
def simulate(start: date, steps: int, every_days: int = 7, hour: int = 10,
             fit_max_age_days: float = 28.0) -> State:
    """Run ``lifecycle`` as of ``start``, ``start + every_days``, ... (``steps`` runs), each the
    next morning at ``hour`` in the store's time zone. Every step runs even when one fails
    (as the schedule would); the simulation ends Failed if any step did."""
    tz = target().settings().default_timezone
    failed = []
    for as_of, now in simulated_steps(start, steps, timedelta(days=every_days), hour, tz):
        state = lifecycle(as_of=as_of, now=now, fit_max_age_days=fit_max_age_days,
                          simulated=True, return_state=True)
        if not state.is_completed():
            failed.append(f"{as_of}: {state.message}")
    if failed:
        return Failed(message=f"{len(failed)} of {steps} steps failed; first: {failed[0]}")
    return Completed(message=f"{steps} steps from {start} every {every_days} days")
