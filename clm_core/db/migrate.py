"""Alembic migrations, run in code: ``clm db upgrade`` and every command that needs the schema."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from clm_core.db.engine import describe, ensure_database_exists, make_engine
from clm_core.errors import DatabaseError

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; a no-op when already there."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    try:
        command.upgrade(alembic_config(engine), revision)
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"migrating {describe(str(engine.url))} failed: {exc}") from exc


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def open_database(url: str) -> Engine:
    """An engine on a database whose schema is at head, created if needed."""
    ensure_database_exists(url)
    engine = make_engine(url)
    try:
        upgrade(engine)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot open {describe(url)}: {exc.orig}") from exc
    return engine
