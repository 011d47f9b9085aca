"""Local-time arithmetic for many customers at once: grouped by time zone, never per customer.

All inputs and outputs are naive UTC ``datetime64[ns]`` Series; each customer's wall clock comes
from their IANA zone. Wall-clock results that do not exist (spring-forward gap) move forward to
the first valid instant; ambiguous ones (fall-back) take the first occurrence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

import numpy as np
import pandas as pd

NS_PER_MINUTE = 60 * 10**9


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def clean_zones(tz: pd.Series, default: str) -> pd.Series:
    """Customers' zones with missing or unknown names replaced by ``default``."""
    zones = tz.to_numpy(dtype=object, copy=True)
    zones[pd.isna(zones)] = default
    bad = [n for n in pd.unique(zones) if n not in _zones()]
    if bad:
        zones[pd.Index(zones).isin(bad)] = default
    return pd.Series(zones, index=tz.index, name=tz.name, dtype=object)


def frame_zones(frame: pd.DataFrame, default: str) -> pd.Series:
    """``clean_zones`` of a customers frame's ``timezone`` column (all ``default`` without
    one)."""
    return clean_zones(frame["timezone"] if "timezone" in frame else
                       pd.Series(None, index=frame.index, dtype=object), default)


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _from_local(local: pd.Series, zone: str, first: bool) -> pd.Series:
    aware = local.dt.tz_localize(zone, nonexistent="shift_forward",
                                 ambiguous=np.full(len(local), first))
    return aware.dt.tz_convert("UTC").dt.tz_localize(None)


