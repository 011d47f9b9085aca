"""Bulk writes of DataFrames: the fast path for imports, scores and planned messages.

SQLite gets one ``executemany`` of ``INSERT ... ON CONFLICT`` on the raw connection; PostgreSQL
gets ``COPY`` into a temporary table and one ``INSERT ... SELECT ... ON CONFLICT``. Upserts only
touch rows whose values differ, so writing the same data twice changes nothing.

Big loads (``bulk=True``) follow PostgreSQL's "populating a database" advice on both databases,
under a table lock that keeps other writers out until commit: when the frame is large next to
the table, secondary indexes (and on PostgreSQL foreign keys, and unique constraints of an empty
table) are dropped and rebuilt around the write, several times faster than maintaining them row
by row; an empty table gets the rows without conflict handling (on PostgreSQL a ``COPY``
straight into it); on PostgreSQL an upsert becomes an ``UPDATE ... FROM`` plus an anti-joined
``INSERT`` (hash joins instead of a speculative insertion per row). Everything stays in the
caller's transaction, so a failure rolls the indexes and constraints back with the data.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from decimal import Decimal
from itertools import chain
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db.engine import take_write_lock
from clm_core.db.literals import Run, runs
from clm_core.db.pgbinary import SIGNATURE, TRAILER, Encoder
from clm_core.db.timetext import times_as_text

# A bulk write rebuilds indexes when it brings at least this many rows and at least a quarter
# of what the table holds: below that, maintaining the indexes costs less than rebuilding them.
REBUILD_MIN_ROWS = 50_000
REBUILD_MIN_SHARE = 0.25
COPY_CHUNK_ROWS = 100_000
WRITE_CHUNK_ROWS = 250_000  # rows bound from Python values at a time (SQLite)
# Rows one SQLite INSERT carries (fewer when SQLite's limit on bound values is lower): one
# statement step per row costs about as much again as the insert itself (the driver's call,
# the step and reset, the lock around it); a step per 500 rows, 40% less in all.
ROWS_PER_STATEMENT = 500
SQLITE_CACHE_KIB = 256 * 1024  # page cache for a write (SQLite allocates it only as needed)


def _datetimes_as_text(s: pd.Series) -> list[str | None]:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's SQLite storage format; PostgreSQL reads it
    too), None for NaT, computed over the whole column at once (``times_as_text``)."""
    return times_as_text(s.to_numpy(dtype="datetime64[us]"))


def _column(col: sa.Column, s: pd.Series) -> Sequence[object]:
    """One column as Python values the DBAPI (or COPY) takes as they are: None for missing,
    JSON as text, times as text, booleans as bool."""
    if isinstance(col.type, sa.JSON):
        return [None if v is None or (isinstance(v, float) and np.isnan(v))
                else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
                for v in s.tolist()]
    if isinstance(col.type, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(s):
        return _datetimes_as_text(s)
    if isinstance(col.type, sa.Date) and pd.api.types.is_datetime64_any_dtype(s):
        return [None if v is None else v[:10] for v in _datetimes_as_text(s)]
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iub":
        return s.tolist()
    if isinstance(s.dtype, np.dtype) and s.dtype.kind == "f" or \
            isinstance(s.dtype, pd.Int64Dtype | pd.Int32Dtype | pd.Int16Dtype | pd.Float64Dtype):
        # numbers as Python numbers, then None where missing: quicker than going through an
        # array of objects (a million score rows' columns: 1.75 s instead of 2.0 s)
        null = s.isna().to_numpy()
        numbers = s.to_numpy(dtype="float64" if s.dtype.kind == "f" else "int64",
                             na_value=0) if null.any() else s.to_numpy()
        out = numbers.tolist()
        for i in np.flatnonzero(null).tolist():
            out[i] = None
        return out
    values = s.to_numpy(dtype=object, na_value=None).tolist()
    if isinstance(col.type, sa.Numeric) and s.dtype == object:
        # sqlite3 cannot bind Decimal; its repr as a float is what SQLAlchemy stores there,
        # and PostgreSQL parses the same text back into the exact NUMERIC(12, 2).
        return [float(v) if isinstance(v, Decimal) else v for v in values]
    return values


def _columns(table: sa.Table, df: pd.DataFrame,
             as_text: Sequence[str] = ()) -> list[Sequence[object]]:
    """Every column of ``df`` as ``_column`` gives it; those named in ``as_text`` as they are
    (values the caller already formatted, such as JSON text made in bulk)."""
    return [df[name].tolist() if name in as_text else _column(table.c[name], df[name])
            for name in df.columns]


def _conflict_sql(table: sa.Table, keys: Sequence[str], update: Sequence[str] | None,
                  distinct_op: str, touch: str | None) -> str:
    if not update:
        return f"ON CONFLICT ({', '.join(keys)}) DO NOTHING"
    sets = ", ".join([f'"{c}" = excluded."{c}"' for c in update]
                     + ([f'"{touch}" = CURRENT_TIMESTAMP'] if touch else []))
    changed = " OR ".join(f'{table.name}."{c}" {distinct_op} excluded."{c}"' for c in update)
    return f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets} WHERE {changed}"


