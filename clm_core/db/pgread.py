"""Reading a big query's rows from PostgreSQL through ``COPY (query) TO STDOUT`` in the binary
format, decoded a whole column at a time with numpy.

Fetched through the driver, each of a million rows becomes a Python tuple, each time a
``datetime`` and each NUMERIC a ``Decimal``, which pandas then converts again: the nightly
features took 5.8 s to read that way. As text (CSV) the server spends its time formatting
numbers and times and pandas parsing them back (5.4 s). In the binary format a number is its
bytes and a time a count of microseconds (``pgbinary`` writes the same format).

The server sends each row as one message, so the rows' starts are known without reading
them; from there every column is one step for all rows at once: read each row's length of
this column, take the values, move on by the lengths. The walk must end exactly where each
row's message ends, or the rows are read the usual way instead (``copy_frame`` gives None).
NUMERIC goes out as double precision (the server's conversion is the correctly rounded one,
as Python's ``float(Decimal)``), booleans as they are, texts as UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from clm_core.db.pgbinary import EPOCH_DAYS, EPOCH_US, SIGNATURE

_INTS = {20: ">i8", 21: ">i2", 23: ">i4"}  # int8, int2, int4
_FLOATS = {700: ">f4", 701: ">f8"}
_NUMERIC = 1700  # sent as double precision
_BOOL, _DATE, _TIMESTAMP = 16, 1082, 1114
_TEXTS = {25, 1043, 1042, 19}  # text, varchar, char(n), name
_WIDE_TEXT = 256  # texts up to this many bytes are taken as one padded block, longer one by one


def copy_frame(conn: Connection, sql: str, params: Mapping[str, Any],
               order_by: Sequence[str] = ()) -> pd.DataFrame | None:
    """The rows of ``sql`` (driver SQL with ``%(name)s`` parameters) as a DataFrame, typed as
    pandas types the driver's rows: texts as strings (missing for NULL), booleans as bool
    (objects with None where NULL), integers as int64 (float64 where NULL), other numbers as
    float64, times as ``datetime64[us]``. ``order_by``: the columns the rows come back ordered
    by (the query's own ORDER BY is not carried through the wrapping). None when a column has
    another type (JSON, arrays, time zones) or the rows did not arrive one a message: read
    them the usual way."""
    raw: Any = conn.connection.dbapi_connection  # psycopg's own connection (its COPY API)
    with raw.cursor() as cur:
        cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)
        columns = [(str(d.name), int(d.type_code)) for d in cur.description or ()]
        known = {*_INTS, *_FLOATS, _NUMERIC, _BOOL, _DATE, _TIMESTAMP, *_TEXTS}
        if not columns or any(oid not in known for _, oid in columns) \
                or len({name for name, _ in columns}) < len(columns):
            return None
        outs = [f'CAST(q."{name}" AS DOUBLE PRECISION) AS "{name}"' if oid == _NUMERIC
                else f'q."{name}"' for name, oid in columns]
        order = f" ORDER BY {', '.join(f'q.{c}' for c in order_by)}" if order_by else ""
        # Each message appended as it comes, not kept as its own bytes and joined at the end:
        # a million of them took 0.5 s to join and free once the server had finished.
        data, lengths = bytearray(), []
        with cur.copy(f"COPY (SELECT {', '.join(outs)} FROM ({sql}) AS q{order}) "
                      "TO STDOUT WITH (FORMAT binary)", params) as copy:
            for message in copy:
                lengths.append(len(message))
                data += message
    return _decode(data, lengths, [(n, 701 if oid == _NUMERIC else oid) for n, oid in columns])


def _decode(data: bytearray, message_sizes: list[int],
            columns: list[tuple[str, int]]) -> pd.DataFrame | None:
    """The rows of a binary COPY stream, ``data``, received one row a message of the given
    sizes (the header before the first row, the trailer alone at the end); None when they
    were not. ``data`` is padded in place (the caller's buffer, read by no one after)."""
    sizes = np.array(message_sizes, dtype=np.int64)
    if not data.startswith(SIGNATURE[:11]) or len(data) < 19:
        return None
    header = 19 + int.from_bytes(data[15:19], "big")
    if data[-2:] != b"\xff\xff":
        return None
    if len(sizes) == 1 and len(data) == header + 2:  # no rows: header and trailer together
        ends = np.zeros(0, dtype=np.int64)
    elif len(sizes) >= 2 and sizes[-1] == 2:
        ends = np.cumsum(sizes)[:-1]  # the trailer's message apart
    else:
        return None
    starts = np.concatenate([[header], ends[:-1]]).astype(np.int64)[:len(ends)]
    if (starts >= ends).any():  # the header came without the first row: an empty message
        keep = starts < ends
        starts, ends = starts[keep], ends[keep]
    data += bytes(_WIDE_TEXT + 8)  # room to read past the last cell
    buf = np.frombuffer(data, dtype=np.uint8)

    if len(starts) and not (_numbers(buf, starts, ">i2") == len(columns)).all():
        return None
    pos = starts + 2
    out: dict[str, Any] = {}
    for name, oid in columns:
        lengths = _numbers(buf, pos, ">i4").astype(np.int64)
        at = pos + 4
        null = lengths < 0
        pos = at + np.maximum(lengths, 0)
        out[name] = _values(oid, buf, at, lengths, null, data)
    if not np.array_equal(pos, ends):
        return None
    return pd.DataFrame(out, columns=[name for name, _ in columns])


def _take(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each byte offset ``at`` of ``buf``, a row each."""
    return buf[at[:, None] + np.arange(width)]


def _numbers(buf: np.ndarray, at: np.ndarray, dtype: str) -> np.ndarray:
    """The number of ``dtype`` at each byte offset ``at`` of ``buf``, gathered in one pass
    through ``buf`` viewed as overlapping numbers, one starting at every byte (a stride of
    one byte: numpy reads unaligned values). Gathering through one aligned view per phase
    of the offsets took two to three times as long."""
    width = np.dtype(dtype).itemsize
    every = np.ndarray(shape=(max(len(buf) - width + 1, 0),), dtype=dtype, buffer=buf,
                       strides=(1,))
    return every[at]


def _values(oid: int, buf: np.ndarray, at: np.ndarray, lengths: np.ndarray,
            null: np.ndarray, data: bytes | bytearray) -> Any:
    """One column's values, its cells at ``at`` (``lengths`` long, -1 for NULL)."""
    if oid in _TEXTS:
        return _texts(buf, at, lengths, null, data)
    if oid == _BOOL:
        flags = _take(buf, at, 1)[:, 0] != 0
        if not null.any():
            return flags
        with_nulls = flags.astype(object)
        with_nulls[null] = None
        return with_nulls
    number = _numbers(buf, at, (_INTS | _FLOATS).get(oid) or (">i4" if oid == _DATE else ">i8"))
    if oid in _INTS:
        ints = number.astype(np.int64)
        return ints if not null.any() else np.where(null, np.nan, ints)
    if oid in _FLOATS:
        return np.where(null, np.nan, number.astype(np.float64))
    if oid == _DATE:
        micros = (number.astype(np.int64) + EPOCH_DAYS) * 86_400_000_000
    else:
        micros = number.astype(np.int64) + EPOCH_US
    stamps = micros.astype("datetime64[us]")
    stamps[null] = np.datetime64("NaT")
    return stamps


def _texts(buf: np.ndarray, at: np.ndarray, lengths: np.ndarray, null: np.ndarray,
           data: bytes | bytearray) -> np.ndarray:
    n = len(at)
    widest = int(lengths.max(initial=0))
    out = np.empty(n, dtype=object)
    if widest > _WIDE_TEXT:
        for i, (a, ln) in enumerate(zip(at.tolist(), lengths.tolist())):
            out[i] = None if ln < 0 else data[a:a + ln].decode("utf-8")
        return out
    block = _take(buf, at, max(widest, 1))
    block[np.arange(block.shape[1])[None, :] >= np.maximum(lengths, 0)[:, None]] = 0
    padded = block.view(f"S{block.shape[1]}")[:, 0]  # a text holds no NUL: padding drops off
    uniques, codes = np.unique(padded, return_inverse=True)
    texts = np.array([u.decode("utf-8") for u in uniques.tolist()] + [None], dtype=object)
    return texts[np.where(null, len(uniques), codes.reshape(-1))]
