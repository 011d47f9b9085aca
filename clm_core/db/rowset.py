"""A batch of rows bound as one parameter: a JSON document the database itself unpacks into a
derived table (PostgreSQL ``jsonb_to_recordset``, SQLite ``json_each``).

Why: small batches written often (a webhook's 100 events, many times a second) pay per row and
per placeholder when each row is its own statement or its own ``VALUES`` tuple: SQLAlchemy
processes every parameter, and psycopg parses every long statement again to find its
placeholders (it caches only short ones, and 100 rows of 13 columns are 1,300 placeholders in a
statement whose text changes with the batch size). With one JSON parameter the statement is
short and the same for every batch, so it is compiled, cached and prepared once, and the rows
cross to the database as one string.

On SQLite, where the database runs in this process, an insert goes the other way: one
prepared single-row statement run for every row (``executemany``), which spends no time
building or unpacking JSON (SQLite's ``json_extract`` parses a row's object again for each
column: a third of the cost of storing a webhook batch). The rows it inserted are read back by
rowid above the table's highest before the insert, under the write lock.

The statements are written in the driver's own parameter style, their text built once per
table and column list, and run on the connection's DBAPI cursor (``execute``,
``executemany``): SQLAlchemy's per-statement work (compiling, the result's metadata, a Row per
row) was a fifth of a webhook batch's time. Errors are wrapped as SQLAlchemy wraps them, so a
busy database is still an ``OperationalError`` that the write retries catch.

Columns are declared with a small set of types. Times travel as text in the form SQLAlchemy
itself stores on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``), which PostgreSQL reads as a
timestamp, so rows written here compare and read back like any other.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from clm_core.db.engine import take_write_lock

# column type -> PostgreSQL type in the record definition
PG_TYPES = {"text": "text", "int": "bigint", "bool": "boolean", "timestamp": "timestamp",
            "json": "jsonb"}


# SQLite's own compact JSON text; one encoder for every call (``json.dumps`` with options
# builds a new one each time, which cost more than the encoding of a small object).
_json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def stamp(t: datetime) -> str:
    """A naive UTC time as SQLAlchemy stores it on SQLite (and PostgreSQL parses), always with
    microseconds (``isoformat`` is several times faster than ``strftime``)."""
    text = t.isoformat(" ")
    return text if t.microsecond else text + ".000000"


def dumps(rows: Iterable[Mapping[str, Any]]) -> str:
    """The JSON document of ``rows`` (times already as ``stamp`` text)."""
    return _json_text(list(rows))


def source(dialect: str, columns: Sequence[tuple[str, str]], param: str = "rows") -> str:
    """SQL for a derived table ``r`` with ``columns`` ((name, type) pairs) read from the JSON
    array bound as ``:param``."""
    for name, kind in columns:
        if kind not in PG_TYPES or not name.isidentifier():
            raise ValueError(f"rowset column {name!r} of type {kind!r}")
    if dialect == "postgresql":
        spec = ", ".join(f"{name} {PG_TYPES[kind]}" for name, kind in columns)
        return f"jsonb_to_recordset(CAST(:{param} AS jsonb)) AS r({spec})"
    picks = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
    return f"(SELECT {picks} FROM json_each(:{param})) AS r"


def values(dialect: str, param: str = "keys", kind: str = "text") -> str:
    """SQL for a subquery of the values (``text`` or ``int``) of the JSON array bound as
    ``:param`` (for ``IN``): one parameter whatever the number of values."""
    if dialect == "postgresql":
        each = f"jsonb_array_elements_text(CAST(:{param} AS jsonb))"
        return f"SELECT CAST({each} AS {PG_TYPES[kind]})" if kind != "text" else f"SELECT {each}"
    return f"SELECT value FROM json_each(:{param})"


@contextmanager
def _cursor(conn: sa.Connection, sql: str, params: Any) -> Iterator[Any]:
    """A DBAPI cursor inside ``conn``'s transaction, closed after; a driver error is raised
    as SQLAlchemy's (``wrapped``), so the callers' busy and deadlock retries still see it."""
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except conn.dialect.loaded_dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, raw, cursor)
        error = wrapped(conn, sql, params, exc, invalidated=lost)
        if lost:  # as SQLAlchemy does: the pool drops the connection rather than reuse it
            conn.invalidate(exc)
        raise error from exc
    finally:
        cursor.close()


def execute(conn: sa.Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` (in the driver's parameter style) inside ``conn``'s transaction on the
    DBAPI cursor; its rows, if it returns any."""
    with _cursor(conn, sql, params) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def rowcount(conn: sa.Connection, sql: str, params: Any = ()) -> int:
    """Run ``sql`` (a statement returning no rows) on the DBAPI cursor; the rows it changed."""
    with _cursor(conn, sql, params) as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount or 0)