def write_frame(conn: Connection, table: sa.Table, df: pd.DataFrame, *,
                keys: Sequence[str] | None = None, update: Sequence[str] | None = None,
                touch: str | None = None, bulk: bool = False,
                runs_by: Sequence[str] | None = None,
                then: Iterable[pd.DataFrame] = (), keep_indexes: bool = False,
                frozen: bool = False) -> int:
    """Insert ``df`` into ``table``; with ``keys``, rows that conflict on them are updated
    (``update`` columns, only where a value differs; ``touch`` is then set to now) or left
    alone (no ``update``). ``keys`` must be unique within ``df``.

    ``bulk``: the caller accepts that the table is locked against other writers (and, when
    indexes are rebuilt, readers) until the transaction ends, for several times the speed on
    large frames. Into an empty table the rows then go straight in, with no conflict checks.
    On SQLite, values that are the same on every row go into the statement instead of being
    bound per row, and so do those shared by each run of rows with equal ``runs_by`` values
    (a frame sorted so that they come together).

    ``then``: more frames with the same columns (and keys not in ``df``), written after it in
    the same way: in bulk under the same lock and index rebuild, which ``df`` decides. Each is
    taken from the iterable only when the one before is written, so the caller can still be
    computing them meanwhile.

    ``keep_indexes``: the caller's rows update stored rows (a bulk write otherwise rebuilds
    the secondary indexes around a large write): when no index holds an ``update`` column,
    updating a row leaves every index as it was, and dropping and rebuilding them would be
    all cost (a million score rows' daily columns on SQLite: 3.8 s kept, 2.8 s more rebuilt).

    ``frozen``: the caller emptied the table with TRUNCATE in this transaction (and in no
    savepoint since): PostgreSQL's COPY may then store the rows frozen (``replace_frame``).

    Returns the number of rows inserted or changed. Runs inside the caller's transaction.
    """
    if df.empty and not then:
        return 0
    frames = (frame for frame in chain([df], then) if not frame.empty)
    cols = list(df.columns)
    postgres = conn.dialect.name == "postgresql"
    if not bulk:
        if postgres:
            return sum(_write_postgres(conn, table, frame, cols, keys, update, touch)
                       for frame in frames)
        return sum(_write_sqlite(conn, table, frame, cols, keys, update, touch)
                   for frame in frames)
    existing = _lock_and_count(conn, table, None if then else len(df))
    if existing == 0:  # nothing to conflict with, and the lock keeps it so
        keys = None
    if postgres and keys:  # indexes are rebuilt, if at all, around the insert of new rows
        return sum(_upsert_postgres(conn, table, frame, cols, keys, update, touch, existing)
                   for frame in frames)
    # On SQLite the large page cache stays through the index rebuild: the new indexes are
    # built from the pages just written, which a small cache would read back from the WAL.
    indexed = {c.name for index in table.indexes for c in index.columns}
    kept = keep_indexes and bool(keys) and not indexed & set(update or ())
    with nullcontext() if postgres else _page_cache(conn), \
            nullcontext() if kept else _rebuilding(conn, table, len(df), existing):
        written = 0
        for frame in frames:
            if postgres:
                _copy(conn, table.name, table, frame, freeze=frozen)
                written += len(frame)
            else:
                written += _write_sqlite(conn, table, frame, cols, keys, update, touch,
                                         runs_by or ())
        return written


@contextmanager
def _page_cache(conn: Connection) -> Iterator[None]:
    """A SQLite page cache of at least SQLITE_CACHE_KIB for the block, then the one before:
    the default 2 MB makes a big insert thrash between memory and the WAL file."""
    cur = _raw(conn).cursor()
    cache = cur.execute("PRAGMA cache_size").fetchone()[0]
    cur.execute(f"PRAGMA cache_size = {min(cache, -SQLITE_CACHE_KIB)}")
    try:
        yield
    finally:
        cur.execute(f"PRAGMA cache_size = {cache}")


