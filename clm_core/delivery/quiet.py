"""Quiet hours, checked again when a retry comes due.

Planning places every message outside its customer's quiet hours, but a retry's time comes from
backoff (and a provider's Retry-After), which knows nothing of local time: a 429 at 20:58 may
move the message to 21:03. When such a retry is claimed inside the quiet hours it is deferred,
not sent, to the end of them (``deferred``, reason ``quiet_hours``; the claim is not an attempt).

The window is the one of the journey version that planned the message (its stored definition),
so editing a journey later does not change what its planned messages promised. Messages of
journeys that have no stored version (seeded or imported outboxes) are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.errors import SpecError
from clm_core.journeys import clock
from clm_core.journeys.loader import parse_journey
from clm_core.journeys.model import ProjectPolicy, QuietHours


class QuietHoursCheck:
    """The quiet hours of each (journey, version) that dispatched messages come from."""

    def __init__(self, engine: Engine, policy: ProjectPolicy, default_timezone: str):
        self.engine, self.policy, self.default_timezone = engine, policy, default_timezone
        self._windows: dict[tuple[str, int], QuietHours | None] = {}

    def _load(self, keys: Iterable[tuple[str, int]]) -> None:
        missing = {k for k in keys if k not in self._windows}
        if not missing:
            return
        v = t.journey_versions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(v.c.journey, v.c.version, v.c.definition).where(
                v.c.journey.in_({j for j, _ in missing}))).all()
        found = {(r.journey, int(r.version)): r.definition for r in rows}
        for key in missing:
            self._windows[key] = None
            definition = found.get(key)
            if not definition:
                continue
            try:
                spec = parse_journey(definition["source"], f"{key[0]} v{key[1]}", self.policy).spec
            except SpecError:  # an old version today's fields no longer accept: not checked
                continue
            window = spec.contact_policy.quiet_hours_window or self.policy.quiet_hours
            self._windows[key] = window if window.enabled else None

    def deferrals(self, rows: list[dict[str, Any]], timezones: Mapping[int, str | None],
                  now: datetime) -> dict[int, datetime]:
        """Message id -> the end of its customer's quiet hours, for each retry in ``rows``
        (claimed rows: ``attempts`` above 1) that comes due inside them at ``now``."""
        retries = [r for r in rows if r["attempts"] > 1 and r.get("journey")
                   and r.get("journey_version") is not None]
        if not retries:
            return {}
        self._load((r["journey"], int(r["journey_version"])) for r in retries)
        out: dict[int, datetime] = {}
        by_window: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        for r in retries:
            window = self._windows[(r["journey"], int(r["journey_version"]))]
            if window is not None:
                by_window.setdefault((window.start, window.end), []).append(r)
        for (start, end), group in by_window.items():
            ids = [r["id"] for r in group]
            tz = clock.clean_zones(pd.Series([timezones.get(r["customer_id"]) for r in group],
                                             index=ids, dtype=object), self.default_timezone)
            at = pd.Series(pd.Timestamp(now), index=ids).astype("datetime64[ns]")
            inside = clock.in_window(at, tz, start, end)
            if inside.any():
                until = clock.after_window(at[inside], tz[inside], start, end)
                out.update((int(i), ts.to_pydatetime()) for i, ts in until.items())
        return out
