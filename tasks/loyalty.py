"""The loyalty evaluation as a Prefect task: one transaction for every member (the ledger
is keyed, so a retry after a failure appends nothing twice)."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.loyalty.spec import load_programme
from clm_core.loyalty.store import Summary, run_loyalty
from tasks.context import Target, opened


# On SQLite a burst of provider callbacks (a week's sends reported within seconds) can hold
# the single write lock longer than the busy timeout; the evaluation is one idempotent
# transaction, so it waits for the burst to pass and tries again.
@task(name="loyalty", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=15)
def evaluate_loyalty(target: Target, now: datetime, run_id: str | None) -> Summary | None:
    """Points, tiers and rewards as of ``now``; None when the project has no programme."""
    with opened(target) as (settings, engine):
        prog = load_programme(settings.journeys_dir)
        if prog is None or prog.status != "active":
            return None
        return run_loyalty(engine, prog, now, run_id=run_id)
