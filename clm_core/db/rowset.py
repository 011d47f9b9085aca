"""A batch of rows bound as one parameter: a JSON document the database itself unpacks into a
derived table (PostgreSQL ``jsonb_to_recordset``, SQLite ``json_each``).

Why: small batches written often (a webhook's 100 events, many times a second) pay per row and
per placeholder when each row is its own statement or its own ``VALUES`` tuple: SQLAlchemy
processes every parameter, and psycopg parses every long statement again to find its
placeholders (it caches only short ones, and 100 rows of 13 columns are 1,300 placeholders in a
statement whose text changes with the batch size). With one JSON parameter the statement is
short and the same for every batch, so it is compiled, cached and prepared once, and the rows
cross to the database as one string.

Columns are declared with a small set of types. Times travel as text in the form SQLAlchemy
itself stores on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``), which PostgreSQL reads as a
timestamp, so rows written here compare and read back like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

# column type -> PostgreSQL type in the record definition
PG_TYPES = {"text": "text", "int": "bigint", "bool": "boolean", "timestamp": "timestamp",
            "json": "jsonb"}


def stamp(t: datetime) -> str:
    """A naive UTC time as SQLAlchemy stores it on SQLite (and PostgreSQL parses), always with
    microseconds (``isoformat`` is several times faster than ``strftime``)."""
    text = t.isoformat(" ")
    return text if t.microsecond else text + ".000000"


def dumps(rows: Iterable[Mapping[str, Any]]) -> str:
    """The JSON document of ``rows`` (times already as ``stamp`` text)."""
    return json.dumps(list(rows), ensure_ascii=False, separators=(",", ":"))


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


def insert_select(conn: sa.Connection, table: sa.Table, columns: Sequence[tuple[str, str]],
                  rows: Sequence[Mapping[str, Any]], conflict: Sequence[str],
                  returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """``INSERT INTO table (columns) SELECT ... ON CONFLICT (conflict) DO NOTHING`` of ``rows``
    in one statement; the ``returning`` columns of the rows it inserted."""
    if not rows:
        return []
    names = ", ".join(name for name, _ in columns)
    # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT to parse the upsert clause.
    sql = (f"INSERT INTO {table.name} ({names}) SELECT {names} FROM "
           f"{source(conn.dialect.name, columns)} WHERE true "
           f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING")
    if returning:
        sql += " RETURNING " + ", ".join(returning)
    result = conn.execute(sa.text(sql), {"rows": dumps(rows)})
    return [tuple(r) for r in result] if returning else []
