"""Schema, migrations and bulk writes on both databases."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
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