def _distinct(utc: pd.Series, tz: pd.Series) -> tuple[pd.Series, pd.Series, np.ndarray]:
    """The distinct (instant, zone) pairs and, per input row, which pair it is. A run computes
    the same few instants (``now``, ``now`` + a wait) for many customers in a few zones, so
    the time-zone arithmetic runs on a handful of pairs instead of every row. NaT rows share
    the first valid instant's pair (callers mask them after)."""
    instants = utc.to_numpy("datetime64[ns]")
    missing = np.isnat(instants)
    if missing.any():
        fill = instants[~missing][0] if (~missing).any() else np.datetime64(0, "ns")
        instants = np.where(missing, fill, instants)
    icode, ivals = pd.factorize(instants.view(np.int64))
    zcode, zvals = pd.factorize(tz.to_numpy(object))
    pair, codes = np.unique(icode.astype(np.int64) * len(zvals) + zcode, return_inverse=True)
    u = pd.Series(np.asarray(ivals)[pair // len(zvals)].view("datetime64[ns]"))
    z = pd.Series(np.asarray(zvals, dtype=object)[pair % len(zvals)])
    return u, z, codes.reshape(-1)


def _zones_of(z: pd.Series) -> Iterable[tuple[str, np.ndarray]]:
    zones = z.to_numpy(object)
    for zone in pd.unique(zones):
        yield str(zone), np.flatnonzero(zones == zone)


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1)
_NS = 10**9
_MINUTE = NS_PER_MINUTE
_DAY = 24 * 60 * _MINUTE


def _utc_offsets(ns: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Seconds east of UTC of each zone at each instant (ns since the epoch, UTC). One
    zoneinfo look-up per pair: the callers pass distinct (instant, zone) pairs, a few dozen,
    where pandas' per-zone conversions cost a millisecond or more each."""
    out = np.empty(len(ns), dtype=np.int64)
    for k, (n, zone) in enumerate(zip(ns.tolist(), zones.tolist())):
        at = (_EPOCH_UTC + timedelta(microseconds=n // 1000)).astimezone(ZoneInfo(zone))
        offset = at.utcoffset()
        out[k] = int(offset.total_seconds()) if offset is not None else 0
    return out


def _local_offsets(ns: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For wall-clock times (ns since the epoch, local): the offset that maps each to UTC, and
    whether it is the only one. A time in a spring-forward gap or a fall-back hour has two
    (fold 0 and 1) and is left to ``_from_local``'s rules."""
    out = np.zeros(len(ns), dtype=np.int64)
    unique = np.zeros(len(ns), dtype=bool)
    for k, (n, zone) in enumerate(zip(ns.tolist(), zones.tolist())):
        wall = (_EPOCH + timedelta(microseconds=n // 1000)).replace(tzinfo=ZoneInfo(zone))
        first, second = wall.utcoffset(), wall.replace(fold=1).utcoffset()
        if first is not None and first == second:
            out[k] = int(first.total_seconds())
            unique[k] = True
    return out, unique


def _by_zone(utc: pd.Series, tz: pd.Series,
             fn: Callable[[np.ndarray], np.ndarray]) -> pd.Series:
    """Apply ``fn`` (local wall clock -> later local wall clock, as ns since the epoch) per
    zone; back to UTC.

    ``fn`` is wall-clock arithmetic, the same in every zone, so it runs once over every
    distinct (instant, zone) pair; only a result that falls in a gap or an ambiguous hour goes
    through pandas, where a nonexistent time moves forward and an ambiguous one takes its
    first occurrence unless that lies before the input."""
    if not len(utc):
        return pd.Series(pd.NaT, index=utc.index, dtype="datetime64[ns]")
    u, z, codes = _distinct(utc, tz)
    ns = u.to_numpy("datetime64[ns]").view(np.int64)
    zones = z.to_numpy(object)
    wall = fn(ns + _utc_offsets(ns, zones) * _NS)
    offsets, unique = _local_offsets(wall, zones)
    res = (wall - offsets * _NS).view("datetime64[ns]")
    rest = np.flatnonzero(~unique)
    for zone, pos in _zones_of(pd.Series(zones[rest], dtype=object)):
        at = rest[pos]
        part = pd.Series(u.to_numpy("datetime64[ns]")[at])
        shifted = pd.Series(wall[at].view("datetime64[ns]"))
        first = _from_local(shifted, zone, True)
        later = first < part
        if later.any():
            first[later] = _from_local(shifted[later], zone, False)
        res[at] = first.to_numpy("datetime64[ns]")
    out = res[codes]
    out[np.isnat(utc.to_numpy("datetime64[ns]"))] = np.datetime64("NaT", "ns")
    return pd.Series(out, index=utc.index, dtype="datetime64[ns]")


def in_window(utc: pd.Series, tz: pd.Series, start: time, end: time) -> pd.Series:
    """True where the local time of day lies in [start, end) (the window may wrap midnight)."""
    if not len(utc):
        return pd.Series(False, index=utc.index)
    u, z, codes = _distinct(utc, tz)
    s, e = _minutes(start), _minutes(end)
    ns = u.to_numpy("datetime64[ns]").view(np.int64)
    local = ns + _utc_offsets(ns, z.to_numpy(object)) * _NS
    m = (local // (60 * _NS)) % (24 * 60)
    res = ((m >= s) & (m < e)) if s < e else ((m >= s) | (m < e))
    return pd.Series(res[codes] & utc.notna().to_numpy(), index=utc.index)


def after_window(utc: pd.Series, tz: pd.Series, start: time, end: time) -> pd.Series:
    """For times inside the local window [start, end): the next local ``end``; others unchanged."""
    inside = in_window(utc, tz, start, end)
    if not inside.any():
        return utc.copy()
    e = _minutes(end)

    def shift(local: np.ndarray) -> np.ndarray:
        target = local - local % _DAY + e * _MINUTE
        return np.where(target > local, target, target + _DAY)

    out = utc.copy()
    out.loc[inside] = _by_zone(utc[inside], tz[inside], shift)
    return out


def next_local_time(utc: pd.Series, tz: pd.Series, at: time,
                    weekdays: Iterable[int] | None = None) -> pd.Series:
    """The first instant at or after ``utc`` whose local time is ``at`` on an allowed weekday
    (0 = Monday)."""
    allowed = np.zeros(7, dtype=bool)
    allowed[list(weekdays) if weekdays is not None else range(7)] = True
    # days to add from each weekday to reach the next allowed one (0 if allowed)
    ahead = np.array([next(k for k in range(7) if allowed[(d + k) % 7]) for d in range(7)])
    minutes = _minutes(at)

    def shift(local: np.ndarray) -> np.ndarray:
        target = local - local % _DAY + minutes * _MINUTE
        target = np.where(target >= local, target, target + _DAY)
        # 1970-01-01 was a Thursday (3 with Monday as 0)
        return target + ahead[(target // _DAY + 3) % 7] * _DAY

    return _by_zone(utc, tz, shift)
