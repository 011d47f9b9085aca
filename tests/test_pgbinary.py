"""PostgreSQL's binary COPY format both ways. Writes (``clm_core.db.pgbinary``): every type it
encodes reads back exactly as the csv path writes it, awkward values included, rows in the
frame's order across chunks; whatever it does not encode takes the csv path unchanged. Reads
(``clm_core.db.pgread``): every type it decodes comes back as the driver gives it, NULL apart
from empty text, in the query's order; whatever it does not decode is left to the driver."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import bulk, pgbinary, pgread
from clm_core.db.engine import make_engine
from clm_core.db.tables import Json
from tests.conftest import DatabaseFactory

TYPES = {"i4": "integer", "i2": "smallint", "i8": "bigint", "f8": "double precision",
         "b": "boolean", "d": "date", "ts": "timestamp without time zone",
         "vc": "character varying(40)", "tx": "text", "js": "jsonb"}
VALUES: dict[str, list[Any]] = {
    "i4": [0, -1, 2**31 - 1, -(2**31), None, 7, 8],
    "i2": [0, -1, 32767, -32768, 5, None, 1],
    "i8": [0, -(2**62), 2**62, None, 1, 2, 3],
    "f8": [0.0, -1.5, 1e-300, 123456789.123456789, math.pi, None, math.inf],
    "b": [True, False, True, False, True, False, True],
    "d": [date(1997, 1, 1), date(1969, 12, 31), date(2000, 1, 1), date(2038, 1, 19),
          date(2000, 2, 29), None, date(1999, 12, 31)],
    "ts": [datetime(1997, 1, 1), datetime(2026, 11, 29, 23, 59, 59, 999999),
           datetime(1960, 1, 1, 0, 0, 0, 1), None, datetime(2000, 1, 1),
           datetime(1999, 12, 31, 23, 59, 59, 1), datetime(2000, 1, 1, 0, 0, 0, 1)],
    "vc": ["plain", "", None, 'comma, "quote" \\N back\\slash', "line\nbreak\r\ttab",
           "=SUM(A1) 顾客 ✓", "x" * 40],
    "tx": [None, "", "\\.", "顾客", "a", "b", "end\n"],
    "js": [{"a": 1, "b": [1, 2.5, None]}, [], None, {"text": '"quoted", comma\nline 顾客'},
           {"nested": {"deep": {"x": True}}}, "text", 3],
}


@pytest.fixture
def pg(db_factories: dict[str, DatabaseFactory]) -> Iterator[sa.Engine]:
    if "postgresql" not in db_factories:
        pytest.skip("COPY is PostgreSQL's; this run tests SQLite only")
    factory = db_factories["postgresql"]
    url = factory.create()
    engine = make_engine(url)
    yield engine
    engine.dispose()
    factory.drop(url)


def _frame(rows: int = 7) -> pd.DataFrame:
    """The values above, repeated to ``rows`` rows, in the dtypes CLM's frames hold them."""
    def cycle(values: list[Any]) -> list[Any]:
        return [values[i % len(values)] for i in range(rows)]

    return pd.DataFrame({
        "k": np.arange(rows),
        "i4": pd.array(cycle(VALUES["i4"]), dtype="Int64"),
        "i2": pd.array(cycle(VALUES["i2"]), dtype="Int16"),
        "i8": pd.array(cycle(VALUES["i8"]), dtype="Int64"),
        "f8": pd.Series([np.nan if v is None else v for v in cycle(VALUES["f8"])], dtype=float),
        "b": np.array(cycle(VALUES["b"]), dtype=bool),
        "d": pd.Series(pd.to_datetime(cycle(VALUES["d"]))).astype("datetime64[us]"),
        "ts": pd.Series(pd.to_datetime(cycle(VALUES["ts"]))).astype("datetime64[us]"),
        "vc": pd.Series(cycle(VALUES["vc"]), dtype=object),
        "tx": pd.Series(cycle(VALUES["tx"]), dtype=object),
        "js": pd.Series(cycle(VALUES["js"]), dtype=object),
    })


