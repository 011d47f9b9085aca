"""Set-based writes through a staging table: a frame is loaded into a temporary table by the
fastest path each database has, then changes the real table in one statement.

Hundreds of thousands of rows written one statement execution each (an ``executemany`` of an
upsert on SQLite, a speculative insertion per row under PostgreSQL's ``ON CONFLICT``) spend
their time per row: binding, looking the row up, and maintaining every index the ``SET`` list
touches. Loaded into a table first (PostgreSQL: ``COPY``; SQLite: one ``executemany`` of plain
tuples into a temporary table, which has no index to maintain), the rows then join the target
once: ``UPDATE ... FROM`` (SQLite 3.33 and later, PostgreSQL) changes only the rows, and of them
only the columns, that differ; ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` adds only the
rows that are new. Everything runs in the caller's transaction, so a failure leaves the table as
it was and a repeat of the same write changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db.bulk import (
    SQLITE_CACHE_KIB,
    _columns,
    _copy,
    _quoted,
    _raw,
    _translated,
    planner_settings,
)

JOIN_WORK_MEM = "256MB"  # PostgreSQL's work memory for an UPDATE ... FROM (see update_from)


def stage(conn: Connection, table: sa.Table, df: pd.DataFrame,
          as_text: Sequence[str] = ()) -> str:
    """A temporary table named after ``table`` holding ``df``'s rows; its name.

    Its columns are ``df``'s, typed as ``table``'s (same affinity on SQLite, so values compare
    and convert as they would in the table itself), without defaults or constraints. Any
    earlier staging table of the same name on this connection is replaced; on PostgreSQL it is
    dropped at commit, on SQLite by :func:`unstage`. ``as_text``: columns whose values are
    already what the database takes (JSON text made in bulk by the caller), written as given."""
    name = f"_clm_stage_{table.name}"
    cols = list(df.columns)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS "
                             f"SELECT {_quoted(cols)} FROM {table.name} WITH NO DATA")
        if len(df):
            _copy(conn, name, table, df, as_text)
        conn.exec_driver_sql(f"ANALYZE {name}")  # row estimates for the join that follows
        return name
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} AS SELECT {_quoted(cols)} "
                         f"FROM {table.name} WHERE 0")
    if len(df):
        sql = f'INSERT INTO temp.{name} VALUES ({", ".join("?" * len(cols))})'
        cur = _raw(conn).cursor()
        cache = cur.execute("PRAGMA temp.cache_size").fetchone()[0]
        cur.execute(f"PRAGMA temp.cache_size = {min(cache, -SQLITE_CACHE_KIB)}")
        try:
            with _translated(conn, sql):
                cur.executemany(sql, zip(*_columns(table, df, as_text)))
        finally:
            cur.execute(f"PRAGMA temp.cache_size = {cache}")
    return name


def unstage(conn: Connection, name: str) -> None:
    """Drop a staging table now (PostgreSQL would drop it at commit anyway)."""
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}" if conn.dialect.name == "postgresql"
                         else f"DROP TABLE IF EXISTS temp.{name}")


def update_from(conn: Connection, table: sa.Table, df: pd.DataFrame, *, key: str,
                columns: Sequence[str], as_text: Sequence[str] = ()) -> int:
    """Set ``columns`` of the rows of ``table`` whose ``key`` is in ``df`` to ``df``'s values,
    in one ``UPDATE ... FROM``; only rows where some value differs are written. Rows of
    ``df`` without a match are ignored (``as_text`` as for :func:`stage`). The number of rows
    changed."""
    if df.empty:
        return 0
    # In key order, the rows are changed in the order the table and its key's index hold them.
    name = stage(conn, table, df[[key, *columns]].sort_values(key, kind="stable"), as_text)
    postgres = conn.dialect.name == "postgresql"
    distinct = "IS DISTINCT FROM" if postgres else "IS NOT"
    sets = ", ".join(f'"{c}" = s."{c}"' for c in columns)
    differs = " OR ".join(f't."{c}" {distinct} s."{c}"' for c in columns)
    sql = (f"UPDATE {table.name} AS t SET {sets} FROM {name} AS s "
           f'WHERE t."{key}" = s."{key}" AND ({differs})')
    if not postgres:
        changed = conn.exec_driver_sql(sql).rowcount
        unstage(conn, name)
        return int(changed)
    with join_memory(conn, **(_BY_KEY if _few(conn, table, len(df)) else {})):
        changed = conn.exec_driver_sql(sql).rowcount
    unstage(conn, name)
    return int(changed)


# Rows few next to the table are found by key: the planner, pricing each lookup as a read
# from disk, scanned and hashed the whole table instead (a night's 57,594 changed enrollments
# of 876,000: the join 0.37-0.60 s that way, 0.12-0.23 s by key). That plan's cost then
# passes the JIT threshold, and compiling it cost more than it saved. A large change (the
# first night's, every enrollment) keeps the hash join.
_BY_KEY = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}
FEW_SHARE = 0.1


def _few(conn: Connection, table: sa.Table, rows: int) -> bool:
    """Whether ``rows`` are under ``FEW_SHARE`` of ``table``'s rows as PostgreSQL's
    statistics count them (not when it has none)."""
    stored = conn.exec_driver_sql("SELECT reltuples FROM pg_class WHERE oid = %(t)s::regclass",
                                  {"t": table.name}).scalar()
    return stored is not None and stored > 0 and rows < FEW_SHARE * stored


def join_memory(conn: Connection, **more: str) -> AbstractContextManager[None]:
    """PostgreSQL's work memory raised to ``JOIN_WORK_MEM`` for the statements inside, then
    put back. The default 4 MB splits a hash join or aggregate over a million-row table into
    batches spilled to disk. ``more``: other planner settings to hold inside (their values
    as SQL literals). Nothing on other databases."""
    return planner_settings(conn, work_mem=f"'{JOIN_WORK_MEM}'", **more)


def insert_staged(conn: Connection, table: sa.Table, name: str, columns: Sequence[str],
                  keys: Sequence[str]) -> int:
    """Insert the staged rows' ``columns`` into ``table``, skipping rows whose ``keys``
    already exist there (``ON CONFLICT DO NOTHING``); the number of rows inserted."""
    sql = (f"INSERT INTO {table.name} ({_quoted(columns)}) SELECT {_quoted(columns)} FROM "
           f"{name} WHERE true ON CONFLICT ({', '.join(keys)}) DO NOTHING")
    return int(conn.exec_driver_sql(sql).rowcount)
