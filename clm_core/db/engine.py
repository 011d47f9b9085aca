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


# How often a PostgreSQL backend running a long statement checks that its client is still there.
DEAD_CLIENT_CHECK_MS = 5000


def _postgres_session(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    """Have the server end a statement whose client has gone (PostgreSQL 14 and later).

    Why: a nightly run killed mid-statement (an operator's kill, a container stopped, the
    machine's out-of-memory killer) otherwise leaves its backend running the statement to the
    end; a features query or a bulk write at a million customers then holds its locks, CPU and
    memory for many minutes after the client is gone, and the next run waits behind it. A
    timeout on statements would also end the long ones that are still wanted. Committed at
    once: a SET in a transaction that is rolled back is undone.
    """
    if dbapi_conn.info.server_version < 140000:
        return
    with dbapi_conn.cursor() as cur:
        cur.execute(f"SET client_connection_check_interval = {DEAD_CLIENT_CHECK_MS}")
    dbapi_conn.commit()


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine for ``url``; SQLite connections get WAL and foreign keys, PostgreSQL's end a
    statement whose client has gone."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)  # type: ignore[arg-type]
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = sa.create_engine(url, **{"pool_pre_ping": True, **kwargs})  # type: ignore[arg-type]
    sa.event.listen(engine, "connect", _postgres_session)
    return engine


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


def tune_writer(engine: Engine, *, checkpoint_pages: int, cache_mib: int) -> None:
    """On SQLite, fit ``engine``'s connections to a writer of many small transactions (the web
    service storing provider callbacks): the write-ahead log grows to ``checkpoint_pages``
    pages before a commit copies it into the database file (SQLite's default is 1,000), and
    each connection caches ``cache_mib`` MiB of pages (the default is 2). Nothing on
    PostgreSQL.

    Why: a checkpoint ends in an fsync of the database file, paid by the commit that triggers
    it, and an index page that changes in every commit is copied at every checkpoint; at
    10,000 pages (40 MB of log at most) that happens a tenth as often. Storing events with
    random ids touches pages all over their indexes; with a 2 MiB cache most of them are read
    from the file again for each batch. Readers find pages in the log through its index, so a
    longer log costs them nothing noticeable.
    """
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _tune(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint_pages)}")
        dbapi_conn.execute(f"PRAGMA cache_size={-1024 * int(cache_mib)}")


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