SA_TYPES: dict[str, Any] = {"i4": sa.Integer, "i2": sa.SmallInteger, "i8": sa.BigInteger,
                            "f8": sa.Float, "b": sa.Boolean, "d": sa.Date, "ts": sa.DateTime,
                            "vc": sa.String(40), "tx": sa.Text, "js": Json}


def _table(conn: sa.Connection, name: str) -> sa.Table:
    table = sa.Table(name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("k", sa.Integer),
                     *(sa.Column(c, kind) for c, kind in SA_TYPES.items()))
    table.create(conn)
    return table


def _rows(conn: sa.Connection, name: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(["id", "k", *TYPES])
    return [tuple(r) for r in conn.exec_driver_sql(f"SELECT {cols} FROM {name} ORDER BY id")]


def _copy_both(conn: sa.Connection, df: pd.DataFrame,
               monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """The frame COPYed into one table by the binary path and into another by the csv path."""
    by_binary, by_csv = _table(conn, "by_binary"), _table(conn, "by_csv")
    used: list[bool] = []
    real = pgbinary.Encoder.of

    def spy(frame: pd.DataFrame, types: dict[str, str]) -> pgbinary.Encoder | None:
        encoder = real(frame, types)
        used.append(encoder is not None)
        return encoder

    monkeypatch.setattr(bulk.Encoder, "of", staticmethod(spy))
    bulk._copy(conn, "by_binary", by_binary, df)
    assert used == [True], "the binary path was not taken"
    monkeypatch.setattr(bulk.Encoder, "of", staticmethod(lambda frame, types: None))
    bulk._copy(conn, "by_csv", by_csv, df)
    return _rows(conn, "by_binary"), _rows(conn, "by_csv")


def test_every_encoded_type_reads_back_as_the_csv_path_writes_it(
        pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with pg.begin() as conn:
        binary, text = _copy_both(conn, _frame(), monkeypatch)
    assert binary == text
    expected = [(i + 1, i, *(VALUES[c][i] for c in TYPES)) for i in range(7)]
    assert binary == expected


def test_rows_keep_the_frame_order_across_chunks_of_varying_layout(
        pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3-row chunks over 50 rows whose NULLs and text lengths differ from row to row: each chunk
    # groups its cells by place, and a serial id shows the order the server received them in.
    monkeypatch.setattr(bulk, "COPY_CHUNK_ROWS", 3)
    df = _frame(50).sample(frac=1.0, random_state=4).reset_index(drop=True)
    with pg.begin() as conn:
        binary, text = _copy_both(conn, df, monkeypatch)
    assert binary == text
    assert [row[1] for row in binary] == df["k"].tolist()


@pytest.mark.parametrize("column, values, pg_type", [
    ("json", [{"a": 1}, None], "jsonb"),  # the caller gives JSON as text
    ("money", [1.5, 2.25], "numeric(12,2)"),
    ("times", [datetime(2020, 1, 1), None], "timestamp without time zone"),  # as objects
    ("when", pd.to_datetime(["2020-01-01", None]).tz_localize("UTC"), "timestamp with time zone"),
    ("long", ["x" * (pgbinary.MAX_TEXT_BYTES + 1), "y"], "text"),
    ("mixed", ["text", 3], "text"),
    ("big", [2**31, 1], "integer"),
    ("half", [1.5, 2.0], "integer"),  # as the csv path: the server refuses "2.0" too
    ("flag", [True, False], "integer"),  # as the csv path: the server refuses "True" too
    ("huge", np.array([2**64 - 1, 1], dtype=np.uint64), "bigint"),
    ("flags", [True, None], "boolean"),
])
def test_what_it_does_not_encode_takes_the_csv_path(column: str, values: Any,
                                                    pg_type: str) -> None:
    # times and flags held as Python objects (with None), not as datetime64 or bool
    df = pd.DataFrame({column: pd.Series(values,
                                         dtype=object if column in ("times", "flags") else None)})
    assert pgbinary.Encoder.of(df, {column: pg_type}) is None


def test_a_value_the_server_refuses_fails_the_copy_as_on_the_csv_path(
        pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    df = _frame()
    df.loc[0, "vc"] = "x" * 41  # varchar(40): the server checks the length of binary text too
    with pg.connect() as conn, pytest.raises(sa.exc.DataError, match="too long"):
        bulk._copy(conn, "by_binary", _table(conn, "by_binary"), df)


def test_a_refused_value_in_a_late_chunk_fails_the_queued_copy_and_leaves_the_connection_usable(
        pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # The chunks are handed to a writer thread while the next is made: the server's refusal
    # of chunk 14 of 17 still fails the write (no hang, no partial commit), and the
    # connection goes on after the rollback.
    monkeypatch.setattr(bulk, "COPY_CHUNK_ROWS", 3)
    df = _frame(50)
    df.loc[40, "vc"] = "x" * 41
    with pg.connect() as conn:
        table = _table(conn, "by_binary")
        conn.commit()
        with pytest.raises(sa.exc.DataError, match="too long"):
            bulk._copy(conn, "by_binary", table, df)
        conn.rollback()
        assert conn.exec_driver_sql("SELECT count(*) FROM by_binary").scalar() == 0
        bulk._copy(conn, "by_binary", table, df.drop(index=40))
        assert conn.exec_driver_sql("SELECT count(*) FROM by_binary").scalar() == 49


# --- reading: COPY (query) TO STDOUT in the binary format (``clm_core.db.pgread``) ---------

def _read_both(conn: sa.Connection, sql: str, params: dict[str, Any] | None = None,
               order_by: Sequence[str] = ()) -> tuple[pd.DataFrame, list[tuple[Any, ...]]]:
    """The query's rows through ``copy_frame`` and through the driver."""
    frame = pgread.copy_frame(conn, sql, params or {}, order_by=order_by)
    assert frame is not None, "the COPY path was not taken"
    driver = [tuple(r) for r in conn.exec_driver_sql(sql, params or {})]
    return frame, driver


def _plain(v: Any) -> Any:
    """A frame's value as the driver gives it (NaN and NaT as None, numpy scalars as Python)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v.item() if isinstance(v, np.generic) else v


def test_every_read_type_comes_back_as_the_driver_gives_it(pg: sa.Engine) -> None:
    with pg.begin() as conn:
        table = _table(conn, "source")
        rows = [{"k": i, **{c: VALUES[c][i] for c in TYPES if c != "js"}} for i in range(7)]
        conn.execute(table.insert(), rows)
        conn.exec_driver_sql("ALTER TABLE source ADD COLUMN money numeric(12, 2), "
                             "ADD COLUMN wide text")
        conn.exec_driver_sql("UPDATE source SET money = (k * 1234567.89 - 3.07)::numeric(12, 2),"
                             " wide = repeat('顾', 300 + k) WHERE mod(k, 3) <> 0")
        cols = ", ".join(["k", *(c for c in TYPES if c != "js"), "money", "wide"])
        frame, driver = _read_both(conn, f"SELECT {cols} FROM source WHERE k >= %(lo)s "
                                   "ORDER BY k DESC", {"lo": 0}, order_by=["k DESC"])
    got = [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)]
    want = [tuple(float(v) if isinstance(v, Decimal) else
                  datetime.combine(v, datetime.min.time()) if type(v) is date else v
                  for v in row) for row in driver]
    assert got == want
    assert [r[0] for r in got] == [6, 5, 4, 3, 2, 1, 0]
    assert frame["vc"][5] == "" and pd.isna(frame["vc"][4])  # k = 1 and 2: kept apart
    assert frame["b"].dtype == bool and str(frame["ts"].dtype) == "datetime64[us]"


def test_an_empty_result_and_a_type_it_does_not_read(pg: sa.Engine) -> None:
    with pg.connect() as conn:
        empty = pgread.copy_frame(conn, "SELECT 1 AS a, 'x'::text AS b WHERE false", {})
        assert empty is not None and list(empty.columns) == ["a", "b"] and empty.empty
        assert pgread.copy_frame(conn, "SELECT '{}'::jsonb AS j", {}) is None
        assert pgread.copy_frame(conn, "SELECT now() AS t", {}) is None  # with a time zone
        assert pgread.copy_frame(conn, "SELECT 1 AS a, 2 AS a", {}) is None