def executemany(conn: sa.Connection, sql: str, rows: Sequence[Any]) -> int:
    """Run ``sql`` once per row of ``rows`` on the DBAPI cursor; the rows it changed."""
    with _cursor(conn, sql, rows) as cursor:
        cursor.executemany(sql, rows)
        return int(cursor.rowcount or 0)


def execute_each(conn: sa.Connection, sql: str, rows: Sequence[Any]) -> list[int]:
    """Run ``sql`` once per row of ``rows`` on one DBAPI cursor; the rows each run changed
    (``executemany`` gives only their sum)."""
    counts = []
    with _cursor(conn, sql, rows) as cursor:
        for row in rows:
            cursor.execute(sql, row)
            counts.append(int(cursor.rowcount or 0))
    return counts


def wrapped(conn: sa.Connection, sql: str, params: Any, exc: Exception, *,
            invalidated: bool = False) -> BaseException:
    """A driver error as SQLAlchemy raises it (``OperationalError`` for a busy database or a
    lost connection, with ``connection_invalidated``), parameters hidden."""
    return sa.exc.DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, connection_invalidated=invalidated,
                                      dialect=conn.dialect)


def driver_sql(dialect: str, sql: str) -> str:
    """``sql`` with its ``:name`` parameters in the driver's style, for ``execute``:
    unchanged for SQLite (sqlite3 takes ``:name``), ``%(name)s`` for psycopg. For statements
    written in this code base, whose literals hold no colon."""
    if dialect != "postgresql":
        return sql
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect: str, table: str, columns: tuple[tuple[str, str], ...],
                conflict: tuple[str, ...], returning: tuple[str, ...]) -> str:
    names = ", ".join(name for name, _ in columns)
    on_conflict = f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in columns)
        return f"INSERT INTO {table} ({names}) VALUES ({marks}){on_conflict}"
    sql = (f"INSERT INTO {table} ({names}) SELECT {names} FROM {source(dialect, columns)} "
           f"WHERE true{on_conflict}")
    if returning:
        sql += " RETURNING " + ", ".join(returning)
    return driver_sql(dialect, sql)


def insert_rows(conn: sa.Connection, table: sa.Table, columns: Sequence[tuple[str, str]],
                rows: Sequence[Sequence[Any]], conflict: Sequence[str],
                returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """``insert_select`` of rows given as tuples in the order of ``columns``."""
    if not rows:
        return []
    dialect = conn.dialect.name
    sql = _insert_sql(dialect, table.name, tuple(columns), tuple(conflict), tuple(returning))
    if dialect != "sqlite":
        names = [name for name, _ in columns]
        return execute(conn, sql, {"rows": dumps(dict(zip(names, r)) for r in rows)})
    json_at = [i for i, (_, kind) in enumerate(columns) if kind == "json"]
    if json_at:  # json values as text, NULL for None
        encoded = []
        for row in rows:
            values = list(row)
            for i in json_at:
                if values[i] is not None:
                    values[i] = _json_text(values[i])
            encoded.append(values)
        rows = encoded
    if not returning:
        executemany(conn, sql, rows)
        return []
    # SQLite gives a new row a rowid above the table's highest, and the write lock, held from
    # here to the commit, keeps other connections' rows out: the rows above ``top`` are ours.
    # (A transaction that read before another writer committed cannot take the lock: its write
    # fails as busy and the caller's retry runs it again.)
    take_write_lock(conn)
    top = execute(conn, f"SELECT max(rowid) FROM {table.name}")[0][0] or 0
    executemany(conn, sql, rows)
    picked = ", ".join(returning)
    return execute(conn, f"SELECT {picked} FROM {table.name} WHERE rowid > ? ORDER BY rowid",
                   (top,))


def insert_select(conn: sa.Connection, table: sa.Table, columns: Sequence[tuple[str, str]],
                  rows: Sequence[Mapping[str, Any]], conflict: Sequence[str],
                  returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """``INSERT INTO table (columns) ... ON CONFLICT (conflict) DO NOTHING`` of ``rows`` (one
    statement on PostgreSQL, one prepared statement per row on SQLite); the ``returning``
    columns of the rows it inserted."""
    names = [name for name, _ in columns]
    return insert_rows(conn, table, columns, [tuple(r.get(n) for n in names) for r in rows],
                       conflict, returning)
