"""A simulated clock: the steps of a simulation, and runs that continue one.

A simulation (``clm demo``, a replay) runs the daily evaluation at times inside the data's own
period: each step scores the store as of a day and runs the journeys the next morning at
``hour`` in the store's time zone (what the daily schedule does), so that stage changes enter
customers into journeys, waits end, and the orders that really followed reach the goals.

After a simulation, the store's stages, enrollments and outbox live on the simulated clock.
``choose`` keeps the next run on it: when the newest lifecycle run was simulated and the
command gives no dates, the run is the next day on that clock, instead of jumping to the
newest order's day (for CDNOW, 1998-06-30) or today. Otherwise the clock is resolved as every
entry point resolves it (``clm_core.runclock.resolve``).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.runclock import RunClock, normalize_as_of, normalize_now, resolve

STEP = timedelta(days=1)  # a continued simulation advances like the daily schedule


def simulated_steps(start: date, steps: int, every: timedelta, hour: int,
                    timezone: str) -> list[tuple[date, datetime]]:
    """(as_of, now) per step: scored as of the day, run the next day at ``hour`` local time,
    as naive UTC (the schema's convention)."""
    zone = ZoneInfo(timezone)
    out = []
    for k in range(steps):
        day = start + k * every
        local = datetime.combine(day + timedelta(days=1), time(hour), tzinfo=zone)
        out.append((day, local.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)))
    return out


def last_lifecycle(engine: Engine) -> dict[str, Any] | None:
    """The newest finished lifecycle run's summary (its as_of, now, simulated), if any."""
    r = t.runs
    with engine.connect() as conn:
        row = conn.execute(sa.select(r.c.summary).where(r.c.kind == "lifecycle",
                                                        r.c.finished_at.is_not(None))
                           .order_by(r.c.started_at.desc()).limit(1)).first()
    return dict(row.summary) if row is not None and row.summary else None


def choose(engine: Engine, as_of: date | datetime | None,
           now: datetime | None) -> tuple[RunClock, bool]:
    """The run's clock and whether it continues a simulation (module docstring)."""
    from clm_core.lifecycle.pipeline import latest_order_date

    last = last_lifecycle(engine)
    if last and last.get("simulated") and last.get("as_of") and last.get("now"):
        prev_as_of = date.fromisoformat(str(last["as_of"]))
        prev_now = datetime.fromisoformat(str(last["now"]))
        why = (f"the next day on the simulated clock of the last run (as of {prev_as_of}, "
               f"now {prev_now:%Y-%m-%d %H:%M}); --as-of and --now to choose")
        day, moment = normalize_as_of(as_of), normalize_now(now)
        return RunClock(day or prev_as_of + STEP, moment or prev_now + STEP,
                        "given" if day else why, "given" if moment else why), True
    return resolve(as_of, now, lambda: latest_order_date(engine)), False
