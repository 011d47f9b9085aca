"""Fresh, migrated databases for tests and benchmarks, on SQLite and PostgreSQL.

Each backend migrates one template once; every test then gets a copy (a file copy on SQLite,
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL), so tests are isolated and parallel runs
(several checkouts, pytest-xdist) never share a database.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from clm_core.db.engine import make_engine
from clm_core.db.migrate import open_database

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def pg_admin_url() -> str:
    return os.environ.get("CLM_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)


class DatabaseFactory:
    """Creates migrated databases of one backend from a template."""

    def __init__(self, backend: str, workdir: Path):
        self.backend = backend
        self.workdir = workdir
        self.token = uuid.uuid4().hex[:8]
        self._count = 0
        self._template: str | None = None

    def _admin(self) -> sa.Engine:
        return make_engine(pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def _pg_url(self, name: str) -> str:
        return make_url(pg_admin_url()).set(database=name).render_as_string(hide_password=False)

    def template(self) -> str:
        if self._template is None:
            if self.backend == "sqlite":
                url = f"sqlite:///{self.workdir / 'template.db'}"
            else:
                url = self._pg_url(f"clm_tmpl_{self.token}")
            open_database(url).dispose()
            self._template = url
        return self._template

    def create(self) -> str:
        """A new migrated database; returns its URL."""
        template = self.template()
        self._count += 1
        if self.backend == "sqlite":
            path = self.workdir / f"db{self._count}.db"
            src = Path(make_url(template).database or "")
            shutil.copyfile(src, path)
            return f"sqlite:///{path}"
        name = f"clm_t_{self.token}_{self._count}"
        admin = self._admin()
        with admin.connect() as conn:
            conn.execute(
                sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(template).database}"')
            )
        admin.dispose()
        return self._pg_url(name)

    def drop(self, url: str) -> None:
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(make_url(url).database) + suffix).unlink(missing_ok=True)
            return
        admin = self._admin()
        with admin.connect() as conn:
            conn.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
            )
        admin.dispose()

    def close(self) -> None:
        if self._template is not None:
            self.drop(self._template)
        if self.backend == "sqlite":
            shutil.rmtree(self.workdir, ignore_errors=True)


def postgres_reachable() -> bool:
    try:
        engine = make_engine(pg_admin_url(), poolclass=sa.pool.NullPool)
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
