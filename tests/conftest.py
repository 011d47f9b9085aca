"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

``CLM_TEST_BACKENDS=sqlite`` limits a local run to SQLite; CI runs both and fails, rather than
skips, when PostgreSQL is unreachable.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.db.engine import make_engine
from clm_core.settings import Settings, load_settings
from clm_core.testing import DatabaseFactory, pg_admin_url, postgres_reachable

REPO = Path(__file__).resolve().parent.parent
BACKENDS = [b for b in os.environ.get("CLM_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="clm-prefect-home-"))
os.environ.setdefault("CLM_SECRET_KEY", "test-secret-key-not-for-production")


@pytest.fixture(scope="session")
def db_factories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DatabaseFactory]]:
    factories: dict[str, DatabaseFactory] = {}
    for backend in BACKENDS:
        if backend == "postgresql" and not postgres_reachable():
            pytest.exit(
                f"PostgreSQL is not reachable at {pg_admin_url()}: start it with "
                "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
                "or set CLM_TEST_BACKENDS=sqlite",
                returncode=3,
            )
        factories[backend] = DatabaseFactory(backend, tmp_path_factory.mktemp(f"db-{backend}"))
    yield factories
    for factory in factories.values():
        factory.close()


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, db_factories: dict[str, DatabaseFactory]
) -> Iterator[str]:
    """URL of a fresh, migrated database; the test runs once per backend."""
    factory = db_factories[request.param]
    url = factory.create()
    yield url
    factory.drop(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for the repo's journeys and templates on the test database."""
    return load_settings(REPO, env={"CLM_DATABASE_URL": db_url,
                                    "CLM_SECRET_KEY": os.environ["CLM_SECRET_KEY"]})
