"""Which as-of date and clock a run uses, and why; and the steps of a simulated clock.

A run has one logical time: ``as_of`` (the day the store is scored as of) and ``now`` (the
journeys' and dispatcher's clock). ``clm run`` chooses them in this order, and says which rule
applied:

1. given on the command line (``--as-of``, ``--now``);
2. continuing a simulated clock: when the newest lifecycle run was simulated (``clm demo``, a
   replay), the next run is one day later on the same clock, so the store's stages and journeys
   go on from where the simulation left them instead of jumping to the newest order or today;
3. live: ``now`` is the wall clock and ``as_of`` the newest order's day (never after ``now``).

A simulated clock steps through the data's own period: each step scores as of a day and runs
the journeys the next morning at ``hour`` in the store's time zone (what the daily schedule
does), so goals can be reached by the orders that really followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.runs import utcnow

STEP = timedelta(days=1)  # a continued simulation advances like the daily schedule


@dataclass(frozen=True)
class RunClock:
    as_of: date | None  # None: the store has no orders yet (the flow decides)
    now: datetime  # naive UTC
    simulated: bool
    why_as_of: str
    why_now: str

    def lines(self) -> list[str]:
        as_of = f"{self.as_of}" if self.as_of else "(no orders yet)"
        if self.why_as_of == self.why_now:
            return [f"as of {as_of}, now {self.now:%Y-%m-%d %H:%M} UTC: {self.why_now}"]
        return [f"as of {as_of}: {self.why_as_of}",
                f"now   {self.now:%Y-%m-%d %H:%M} UTC: {self.why_now}"]


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


def newest_order_day(engine: Engine) -> date | None:
    with engine.connect() as conn:
        newest = conn.scalar(sa.select(sa.func.max(t.orders.c.ordered_at)))
    if newest is None:
        return None
    return newest.date() if isinstance(newest, datetime) else datetime.fromisoformat(str(newest)).date()


def choose(engine: Engine, as_of: date | None, now: datetime | None) -> RunClock:
    """The run's clock by the rules in the module docstring."""
    last = last_lifecycle(engine)
    if last and last.get("simulated") and last.get("as_of") and last.get("now"):
        prev_as_of = date.fromisoformat(str(last["as_of"]))
        prev_now = datetime.fromisoformat(str(last["now"]))
        why = (f"the next day on the simulated clock of the last run (as of {prev_as_of}, "
               f"now {prev_now:%Y-%m-%d %H:%M}); --as-of and --now to choose")
        return RunClock(as_of or prev_as_of + STEP, now or prev_now + STEP, True,
                        "given (--as-of)" if as_of else why, "given (--now)" if now else why)
    clock = now or utcnow()
    why_now = "given (--now)" if now else "the wall clock (--now to choose)"
    if as_of:
        return RunClock(as_of, clock, False, "given (--as-of)", why_now)
    newest = newest_order_day(engine)
    if newest is None:
        return RunClock(None, clock, False, "no orders yet", why_now)
    if newest > clock.date():
        return RunClock(clock.date(), clock, False,
                        f"the clock's day: the newest order ({newest}) is after the clock, "
                        "and a run never looks ahead (--as-of to choose)", why_now)
    return RunClock(newest, clock, False, "the newest order's day (--as-of to choose)", why_now)