def _quoted(cols: Sequence[str], alias: str = "") -> str:
    return ", ".join(f'{alias}"{c}"' for c in cols)


def _write_sqlite(conn: Connection, table: sa.Table, df: pd.DataFrame, cols: list[str],
                  keys: Sequence[str] | None, update: Sequence[str] | None,
                  touch: str | None, runs_by: Sequence[str] | None = None) -> int:
    """``runs_by`` (bulk writes): one statement per run of rows with equal values in these
    columns, with what is constant over the run (and over the frame) written as literals."""
    conflict = _conflict_sql(table, keys, update, "IS NOT", touch) if keys else ""

    def value(c: str, row: int) -> object:
        return _column(table.c[c], df[c].iloc[row:row + 1])[0]

    parts = runs(df, value, runs_by) if runs_by is not None else [Run(0, len(df), {})]
    raw = _raw(conn)
    cur = raw.cursor()
    before = raw.total_changes
    with _page_cache(conn):
        for part in parts:
            row = "(" + ", ".join(part.literals.get(c, "?") for c in cols) + ")"
            into = f"INSERT INTO {table.name} ({_quoted(cols)}) VALUES"
            # in chunks: millions of rows as Python values at once would take gigabytes
            for start in range(part.start, part.stop, WRITE_CHUNK_ROWS):
                rows = df.iloc[start:min(start + WRITE_CHUNK_ROWS, part.stop)]
                bound = [_column(table.c[c], rows[c]) for c in cols if c not in part.literals]
                _insert_rows(conn, cur, into, row, conflict, bound)
    return int(raw.total_changes - before)


def _insert_rows(conn: Connection, cur: Any, into: str, row: str, conflict: str,
                 bound: list[Sequence[object]]) -> None:
    """Insert rows whose bound values are the columns ``bound``: as many rows a statement as
    fit (``ROWS_PER_STATEMENT``), the remainder one a statement. The rows go in in their
    order (a multi-row VALUES list is inserted row by row, with the same conflict handling)."""
    n, width = len(bound[0]), len(bound)
    limit = _raw(conn).getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, min(ROWS_PER_STATEMENT, limit // width))
    full = n // per * per if per > 1 else 0
    if full:
        grid = np.empty((n, width), dtype=object)
        for j, values in enumerate(bound):
            grid[:, j] = values
        sql = f"{into} {', '.join([row] * per)} {conflict}"
        with _translated(conn, sql):
            cur.executemany(sql, grid[:full].reshape(-1, width * per).tolist())
        rest: Any = grid[full:].tolist()
    else:
        rest = zip(*bound)
    if full < n:
        sql = f"{into} {row} {conflict}"
        with _translated(conn, sql):
            cur.executemany(sql, rest)


def _raw(conn: Connection) -> Any:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return raw


def _copy(conn: Connection, target: str, table: sa.Table, df: pd.DataFrame,
          as_text: Sequence[str] = (), freeze: bool = False) -> None:
    """COPY the frame into ``target``, in chunks, so that the server parses one chunk while the
    next is made here: in the binary format when every column can be (``pgbinary``: several
    times faster to make than text), else as csv text (None becomes an unquoted empty field:
    NULL).

    The chunks go to the server from a writer thread (psycopg's ``QueuedLibpqWriter``, which
    holds at most 128 MB queued). Written from this thread, each write waited for the server
    to take in most of its chunk before the next could be made, so making and loading took
    turns: a million score rows took 10.0-10.5 s to COPY that way and 6.2-6.7 s with the
    queue. A refusal by the server still fails the write it comes in, or the end of the COPY.

    ``freeze``: COPY's FREEZE (the table was emptied or made in this transaction).
    """
    objects = [c for c in df.columns
               if c not in as_text and isinstance(table.c[c].type, sa.JSON)]
    texts = df.assign(**{c: pd.Series(_column(table.c[c], df[c]), index=df.index, dtype=object)
                         for c in objects}) if objects else df  # JSON as the text path has it
    encoder = Encoder.of(texts, _pg_types(conn, target))
    fmt, cols = ("binary", encoder.names) if encoder is not None else ("csv", df.columns)
    from psycopg.copy import QueuedLibpqWriter  # PostgreSQL's driver, loaded only for it

    sql = f"COPY {target} ({_quoted(cols)}) FROM STDIN WITH (FORMAT {fmt}" + \
        (", FREEZE)" if freeze else ")")
    with _translated(conn, sql), _raw(conn).cursor() as cur:
        with cur.copy(sql, writer=QueuedLibpqWriter(cur)) as copy:
            if encoder is not None:
                copy.write(SIGNATURE)
            for start in range(0, len(df), COPY_CHUNK_ROWS):
                if encoder is not None:
                    copy.write(encoder.rows(start, start + COPY_CHUNK_ROWS))  # of ``texts``
                    continue
                part = df.iloc[start:start + COPY_CHUNK_ROWS]
                frame = pd.DataFrame(dict(zip(part.columns, _columns(table, part, as_text))),
                                     dtype=object)
                copy.write(_csv(frame))
            if encoder is not None:
                copy.write(TRAILER)


def _pg_types(conn: Connection, target: str) -> dict[str, str]:
    """The PostgreSQL type of each column of ``target`` (a table or temporary table)."""
    rows = conn.exec_driver_sql(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
        "WHERE attrelid = %(t)s::regclass AND attnum > 0 AND NOT attisdropped", {"t": target})
    return {str(name): str(kind) for name, kind in rows}


# In COPY's csv format an unquoted empty field is NULL and a quoted one is an empty string.
# pandas quotes every text field (NULLs included) under QUOTE_NONNUMERIC, so NULLs are written
# as a quoted NUL character, which no PostgreSQL text can hold, and then unquoted to nothing.
_NULL_MARK = "\x00"


def _csv(frame: pd.DataFrame) -> str:
    text = frame.to_csv(index=False, header=False, quoting=csv.QUOTE_NONNUMERIC,
                        na_rep=_NULL_MARK)
    return text.replace(f'"{_NULL_MARK}"', "")


def _load_table(conn: Connection, table: sa.Table, df: pd.DataFrame, cols: list[str]) -> str:
    """A temporary table holding the frame: only its columns, without defaults or constraints
    (a serial id's default would spend a sequence value per row)."""
    tmp = f"_clm_load_{table.name}"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {tmp}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {tmp} ON COMMIT DROP AS "
                         f"SELECT {_quoted(cols)} FROM {table.name} WITH NO DATA")
    _copy(conn, tmp, table, df)
    return tmp


