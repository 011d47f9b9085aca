"""What every task needs, rebuilt inside the task's own process (threads, Dask workers).

Tasks take small, serialisable arguments (a database URL, a project directory, dates, id
ranges), never engines or DataFrames: Prefect walks every argument, and a Dask worker may be
another machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from clm_core.db.engine import make_engine
from clm_core.settings import Settings, load_settings


@dataclass(frozen=True)
class Target:
    """Which project and database a flow works on."""

    database_url: str
    project_dir: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "Target":
        return cls(settings.database_url, str(settings.project_dir))

    def settings(self) -> Settings:
        return load_settings(self.project_dir).with_database(self.database_url)


@contextmanager
def opened(target: Target) -> Iterator[tuple[Settings, Engine]]:
    settings = target.settings()
    engine = make_engine(settings.database_url)
    try:
        yield settings, engine
    finally:
        engine.dispose()
