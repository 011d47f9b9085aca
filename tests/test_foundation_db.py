"""Schema, migrations and bulk writes on both databases."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.db.engine import DEAD_CLIENT_CHECK_MS
from clm_core.db.migrate import current_revision, head_revision, open_database


def test_migrations_match_the_tables(engine: sa.Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}),
                                t.metadata)
    assert diff == []


def test_open_database_is_idempotent(db_url: str) -> None:
    open_database(db_url).dispose()
    eng = open_database(db_url)
    assert current_revision(eng) == head_revision()
    eng.dispose()


def test_sqlite_runs_in_wal_mode(engine: sa.Engine) -> None:
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


PROBE = "clm-dead-client-probe"
# A client that opens a connection the way every command does and runs a long statement.
LONG_STATEMENT = f"""
import sys
from clm_core.db.engine import make_engine
with make_engine(sys.argv[1]).connect() as conn:
    conn.exec_driver_sql("SELECT '{PROBE}', pg_sleep(120)")
"""


def _probes(conn: sa.Connection) -> list[int]:
    return [r[0] for r in conn.exec_driver_sql(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE %(q)s AND pid <> pg_backend_pid()",
        {"q": f"%{PROBE}', pg_sleep%"})]


def test_postgres_ends_the_statement_of_a_killed_client(engine: sa.Engine) -> None:
    """A run killed mid-statement leaves no backend working on: it would hold its locks and
    the next night's run would wait behind it."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite's statements run in the client's own process")
    url = engine.url.render_as_string(hide_password=False)
    client = subprocess.Popen([sys.executable, "-c", LONG_STATEMENT, url],
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        # In autocommit: within one transaction pg_stat_activity would stay as first read.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            deadline = time.monotonic() + 30
            while not _probes(conn):
                assert client.poll() is None and time.monotonic() < deadline, \
                    "the client never started its statement"
                time.sleep(0.1)
            client.kill()
            client.wait()
            gone_at = time.monotonic()
            limit = DEAD_CLIENT_CHECK_MS / 1000 + 10
            while _probes(conn):
                assert time.monotonic() - gone_at < limit, \
                    f"the statement still runs {limit:.0f} s after its client was killed"
                time.sleep(0.2)
    finally:
        client.kill()


def test_upsert_changes_only_rows_that_differ(engine: sa.Engine) -> None:
    df = pd.DataFrame({"external_id": ["a", "b"], "name": ["Ann", "Bob"],
                       "attributes": [{"tier": "gold"}, None]})
    with engine.begin() as conn:
        assert (
            write_frame(conn, t.customers, df, keys=["external_id"], update=["name", "attributes"])
            == 2
        )
    with engine.begin() as conn:
        assert (
            write_frame(conn, t.customers, df, keys=["external_id"], update=["name", "attributes"])
            == 0
        )
    df.loc[1, "name"] = "Robert"
    with engine.begin() as conn:
        assert (
            write_frame(conn, t.customers, df, keys=["external_id"], update=["name", "attributes"])
            == 1
        )
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(t.customers.c.external_id, t.customers.c.name)).all())
        attrs = conn.scalar(
            sa.select(t.customers.c.attributes).where(t.customers.c.external_id == "a")
        )
    assert rows == {"a": "Ann", "b": "Robert"}
    assert attrs == {"tier": "gold"}
