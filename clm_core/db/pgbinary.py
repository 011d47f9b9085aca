"""PostgreSQL's binary ``COPY`` format, built from whole columns at once with numpy.

``COPY ... WITH (FORMAT csv)`` needs every value as text, and formatting is the cost: a COPY of
a million score rows of 27 columns took 22 s as CSV and 4 s in binary (measured side by side
on a loaded machine), the difference the client formatting values one at a time (a float's
shortest text, a time's ISO form). The binary
format needs no formatting: a number is its big-endian bytes, a time a count of microseconds,
a text its UTF-8 bytes, each after its length (-1 for NULL), each row after its field count
(``COPY``'s "Binary Format" in the PostgreSQL manual).

A row's cells have variable lengths (NULLs, texts), so each cell's place in its row differs
from row to row. The rows are built in a 2-D byte array, one row a line, wide enough for the
widest row: column by column, the cells are copied to their place, as many rows at once as
share it; a cell may spill past its end, which the next column then overwrites. The lines,
cut to their row's length, are the stream, in the frame's order.

Only the column types below are encoded, and only from the dtypes that hold them without a
conversion that could differ from what the text path gives (times from ``datetime64``, texts
from Python strings, JSON from its text, integers from integer dtypes); for anything else
``Encoder.of`` gives None and the caller writes text as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
EPOCH_US = np.datetime64("2000-01-01", "us").astype("int64")  # PostgreSQL's time zero
EPOCH_DAYS = np.datetime64("2000-01-01", "D").astype("int64")
_INTS = {"smallint": ">i2", "integer": ">i4", "bigint": ">i8"}
_FLOATS = {"double precision": ">f8", "real": ">f4"}
_TEXTS = ("text", "character varying", "character")
_JSON = {"jsonb": b"\x01", "json": b""}  # JSON as text; jsonb's binary form: version 1, text
MAX_TEXT_BYTES = 512  # wider texts are padded to the widest: past this, the text path


@dataclass
class _Cells:
    """One column's cells, made a range of rows at a time from the column as the frame holds
    it (a whole column of bytes at once would double the frame's memory)."""

    null: np.ndarray  # per row: NULL
    width: int  # bytes of the widest value
    data: Callable[[slice], np.ndarray]  # the rows' values as bytes, ``width`` a row
    text_lengths: Callable[[slice], np.ndarray] | None = None  # texts: each row's length
    fixed: bool = False  # every cell the same length: the same place in every row

    def __post_init__(self) -> None:
        if self.text_lengths is None:
            self.fixed = not self.null.any()
        else:
            lengths = self.text_lengths(slice(None))
            self.fixed = not self.null.any() and lengths.min(initial=0) == lengths.max(initial=0)

    def lengths(self, rows: slice) -> np.ndarray:
        """The rows' data lengths, -1 for NULL, as COPY writes them (4 bytes, big-endian)."""
        own = self.width if self.text_lengths is None else self.text_lengths(rows)
        return np.where(self.null[rows], -1, own).astype(">i4")

    def block(self, rows: slice, lengths: np.ndarray) -> np.ndarray:
        """The rows' cells, length first, one line each, ``4 + width`` wide."""
        return np.concatenate([lengths.view(np.uint8).reshape(-1, 4), self.data(rows)], axis=1)


def _fixed(values: np.ndarray, null: np.ndarray, dtype: str,
           convert: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> _Cells:
    """Cells of one width: ``values`` (converted a range at a time) as big-endian ``dtype``."""
    width = np.dtype(dtype).itemsize

    def data(rows: slice) -> np.ndarray:
        part = np.ascontiguousarray(convert(values[rows]).astype(dtype))
        return part.view(np.uint8).reshape(-1, width)

    return _Cells(null, width, data)


def _kind(s: pd.Series) -> str:
    """numpy's one-letter kind of the column's dtype; "?" for pandas' own dtypes (whose
    ``kind`` says what they hold, not how: a nullable integer is not an integer array)."""
    return s.dtype.kind if isinstance(s.dtype, np.dtype) else "?"


def _integral(s: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer values and the NULL mask, or None when the column holds other than integers."""
    kind = _kind(s)
    if kind in "iu":  # not booleans, which the text path does not take as integers either
        values = s.to_numpy()
        if kind == "u" and len(values) and values.max() > np.iinfo(np.int64).max:
            return None
        return values.astype(np.int64), np.zeros(len(s), dtype=bool)
    if isinstance(s.dtype, pd.Int64Dtype | pd.Int32Dtype | pd.Int16Dtype):
        null = s.isna().to_numpy()
        return s.fillna(0).to_numpy(dtype=np.int64), null
    return None


def _column(pg_type: str, s: pd.Series) -> _Cells | None:
    kind = _kind(s)
    if pg_type in _INTS:
        found = _integral(s)
        if found is None:
            return None
        values, null = found
        info = np.iinfo(_INTS[pg_type].replace(">", ""))
        live = values[~null]
        if len(live) and (live.min() < info.min or live.max() > info.max):
            return None  # out of range: the text path lets the server say so
        return _fixed(values, null, _INTS[pg_type])
    if pg_type in _FLOATS:
        if kind not in "iuf":
            return None
        values = s.to_numpy()
        return _fixed(values, np.isnan(values) if kind == "f" else np.zeros(len(s), bool),
                      _FLOATS[pg_type])
    if pg_type == "boolean":
        return _fixed(s.to_numpy(), np.zeros(len(s), bool), "u1") if kind == "b" else None
    if pg_type in ("timestamp without time zone", "date"):
        if kind != "M":  # tz-aware or object times: the text path
            return None
        stamps = s.to_numpy()
        null = np.isnat(stamps)
        if pg_type == "date":
            return _fixed(stamps, null, ">i4", lambda v: np.where(
                np.isnat(v), 0, v.astype("datetime64[D]").astype(np.int64) - EPOCH_DAYS))
        return _fixed(stamps, null, ">i8", lambda v: np.where(
            np.isnat(v), 0, v.astype("datetime64[us]").astype(np.int64) - EPOCH_US))
    if pg_type in _TEXTS or pg_type in _JSON:
        return _texts(s, _JSON.get(pg_type, b""))
    return None


def _texts(s: pd.Series, prefix: bytes = b"") -> _Cells | None:
    """Text cells from Python strings (JSON already as its text), each after ``prefix``."""
    if s.dtype != object and not isinstance(s.dtype, pd.StringDtype):
        return None
    if pd.api.types.infer_dtype(s, skipna=True) not in ("string", "empty"):
        return None  # not all strings (or NULLs)
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    encoded = [prefix + u.encode("utf-8") for u in uniques]
    widest = max((len(b) for b in encoded), default=0)
    if widest > MAX_TEXT_BYTES:
        return None
    # each distinct text's bytes, zero-padded, and a last row for NULL (code -1)
    table = np.zeros((len(encoded) + 1, max(widest, 1)), dtype=np.uint8)
    for i, b in enumerate(encoded):
        table[i, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    sizes = np.array([len(b) for b in encoded] + [0], dtype=np.int32)
    return _Cells(codes < 0, table.shape[1], lambda rows: table[codes[rows]],
                  lambda rows: sizes[codes[rows]])


class Encoder:
    """A frame's rows as binary COPY tuples (without the file's signature and trailer), its
    columns in order and typed as ``pg_types`` names them. ``of`` gives None when a column
    cannot be encoded here; the values are checked and converted once, the rows encoded a
    range at a time (``rows``), so only one range's bytes exist at once."""

    def __init__(self, names: list[str], cells: list[_Cells]) -> None:
        self.names = names  # the columns in the order the rows hold them (COPY's column list)
        self.cells = cells

    @classmethod
    def of(cls, df: pd.DataFrame, pg_types: Mapping[str, str]) -> "Encoder | None":
        cells = {}
        if df.columns.empty:
            return None
        for name in df.columns:
            column = _column(pg_types.get(str(name), ""), df[name])
            if column is None:
                return None
            cells[str(name)] = column
        # Columns whose cells all have one length first: their places are the same in every
        # row, so each is copied as one block; only those after a varying one have to be
        # grouped by place.
        names = sorted(cells, key=lambda c: not cells[c].fixed)
        return cls(names, [cells[c] for c in names])

    def rows(self, start: int, stop: int) -> bytes:
        rows = slice(start, stop)
        lengths = [c.lengths(rows) for c in self.cells]
        sizes = 4 + np.maximum(np.stack(lengths, axis=1).astype(np.int64), 0)
        n = len(sizes)
        places = 2 + np.cumsum(sizes, axis=1) - sizes  # each cell's place in its row
        row_len = 2 + sizes.sum(axis=1)
        width = int(row_len.max(initial=2)) + 4 + max(c.width for c in self.cells)
        lines = np.empty((n, width), dtype=np.uint8)  # every byte kept is written below
        lines[:, :2] = np.frombuffer(len(self.cells).to_bytes(2, "big"), dtype=np.uint8)
        for j, column in enumerate(self.cells):
            block = column.block(rows, lengths[j])
            place = places[:, j]
            if n and place[0] == place[-1] and (place == place[0]).all():
                lines[:, place[0]:place[0] + block.shape[1]] = block  # the usual case
                continue
            order = np.argsort(place, kind="stable")
            cuts = np.flatnonzero(np.diff(place[order])) + 1
            for same in np.split(order, cuts):  # the rows whose cell starts at one place
                at = int(place[same[0]])
                lines[same, at:at + block.shape[1]] = block[same]
        keep = np.arange(width)[None, :] < row_len[:, None]
        return lines[keep].tobytes()
