"""Bulk writes of DataFrames: the fast path for imports, scores and planned messages.

SQLite gets one ``executemany`` of ``INSERT ... ON CONFLICT`` on the raw connection; PostgreSQL
gets ``COPY`` into a temporary table and one ``INSERT ... SELECT ... ON CONFLICT``. Upserts only
touch rows whose values differ, so writing the same data twice changes nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own SQLite DateTime storage format


def _prepare(table: sa.Table, df: pd.DataFrame, for_copy: bool) -> pd.DataFrame:
    """Values the DBAPI (or COPY) takes as they are: NaN -> None, JSON as text, times as text."""
    out = _converted(table, df, for_copy)
    return out.astype(object).where(out.notna(), None)


def _rows(table: sa.Table, df: pd.DataFrame) -> list[tuple[object, ...]]:
    """Rows for ``executemany``, built column by column (several times faster than
    ``itertuples`` over an object frame at a million rows)."""
    out = _converted(table, df, for_copy=False)
    columns = [out[name].to_numpy(dtype=object, na_value=None).tolist() for name in out.columns]
    return list(zip(*columns))


def _strftime(s: pd.Series, fmt: str) -> pd.Series:
    """Format each distinct time once (columns such as as-of dates repeat one value)."""
    codes, uniques = pd.factorize(s)
    text = np.asarray(pd.DatetimeIndex(uniques).strftime(fmt), dtype=object)
    return pd.Series(np.where(codes >= 0, text[codes] if len(text) else None, None), index=s.index,
                     dtype=object)


def _converted(table: sa.Table, df: pd.DataFrame, for_copy: bool) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for name in df.columns:
        col = table.c[name]
        s = df[name]
        if isinstance(col.type, sa.JSON):
            out[name] = s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                              else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str))
        elif isinstance(col.type, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(s):
            out[name] = _strftime(s, "%Y-%m-%d %H:%M:%S.%f" if for_copy else _SQLITE_TS)
        elif isinstance(col.type, sa.Date) and pd.api.types.is_datetime64_any_dtype(s):
            out[name] = _strftime(s, "%Y-%m-%d")
        elif isinstance(col.type, sa.Boolean) and not for_copy:
            out[name] = s.map(lambda v: None if v is None or v is pd.NA else int(bool(v)))
        else:
            out[name] = s
    return out


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
                touch: str | None = None) -> int:
    """Insert ``df`` into ``table``; with ``keys``, rows that conflict on them are updated
    (``update`` columns, only where a value differs; ``touch`` is then set to now) or left
    alone (no ``update``).

    Returns the number of rows inserted or changed. Runs inside the caller's transaction.
    """
    if df.empty:
        return 0
    cols = list(df.columns)
    quoted = ", ".join(f'"{c}"' for c in cols)
    if conn.dialect.name == "postgresql":
        return _write_postgres(conn, table, df, cols, quoted, keys, update, touch)
    conflict = _conflict_sql(table, keys, update, "IS NOT", touch) if keys else ""
    sql = f'INSERT INTO {table.name} ({quoted}) VALUES ({", ".join("?" * len(cols))}) {conflict}'
    rows = _rows(table, df)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    before = raw.total_changes  # type: ignore[attr-defined]
    raw.cursor().executemany(sql, rows)
    return int(raw.total_changes - before)  # type: ignore[attr-defined]


def _write_postgres(conn: Connection, table: sa.Table, df: pd.DataFrame, cols: list[str],
                    quoted: str, keys: Sequence[str] | None, update: Sequence[str] | None,
                    touch: str | None) -> int:
    tmp = f"_clm_load_{table.name}"
    conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} "
                         f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DROP")
    conn.exec_driver_sql(f"TRUNCATE {tmp}")
    buf = io.StringIO()
    _prepare(table, df, for_copy=True).to_csv(buf, index=False, header=False)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        with cur.copy(f"COPY {tmp} ({quoted}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buf.getvalue())
    conflict = _conflict_sql(table, keys, update, "IS DISTINCT FROM", touch) if keys else ""
    result = conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({quoted}) SELECT {quoted} FROM {tmp} {conflict}")
    return int(result.rowcount)
