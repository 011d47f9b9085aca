"""SQLite inserts of long runs of rows that share values: the shared values go into the
statement as literals, and only the rest is bound row by row.

Binding a parameter costs more than one would think next to SQLite's own insert: on a ledger
row of ten columns, four of which were the same on every row (its kind, reason, recording time
and run), binding them took as long as the insert. A bulk write whose rows come in runs of
equal values (a ledger sorted by key comes kind by kind) is written one statement per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_RUN = 10_000  # shorter runs are written together, with nothing but their common nulls inlined


@dataclass
class Run:
    start: int
    stop: int
    literals: dict[str, str]  # column -> SQL literal of the value every row of the run has


def literal(value: object) -> str | None:
    """``value`` as an SQL literal, or None when it is better bound (floats: SQLite's own
    text-to-double conversion is not guaranteed to be the correctly rounded one)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"
    return None


def _starts(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Where each run of equal values of ``by`` starts, runs shorter than MIN_RUN merged."""
    n = len(df)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for col in by:
        values = df[col].to_numpy(dtype=object, na_value=None)
        change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n))
    keep = (lengths >= MIN_RUN) | np.append(True, lengths[:-1] >= MIN_RUN)  # a long one, or
    return starts[keep]  # the first after one (short runs then join the one they follow)


def _constant(s: pd.Series, starts: np.ndarray) -> np.ndarray:
    """Whether ``s`` holds one value (or only nulls) over each run. A run whose first and last
    values differ is not: most columns (keys, ids, times) are told apart by that alone,
    without a pass over their millions of values."""
    ends = np.append(starts[1:], len(s)) - 1
    first = s.iloc[starts].to_numpy(dtype=object, na_value=None)
    last = s.iloc[ends].to_numpy(dtype=object, na_value=None)
    maybe = np.array([a == b for a, b in zip(first.tolist(), last.tolist())], dtype=bool)
    if not maybe.any():
        return maybe
    null = s.isna().to_numpy()
    n_null = np.add.reduceat(null.astype("int64"), starts)
    lengths = np.diff(np.append(starts, len(s)))
    out = n_null == lengths
    kind = s.dtype.kind if isinstance(s.dtype, np.dtype) else ""
    if kind in "iuM" and not null.any():
        values = s.to_numpy().view("int64") if kind == "M" else s.to_numpy()
        out |= np.minimum.reduceat(values, starts) == np.maximum.reduceat(values, starts)
    return out & maybe


def runs(df: pd.DataFrame, value: Callable[[str, int], object], by: Sequence[str]) -> list[Run]:
    """The frame cut into runs of equal ``by`` values, each with the literals of the columns
    that are constant over it; ``value(column, row)`` is a value as it would be bound."""
    if df.empty:
        return []
    starts = _starts(df, by)
    stops = np.append(starts[1:], len(df))
    same = {c: _constant(df[c], starts) for c in df.columns}
    for c in by:  # constant over a run of its own value, unless short runs were merged
        values = df[c].to_numpy(dtype=object, na_value=None)
        change = np.append(True, values[1:] != values[:-1])
        same[c] |= np.add.reduceat(change.astype("int64"), starts) == 1
    out = []
    for i, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
        lits: dict[str, str] = {}
        for c in df.columns:
            if same[c][i]:
                text = literal(value(c, start))
                if text is not None:
                    lits[c] = text
        if len(lits) == len(df.columns):  # something must be bound for there to be rows
            lits.pop(str(df.columns[0]))
        out.append(Run(start, stop, lits))
    return out
