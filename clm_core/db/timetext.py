"""Datetimes as the text SQLAlchemy stores on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``), and
back, for millions of values at a time.

A bulk write binds times as text (sqlite3 would otherwise call ``isoformat`` per value, and
PostgreSQL's COPY reads the same text). ``np.datetime_as_string`` costs about 1.5 µs a value,
which on a ledger of millions of rows with three time columns was more than SQLite's own
insert; the digits computed with integer arithmetic over the whole array and split from one
ASCII buffer cost a tenth of that.
"""

from __future__ import annotations

import numpy as np

WIDTH = 26  # YYYY-MM-DD HH:MM:SS.ffffff
_US_PER_DAY = 86_400_000_000


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
    ``civil_from_days``, all integer arithmetic)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _digits(out: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    """Write ``value`` as ``width`` zero-padded decimal digits into ``out[:, col:col+width]``."""
    for i in range(width - 1, -1, -1):
        out[:, col + i] = 48 + value % 10
        value = value // 10


def times_as_text(values: np.ndarray) -> list[str | None]:
    """``values`` (datetime64 of any unit) as ``YYYY-MM-DD HH:MM:SS.ffffff`` strings, None for
    NaT; exactly what ``np.datetime_as_string(unit="us")`` gives with a space for the T
    (microseconds truncated toward the past, as it does)."""
    us = np.asarray(values).astype("datetime64[us]")
    nat = np.isnat(us)
    if len(us) > 1 and not nat.any() and us.min() == us.max():  # one time (recorded_at, as_of)
        return times_as_text(us[:1]) * len(us)
    ticks = us.view("int64")[~nat] if nat.any() else us.view("int64")
    days = ticks // _US_PER_DAY
    rest = ticks - days * _US_PER_DAY
    year, month, day = (v.astype(np.int32) for v in _civil(days))
    if len(year) and (year.min() < 1000 or year.max() > 9999):  # not 4 digits: the slow way
        slow: list[str | None] = [v.replace("T", " ") for v in
                                  np.datetime_as_string(us, unit="us").tolist()]
        return [None if gone else v for v, gone in zip(slow, nat.tolist())]
    buf = np.empty((len(ticks), WIDTH + 1), dtype=np.uint8)
    _digits(buf, 0, year, 4)
    _digits(buf, 5, month, 2)
    _digits(buf, 8, day, 2)
    seconds = (rest // 1_000_000).astype(np.int32)  # the small parts in 32 bits: faster
    micro = (rest % 1_000_000).astype(np.int32)
    _digits(buf, 11, seconds // 3600, 2)
    _digits(buf, 14, seconds // 60 % 60, 2)
    _digits(buf, 17, seconds % 60, 2)
    _digits(buf, 20, micro, 6)
    buf[:, 4] = buf[:, 7] = ord("-")
    buf[:, 10] = ord(" ")
    buf[:, 13] = buf[:, 16] = ord(":")
    buf[:, 19] = ord(".")
    buf[:, WIDTH] = ord("\n")
    lines: list[str | None] = list(buf.tobytes().decode("ascii").split("\n")[:-1])
    if not nat.any():
        return lines
    out = np.full(len(us), None, dtype=object)
    out[~nat] = lines
    return list(out.tolist())