def _write_postgres(conn: Connection, table: sa.Table, df: pd.DataFrame, cols: list[str],
                    keys: Sequence[str] | None, update: Sequence[str] | None,
                    touch: str | None) -> int:
    tmp = _load_table(conn, table, df, cols)
    conflict = _conflict_sql(table, keys, update, "IS DISTINCT FROM", touch) if keys else ""
    result = conn.exec_driver_sql(f"INSERT INTO {table.name} ({_quoted(cols)}) "
                                  f"SELECT {_quoted(cols)} FROM {tmp} {conflict}")
    return int(result.rowcount)


def _upsert_postgres(conn: Connection, table: sa.Table, df: pd.DataFrame, cols: list[str],
                     keys: Sequence[str], update: Sequence[str] | None, touch: str | None,
                     existing: int) -> int:
    """Update what differs, then insert what is new, both as hash joins against the loaded
    frame; the indexes are rebuilt only when the new rows are many (not on a re-import)."""
    tmp = _load_table(conn, table, df, cols)
    conn.exec_driver_sql(f"ANALYZE {tmp}")  # row estimates for the joins below
    match = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
    changed = 0
    if update:
        sets = ", ".join([f'"{c}" = s."{c}"' for c in update]
                         + ([f'"{touch}" = CURRENT_TIMESTAMP'] if touch else []))
        differs = " OR ".join(f't."{c}" IS DISTINCT FROM s."{c}"' for c in update)
        changed = conn.exec_driver_sql(
            f"UPDATE {table.name} AS t SET {sets} FROM {tmp} AS s WHERE {match} AND ({differs})"
        ).rowcount
    new = f"FROM {tmp} AS s WHERE NOT EXISTS (SELECT 1 FROM {table.name} AS t WHERE {match})"
    n_new = int(conn.exec_driver_sql(f"SELECT count(*) {new}").scalar() or 0)
    if not n_new:
        return int(changed)
    with _rebuilding(conn, table, n_new, existing):
        inserted = conn.exec_driver_sql(f"INSERT INTO {table.name} ({_quoted(cols)}) "
                                        f"SELECT {_quoted(cols, 's.')} {new}").rowcount
    return int(changed) + int(inserted)


