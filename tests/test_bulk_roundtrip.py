"""The raw-DBAPI bulk writers convert values by hand (executemany on SQLite, COPY csv text on
PostgreSQL): every column type the schema uses reads back as written, on every write path,
including the awkward values (NULL next to empty text, quotes, commas, newlines, backslashes,
non-ASCII, microseconds, extreme numbers, nested JSON)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import bulk
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame

TEXT = ["plain", "", 'comma, "quote" and \\ backslash', "line\nbreak\r\ttab", "=SUM(A1) 顾客 ✓",
        "\\N", None]
INTS = [0, -1, 2**31 - 1, -(2**31), 42, 7, None]
SMALL = [0, -1, 32767, -32768, 5, 1, None]
FLOATS = [0.0, -1.5, 1e-300, 123456789.123456789, 0.1, math.pi, None]
MONEY = [Decimal("0.00"), Decimal("-1.50"), Decimal("9999999999.99"), Decimal("0.01"),
         Decimal("12.34"), Decimal("100"), None]
BOOLS = [True, False, True, False, True, False, None]
DATES = [date(1997, 1, 1), date(2026, 11, 29), date(1970, 1, 1), date(2038, 1, 19),
         date(2000, 2, 29), date(1999, 12, 31), None]
TIMES = [datetime(1997, 1, 1), datetime(2026, 11, 29, 23, 59, 59, 999999),
         datetime(1970, 1, 1, 0, 0, 0, 1), datetime(2038, 1, 19, 3, 14, 7),
         datetime(2000, 2, 29, 12, 0), datetime(1999, 12, 31, 23, 59, 59), None]
JSONS: list[Any] = [{"a": 1, "b": [1, 2.5, None]}, [], {"text": '"quoted", comma\nline 顾客'},
                    {"nested": {"deep": {"x": True}}}, ["x", 1], {}, None]


def _values(col: sa.Column) -> list[Any]:
    """Values for a column of this type; a type the schema gains without values here fails."""
    kind = col.type
    if isinstance(kind, sa.JSON):
        return JSONS
    if isinstance(kind, sa.Boolean):
        return BOOLS
    if isinstance(kind, sa.DateTime):
        return TIMES
    if isinstance(kind, sa.Date):
        return DATES
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return MONEY
    if isinstance(kind, sa.Float):
        return FLOATS
    if isinstance(kind, sa.SmallInteger):
        return SMALL
    if isinstance(kind, sa.Integer):
        return INTS
    if isinstance(kind, (sa.String, sa.Text)):
        n = getattr(kind, "length", None) or 1000
        return [None if v is None else v[:n] for v in TEXT]
    raise AssertionError(f"no round-trip values for column type {kind!r} ({col})")


def schema_types() -> dict[str, sa.Column]:
    """One column of each distinct type the schema uses (the type as PostgreSQL spells it)."""
    from sqlalchemy.dialects import postgresql

    out: dict[str, sa.Column] = {}
    for table in t.metadata.sorted_tables:
        for col in table.columns:
            out.setdefault(col.type.compile(dialect=postgresql.dialect()), col)
    return out


def roundtrip_table() -> sa.Table:
    md = sa.MetaData()
    cols = [sa.Column(f"c{i}", col.type, nullable=True)
            for i, col in enumerate(schema_types().values())]
    return sa.Table("bulk_roundtrip", md, sa.Column("k", sa.Integer, primary_key=True), *cols)


def frame(table: sa.Table, shift: int = 0) -> pd.DataFrame:
    """One row per value; ``shift`` rotates values across rows (for an update)."""
    data: dict[str, Any] = {"k": list(range(len(TEXT)))}
    for col in table.columns:
        if col.name == "k":
            continue
        values = _values(col)
        values = values[shift:] + values[:shift]
        if isinstance(col.type, sa.DateTime):
            data[col.name] = pd.Series(pd.to_datetime(values)).astype("datetime64[us]")
        elif isinstance(col.type, sa.Integer) and not isinstance(col.type, sa.Boolean):
            data[col.name] = pd.array(values, dtype="Int64")
        elif isinstance(col.type, sa.Float):
            data[col.name] = pd.Series([math.nan if v is None else v for v in values], dtype=float)
        else:
            data[col.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def expected(table: sa.Table, shift: int = 0) -> list[dict[str, Any]]:
    rows = [{"k": k} for k in range(len(TEXT))]
    for col in table.columns:
        if col.name == "k":
            continue
        values = _values(col)
        values = values[shift:] + values[:shift]
        for row, v in zip(rows, values):
            row[col.name] = v
    return rows


def read_back(conn: sa.Connection, table: sa.Table) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute(sa.select(table).order_by(table.c.k)):
        row = dict(r._mapping)
        for col in table.columns:
            v = row[col.name]
            if isinstance(col.type, sa.Numeric) and not isinstance(col.type, sa.Float) \
                    and v is not None:
                row[col.name] = Decimal(v).quantize(Decimal("0.01"))
            if isinstance(col.type, sa.JSON) and isinstance(v, str):  # SQLite without a type hint
                row[col.name] = json.loads(v)
        out.append(row)
    return out


def _normal(rows: list[dict[str, Any]], table: sa.Table) -> list[dict[str, Any]]:
    money = [c.name for c in table.columns
             if isinstance(c.type, sa.Numeric) and not isinstance(c.type, sa.Float)]
    return [{k: (v.quantize(Decimal("0.01")) if k in money and v is not None else v)
             for k, v in r.items()} for r in rows]


@pytest.mark.parametrize("path", ["plain", "plain-3-rows-a-statement", "bulk", "bulk-rebuild"])
def test_every_schema_type_round_trips(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
                                       path: str) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1 if path == "bulk-rebuild" else 10**9)
    if path == "plain-3-rows-a-statement":  # SQLite: two full statements and a remainder
        monkeypatch.setattr(bulk, "ROWS_PER_STATEMENT", 3)
    table = roundtrip_table()
    assert len(table.columns) > 8  # the schema's types: text, numbers, money, times, JSON...
    table.metadata.create_all(engine)
    options = {"bulk": not path.startswith("plain")}
    update = [c.name for c in table.columns if c.name != "k"]
    try:
        with engine.begin() as conn:  # into an empty table
            assert write_frame(conn, table, frame(table), **options) == len(TEXT)
        with engine.connect() as conn:
            assert read_back(conn, table) == _normal(expected(table), table)
        with engine.begin() as conn:  # an upsert that changes every value
            write_frame(conn, table, frame(table, shift=3), keys=["k"], update=update, **options)
        with engine.connect() as conn:
            assert read_back(conn, table) == _normal(expected(table, shift=3), table)
        with engine.begin() as conn:  # the same again changes nothing
            assert write_frame(conn, table, frame(table, shift=3), keys=["k"], update=update,
                               **options) == 0
    finally:
        table.metadata.drop_all(engine)
