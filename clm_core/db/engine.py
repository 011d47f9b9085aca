"""Engines for SQLite (embedded default, WAL mode) and PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from clm_core.errors import DatabaseError
from clm_core.settings import normalize_database_url


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets readers (status, plan) run while a writer (score, dispatch) works.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine for ``url``; SQLite connections get WAL and foreign keys."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)  # type: ignore[arg-type]
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)  # type: ignore[arg-type]


def take_write_lock(conn: sa.Connection) -> None:
    """On SQLite, start ``conn``'s transaction as ``BEGIN IMMEDIATE`` (call it first): a
    transaction that reads and then writes must hold the write lock from its start. In WAL
    mode a reader that tries to write after another connection committed (a webhook batch,
    a dispatcher) fails at once with "database is locked", whatever the busy timeout; with the
    lock taken first it waits its turn instead. Nothing on PostgreSQL (row locks)."""
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")


@contextmanager
def references_trusted(conn: sa.Connection) -> Iterator[None]:
    """On SQLite, no foreign key checks for the transaction begun inside (enter it before the
    transaction starts: SQLite ignores the pragma within one); they are on again after it.

    For a writer whose every reference is to a row it read in the same transaction while
    holding the write lock (``take_write_lock``), so that no one can have deleted it: the
    checks cannot fail, and on a bulk write they cost as much as the insert itself (a lookup
    in each parent table per row). PostgreSQL keeps its checks (a bulk write validates them
    once, in one join)."""
    raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
    if raw is None or raw.in_transaction:
        yield
        return
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def describe(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(normalize_database_url(url)).render_as_string(hide_password=True)


def ensure_database_exists(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` if it is missing (SQLite creates files)."""
    u = make_url(normalize_database_url(url))
    if not u.drivername.startswith("postgresql") or not u.database:
        return
    admin = make_engine(u.set(database="postgres").render_as_string(hide_password=False),
                        isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": u.database})
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{u.database}"'))
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot reach PostgreSQL at {describe(url)}: "
                            f"{str(exc.orig).strip().splitlines()[0]}") from exc
    finally:
        admin.dispose()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