@contextmanager
def _translated(conn: Connection, sql: str) -> Iterator[None]:
    """DBAPI errors from the raw connection as SQLAlchemy's (IntegrityError and so on), as
    they would be through ``conn.execute``."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error) from exc


def _lock_and_count(conn: Connection, table: sa.Table, rows: int | None = None) -> int:
    """Lock ``table`` against other writers until the transaction ends; its row count. For a
    write of ``rows`` too few to rebuild indexes for, only whether the table is empty matters:
    then 0 or 1, from one row's lookup instead of a pass over the table (a day's import into
    fifty million orders: seconds)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"LOCK TABLE {table.name} IN SHARE ROW EXCLUSIVE MODE")
    else:
        # pysqlite opens a transaction only before DML: without this, index DDL would
        # commit on its own and a failed write could not restore the indexes.
        take_write_lock(conn)
    if rows is not None and rows < REBUILD_MIN_ROWS:
        return int(conn.scalar(sa.select(sa.literal(1)).select_from(table).limit(1)) or 0)
    return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


@contextmanager
def _rebuilding(conn: Connection, table: sa.Table, n_rows: int, existing: int) -> Iterator[None]:
    """For a write of ``n_rows`` large next to the ``existing`` ones, drop the table's
    secondary indexes (and on PostgreSQL foreign keys, and unique constraints of an empty
    table) first and recreate them from their stored definitions after."""
    if n_rows < REBUILD_MIN_ROWS or n_rows < REBUILD_MIN_SHARE * existing:
        yield
        return
    if conn.dialect.name == "postgresql":
        indexes = conn.exec_driver_sql(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %(t)s::regclass "
            "AND NOT i.indisunique AND NOT i.indisprimary", {"t": table.name}).all()
        # Foreign keys, and into an empty table (no conflicts to detect) unique constraints
        # too: building a unique index once after the load beats maintaining it row by row.
        # ``in_order``: a one-column foreign key whose column leads a whole index of the
        # table (there again when the key is added back), so its check can walk it in order.
        kinds = "('f', 'u')" if existing == 0 else "('f')"
        constraints = conn.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid), contype = 'f' AND "
            "cardinality(conkey) = 1 AND EXISTS (SELECT 1 FROM pg_index i WHERE "
            "i.indrelid = c.conrelid AND i.indpred IS NULL AND i.indkey[0] = c.conkey[1]) "
            "AS in_order FROM pg_constraint c "
            f"WHERE conrelid = %(t)s::regclass AND contype IN {kinds} AND (contype = 'f' OR "
            "NOT EXISTS (SELECT 1 FROM pg_constraint r WHERE r.contype = 'f' "  # referenced
            "AND r.conindid = c.conindid)) ORDER BY contype DESC", {"t": table.name}).all()
    else:
        indexes = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%'", (table.name,)).all()
        constraints = []  # SQLite cannot drop a constraint; its checks are cheap there anyway
    for name, _ in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    for name, *_ in constraints:
        conn.exec_driver_sql(f'ALTER TABLE {table.name} DROP CONSTRAINT "{name}"')
    yield
    for _, definition in indexes:
        conn.exec_driver_sql(definition)
    for name, definition, in_order in constraints:  # unique ones first: foreign keys need them
        with _merge_checked(conn) if in_order else nullcontext():
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD CONSTRAINT "{name}" {definition}')


@contextmanager
def planner_settings(conn: Connection, **settings: str) -> Iterator[None]:
    """PostgreSQL's planner ``settings`` (values as SQL literals) held for the statements
    inside, then put back as they were (``SET LOCAL`` alone would keep them to the end of the
    transaction). Nothing on other databases."""
    if conn.dialect.name != "postgresql":
        yield
        return
    before = {name: str(conn.exec_driver_sql(f"SELECT current_setting('{name}')").scalar())
              for name in settings}
    for name, value in settings.items():
        conn.exec_driver_sql(f"SET LOCAL {name} = {value}")
    try:
        yield
    finally:
        for name, value in before.items():
            conn.exec_driver_sql(f"SET LOCAL {name} = '{value}'")


