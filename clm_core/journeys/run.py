"""One evaluation against the database: load journeys and customers, plan, and (unless a dry
run) write the plan, all in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy.engine import Engine

from clm_core.db.engine import take_write_lock
from clm_core.journeys.engine import Plan, merged, plan
from clm_core.journeys.loader import CompiledJourney
from clm_core.journeys.store import (
    active_versions,
    earliest_entries,
    evaluation_scope,
    load_journeys,
    load_previous,
    load_snapshot,
    project_policy,
    sync_versions,
)
from clm_core.journeys.writeback import Written, write_plan
from clm_core.runclock import normalize_now
from clm_core.runs import utcnow
from clm_core.settings import Settings


@dataclass
class Evaluation:
    plan: Plan | None  # the whole plan; None when it was written part by part (``parts`` > 1)
    journeys: list[CompiledJourney]
    versions: dict[str, str]  # journey -> new | changed | same
    written: Written | None
    parts: int = 1  # passes over the customers (``[journeys] customers_per_pass``)


def evaluate(db: Engine, settings: Settings, now: datetime | None = None,
             dry_run: bool = False) -> Evaluation:
    """Enroll, advance and plan messages for every active journey at ``now`` (default: now).

    The customers it may change are read, planned and written in parts of at most
    ``customers_per_pass`` (all in the one transaction), so memory follows the part, not the
    store. A dry run keeps every part's plan, merged, for its report."""
    now = pd.Timestamp(normalize_now(now) or utcnow()).as_unit("ns").to_pydatetime()
    policy = project_policy(settings.section("journeys"))
    journeys = [j for j in load_journeys(settings.journeys_dir, policy) if j.spec.status != "draft"]
    with db.begin() as conn:
        if not dry_run:
            # SQLite: the evaluation reads, plans and then writes in one transaction; a writer
            # that commits in between (the web service storing callbacks, a dispatcher) would
            # make the write fail at once with "database is locked", whatever the busy
            # timeout. Holding the write lock from the start, others wait their turn instead.
            take_write_lock(conn)
        versions = sync_versions(conn, journeys, now, write=not dry_run)
        current = {j.key for j in journeys}
        in_use = active_versions(conn)
        previous = load_previous(conn, [k for k in in_use if k not in current
                                        and k[0] in {j.name for j in journeys}], policy)
        everything = journeys + previous
        scope = evaluation_scope(conn, everything, now, earliest_entries(conn, in_use))
        parts = scope.parts(conn, policy.customers_per_pass)
        plans: list[Plan] = []
        written = None if dry_run else Written(0, 0, 0)
        for part in parts:
            snap = load_snapshot(conn, everything, now, policy, scope=scope, part=part)
            result = plan(everything, snap, now, policy, settings.default_timezone)
            del snap  # the next part's rows take its place, and its plan this one's
            if written is not None:
                written += write_plan(conn, result)
            if dry_run or len(parts) == 1:
                plans.append(result)
            del result
        scope.close(conn)
    return Evaluation(merged(plans) if plans else None, journeys, versions, written, len(parts))
