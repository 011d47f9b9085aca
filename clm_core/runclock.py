"""The run's one clock: ``as_of`` (the day the store is scored as of) and ``now`` (the journeys'
and dispatcher's time), resolved the same way by every entry point, CLI and flows alike.

Times in the database are naive UTC. Callers hand ``now`` over in many shapes: a naive datetime
from ``--now`` (read as UTC), a timezone-aware one from the Prefect UI or API, an ISO string, a
pandas Timestamp. ``normalize_now`` turns each into naive UTC, so a comparison such as
``min(started, now)`` never mixes aware and naive values.

``resolve`` fills what was not given and says why, so no command makes a silent choice:

- ``as_of`` given: used; ``now`` then defaults to the end of that day (its next midnight), or the
  wall clock when that is earlier (as of today: the day is not over yet);
- ``now`` given without ``as_of``: ``as_of`` is the newest order's day, but never after
  ``now``'s day (nothing looks ahead of the clock);
- neither: ``as_of`` is the newest order's day and ``now`` the wall clock.

The wall clock is read here (and for ``recorded_at`` columns) and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from clm_core.errors import ClmError
from clm_core.runs import utcnow


def normalize_now(value: datetime | date | str | pd.Timestamp | None) -> datetime | None:
    """``value`` as a naive UTC datetime (None stays None).

    Aware values are converted to UTC; naive ones are taken to be UTC already; a date means its
    midnight; strings are ISO 8601 (``2026-11-24 09:00``, ``2026-11-24T09:00+08:00``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = pd.Timestamp(value.strip())
        except ValueError as exc:
            raise ClmError(f"{value!r} is not a time: use e.g. 2026-11-24 09:00 "
                           "or 2026-11-24T09:00+08:00") from exc
    if isinstance(value, pd.Timestamp):
        if pd.isna(value):
            return None
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        assert isinstance(value, date)
        return datetime.combine(value, time.min)
    if value.tzinfo is not None and value.utcoffset() is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def normalize_as_of(value: date | datetime | str | pd.Timestamp | None) -> date | None:
    """``value`` as a calendar day (an aware time counts by its UTC day)."""
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    moment = normalize_now(value)
    return moment.date() if moment is not None else None


# Beyond this many days between the as-of day and now, stage-triggered journeys (entry window:
# 7 days by default) cannot see the run's stage changes: say so.
STALE_DAYS = 7


def day_start(day: date) -> datetime:
    """Midnight at the start of ``day``: the time a scoring as of ``day`` stamps its stage
    changes with (like ``stage_since``)."""
    return datetime.combine(day, time.min)


@dataclass(frozen=True)
class RunClock:
    """The resolved clock of one run, with the reason for each value."""

    as_of: date
    now: datetime
    as_of_reason: str
    now_reason: str

    def describe(self) -> list[str]:
        lines = [f"as of {self.as_of:%Y-%m-%d}: {self.as_of_reason}",
                 f"now {self.now:%Y-%m-%d %H:%M:%S} UTC: {self.now_reason}"]
        gap = (self.now - day_start(self.as_of)).days
        if gap > STALE_DAYS:
            lines.append(f"note: now is {gap:,} days after the as-of day, so the stage changes "
                         f"found as of it are older than a journey's entry window (default "
                         f"7 days) and enter nobody; give --now or a later --as-of")
        return lines


def resolve(
    as_of: date | datetime | str | None,
    now: datetime | date | str | None,
    newest_order_day: Callable[[], date],
    wall: Callable[[], datetime] = utcnow,
) -> RunClock:
    """Fill in what was not given (see the module docstring); ``newest_order_day`` is asked
    only when needed."""
    day = normalize_as_of(as_of)
    moment = normalize_now(now)
    if day is not None and moment is not None:
        if moment < day_start(day):
            raise ClmError(f"now {moment:%Y-%m-%d %H:%M} is before the as-of day {day}: the run "
                           "would act on data from its future; give an earlier --as-of")
        return RunClock(day, moment, "given", "given")
    if day is not None:
        end = day_start(day) + timedelta(days=1)
        current = wall()
        if current < end:
            return RunClock(day, current, "given", "the wall clock (the as-of day is not over)")
        return RunClock(day, end, "given", "the end of the as-of day")
    newest = newest_order_day()
    if moment is not None:
        if newest > moment.date():
            return RunClock(moment.date(), moment, f"the day of now (orders go on to {newest})",
                            "given")
        return RunClock(newest, moment, "the newest order's day", "given")
    return RunClock(newest, wall(), "the newest order's day", "the wall clock")


__all__ = ["RunClock", "day_start", "normalize_as_of", "normalize_now", "resolve", "utcnow"]
