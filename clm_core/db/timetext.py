"""Datetimes as the text SQLAlchemy stores on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``), and
back, for millions of values at a time.

A bulk write binds times as text (sqlite3 would otherwise call ``isoformat`` per value, and
PostgreSQL's COPY reads the same text). ``np.datetime_as_string`` costs about 1.5 µs a value,
which on a ledger of millions of rows with three time columns was more than SQLite's own
insert; pieces looked up in small tables and split from one ASCII buffer cost a tenth of that.
"""

from __future__ import annotations

import numpy as np

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


def _digits(value: np.ndarray, width: int) -> np.ndarray:
    """``value`` as ``width`` zero-padded decimal digits: a (len, width) array of ASCII."""
    out = np.empty((len(value), width), dtype=np.uint8)
    for i in range(width - 1, -1, -1):
        out[:, i] = 48 + value % 10
        value = value // 10
    return out


def _table(parts: list[np.ndarray]) -> np.ndarray:
    """Rows of ASCII pieces joined, as one fixed-width bytes value per row."""
    joined = np.ascontiguousarray(np.concatenate(parts, axis=1))
    return joined.view(f"S{joined.shape[1]}").ravel()


def _sep(n: int, char: str) -> np.ndarray:
    return np.full((n, 1), ord(char), dtype=np.uint8)


# Each line: YYYY-MM- DD _ HH:MM:SS . ffff ff \n, its pieces as little-endian integers, so that
# looking them up and placing them are integer copies (fixed-width bytes copy ten times slower).
_LINE = np.dtype({"names": ["ym", "dd", "sp", "hms", "dot", "us4", "us2", "nl"],
                  "formats": ["<u8", "<u2", "u1", "<u8", "u1", "<u4", "<u2", "u1"],
                  "offsets": [0, 8, 10, 11, 19, 20, 24, 26], "itemsize": 27})
_CLOCK: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _as(table: np.ndarray, start: int, stop: int, dtype: str) -> np.ndarray:
    """Bytes ``start:stop`` of each fixed-width row of ``table`` as one integer."""
    raw = table.view(np.uint8).reshape(len(table), -1)
    return np.ascontiguousarray(raw[:, start:stop]).view(dtype).ravel()


def _clock() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HH:MM:SS for each second of a day; 0000 to 9999; 00 to 99."""
    global _CLOCK
    if _CLOCK is None:
        sec = np.arange(86_400)
        hms = _table([_digits(sec // 3600, 2), _sep(len(sec), ":"), _digits(sec // 60 % 60, 2),
                      _sep(len(sec), ":"), _digits(sec % 60, 2)])
        _CLOCK = (_as(hms, 0, 8, "<u8"), _as(_table([_digits(np.arange(10_000), 4)]), 0, 4, "<u4"),
                  _as(_table([_digits(np.arange(100), 2)]), 0, 2, "<u2"))
    return _CLOCK


def times_as_text(values: np.ndarray) -> list[str | None]:
    """``values`` (datetime64 of any unit) as ``YYYY-MM-DD HH:MM:SS.ffffff`` strings, None for
    NaT; exactly what ``np.datetime_as_string(unit="us")`` gives with a space for the T
    (microseconds truncated toward the past, as it does).

    Each piece is looked up in a small table (the dates of the days the values span, the
    86,400 times of a day, groups of digits): a value costs a few integer copies and its
    share of splitting one ASCII buffer."""
    us = np.asarray(values).astype("datetime64[us]")
    nat = np.isnat(us)
    if len(us) > 1 and not nat.any() and us.min() == us.max():  # one time (recorded_at, as_of)
        return times_as_text(us[:1]) * len(us)
    ticks = us.view("int64")[~nat] if nat.any() else us.view("int64")
    if not len(ticks):
        return [None] * len(us)
    days = ticks // _US_PER_DAY
    first, last = int(days.min()), int(days.max())
    span = np.arange(first, last + 1)
    year, month, day = _civil(span)
    if year.min() < 1000 or year.max() > 9999 or len(span) > 10_000_000:  # the slow way
        slow: list[str | None] = [v.replace("T", " ") for v in
                                  np.datetime_as_string(us, unit="us").tolist()]
        return [None if gone else v for v, gone in zip(slow, nat.tolist())]
    dates = _table([_digits(year, 4), _sep(len(span), "-"), _digits(month, 2),
                    _sep(len(span), "-"), _digits(day, 2)])
    hms, four, two = _clock()
    rest = ticks - days * _US_PER_DAY
    micro = rest % 1_000_000
    nth = days - first
    out = np.empty(len(ticks), dtype=_LINE)
    out["ym"] = _as(dates, 0, 8, "<u8")[nth]
    out["dd"] = _as(dates, 8, 10, "<u2")[nth]
    out["sp"] = ord(" ")
    out["hms"] = hms[rest // 1_000_000]
    out["dot"] = ord(".")
    out["us4"] = four[micro // 100]
    out["us2"] = two[micro % 100]
    out["nl"] = ord("\n")
    lines: list[str | None] = list(out.tobytes().decode("ascii").split("\n")[:-1])
    if not nat.any():
        return lines
    text = np.full(len(us), None, dtype=object)
    text[~nat] = lines
    return list(text.tolist())
