"""What every command shares: settings, the database, and error reporting."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import click
from sqlalchemy.engine import Engine

from clm_core.errors import ClmError
from clm_core.settings import Settings, load_settings


class App:
    """Lazily resolved settings and database for one invocation."""

    def __init__(self, database_url: str | None = None, project_dir: str | None = None):
        self._database_url = database_url
        self._project_dir = project_dir

    @cached_property
    def settings(self) -> Settings:
        s = load_settings(self._project_dir)
        return s.with_database(self._database_url) if self._database_url else s

    @cached_property
    def engine(self) -> Engine:
        """The database, migrated to the current schema first."""
        from clm_core.db.migrate import open_database

        return open_database(self.settings.database_url)


pass_app = click.make_pass_decorator(App)


class ClmGroup(click.Group):
    """Turns CLM's own errors into one clear line and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClmError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)