def _merge_checked(conn: Connection) -> AbstractContextManager[None]:
    """PostgreSQL's check of a foreign key added back after a load, planned as a merge of the
    two keys' indexes (no hash join) for the statement inside.

    Its check is one anti-join of the table's key column against the referenced key. Right
    after a reload nothing has told the planner that the new rows are all visible (the table's
    statistics are those of the emptied table until it is vacuumed or analyzed, although the
    frozen load marked every page all-visible), so it prices each row of an index-only scan as
    a heap fetch and hashes both sides instead: at a million score rows 1.3 s against 0.2 s
    for the merge of the two primary keys it then runs without one heap fetch. Used only when
    the key's column leads an index of the table (``in_order``), so that both sides are walked
    in order; any other key keeps the planner's choice (the score rows' key to their fit, one
    of a few fits, is best hashed)."""
    return planner_settings(conn, enable_hashjoin="off")



def replace_frame(conn: Connection, table: sa.Table, df: pd.DataFrame, *, key: str) -> int:
    """Make ``table`` hold ``df``'s rows, and its stored rows whose ``key`` ``df`` lacks, by
    emptying it and loading it afresh (under a lock that keeps other writers, and on
    PostgreSQL readers, out until the transaction ends); the number of rows written.

    When most rows change (a nightly scoring rewrites every customer's row: its as-of day, T
    and P(alive) move every day) this beats an upsert on PostgreSQL: no row is looked up or
    compared, no old row version is left behind, and the secondary indexes are built once
    after the load (``write_frame(bulk=True)`` into an empty table). PostgreSQL empties it with
    TRUNCATE and loads it frozen: a transaction whose snapshot predates the commit and that
    had not read the table yet sees the new rows (without FREEZE it would see it empty).
    SQLite deletes the rows of a table with foreign keys one by one, which makes an upsert
    the cheaper there. Runs in the caller's transaction.
    """
    if df.empty:
        return 0
    name = table.name
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
    else:
        take_write_lock(conn)
    keep = f"_clm_keep_{name}"
    kept = _kept_keys(conn, table, df, key)
    if len(kept):  # rows this write does not replace, set aside while the table is emptied
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {keep}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {keep} AS SELECT * FROM {name} WHERE 1 = 0")
        ids = kept.tolist()
        for start in range(0, len(ids), 10_000):
            part = ids[start:start + 10_000]
            conn.execute(sa.text(f'INSERT INTO {keep} SELECT * FROM {name} WHERE "{key}" IN '
                                 ":ids").bindparams(sa.bindparam("ids", expanding=True)),
                         {"ids": part})
    postgres = conn.dialect.name == "postgresql"
    conn.exec_driver_sql(f"TRUNCATE {name}" if postgres else f"DELETE FROM {name}")
    # Frozen: the rows go in as every later transaction will see them, their hint bits and
    # the visibility map set by the load. Otherwise the first statements to read the new
    # table set them, writing every page once more: the index builds and the foreign key's
    # check right after the load (0.7 s of the key's 0.8 s at a million rows), then the
    # night's journeys and the next night's features. (COPY refuses FREEZE while the
    # transaction has a cursor open; none is here.)
    written = write_frame(conn, table, df, bulk=True, runs_by=(),  # SQLite: constants inlined
                          frozen=postgres)
    if len(kept):
        conn.exec_driver_sql(f"INSERT INTO {name} SELECT * FROM {keep}")
        conn.exec_driver_sql(f"DROP TABLE {keep}")
    return written


def _kept_keys(conn: Connection, table: sa.Table, df: pd.DataFrame, key: str) -> np.ndarray:
    """The stored keys of ``table`` that ``df`` lacks: the rows a reload must keep."""
    name = table.name
    if isinstance(table.c[key].type, sa.Integer):
        # Integer keys as one text the database joins, split here: a million keys as rows
        # took 2.0 s on PostgreSQL and 1.5 s on SQLite (0.9 s through the driver's own
        # cursor), as one text 0.6 and 0.4 s. Both cap a text at about a gigabyte: some
        # hundred million keys, far past any table this rewrites.
        joined = conn.exec_driver_sql(
            f'SELECT group_concat("{key}") FROM {name}' if conn.dialect.name == "sqlite"
            else f'SELECT string_agg("{key}"::text, \',\') FROM {name}').scalar()
        stored = np.array(joined.split(","), dtype=np.int64) if joined else np.array([], np.int64)
    else:
        stored = np.array(conn.exec_driver_sql(f'SELECT "{key}" FROM {name}').scalars().all())
    keys = df[key].to_numpy()
    # integer keys: a lookup table over their range, not two sorts of a million keys
    table_kind: Literal["table"] | None = \
        "table" if stored.dtype.kind in "iu" and keys.dtype.kind in "iu" else None
    return stored[~np.isin(stored, keys, kind=table_kind)] if len(stored) else stored
