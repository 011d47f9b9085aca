"""What every command shares: the project, settings, the database, and error reporting.

A command finds its project the way git finds a repository: ``--project DIR`` (or
``CLM_PROJECT_DIR``), else the nearest directory from the working directory upwards that holds
``clm.toml``. Commands that work on a project resolve it before doing anything else, so outside
one they fail at once with a line that says what to do; ``clm init``, ``clm sandbox`` and
``--help`` need none.

Errors: a CLM error (``clm_core.errors.ClmError``) prints as one line and exits 1; anything else
prints one line naming the log file, where the traceback goes (``.clm/logs/clm.log`` in the
project). Neither prints a traceback (``CLM_DEBUG=1`` re-raises, for developers).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import Engine

from clm.logs import log_exception, log_file
from clm_core.errors import ClmError, ConfigError
from clm_core.settings import CONFIG_FILE, Settings, find_project, load_settings, redact


class App:
    """Lazily resolved project, settings and database for one invocation."""

    def __init__(self, database_url: str | None = None, project_dir: str | None = None):
        self._database_url = database_url
        self._project_dir = project_dir
        self._resolved: Path | None = None

    @cached_property
    def project_dir(self) -> Path:
        """The project's directory; ConfigError with what to do when there is none."""
        given, source = self._project_dir, "--project"
        if not given and os.environ.get("CLM_PROJECT_DIR"):
            given, source = os.environ["CLM_PROJECT_DIR"], "CLM_PROJECT_DIR"
        if given:
            root = Path(given).resolve()
            if not (root / CONFIG_FILE).is_file() and not os.environ.get("CLM_CONFIG"):
                raise ConfigError(f"{source} {given}: no {CONFIG_FILE} there; create a project "
                                  f"with `clm init {given}`")
        else:
            found = find_project(Path.cwd())
            if found is None and not os.environ.get("CLM_CONFIG"):
                raise ConfigError(f"not in a CLM project: no {CONFIG_FILE} in {Path.cwd()} or "
                                  "any parent; create one with `clm init DIR` and cd into it, "
                                  "or pass --project DIR")
            root = found or Path.cwd().resolve()
        self._resolved = root
        return root

    @property
    def log_path(self) -> Path:
        """The project's log file once the project is known, else the user's."""
        return log_file(self._resolved)

    @cached_property
    def settings(self) -> Settings:
        s = load_settings(self.project_dir)
        return s.with_database(self._database_url) if self._database_url else s

    @cached_property
    def engine(self) -> Engine:
        """The database, migrated to the current schema first."""
        from clm_core.db.migrate import open_database

        return open_database(self.settings.database_url)


F = TypeVar("F", bound=Callable[..., Any])


def pass_app(f: F) -> F:
    """Pass the ``App`` as first argument, after resolving the project: a command that works
    on a project fails before any work when there is none."""

    @click.pass_context
    def wrapper(ctx: click.Context, /, *args: Any, **kwargs: Any) -> Any:
        app = ctx.find_object(App)
        assert app is not None, "the clm group creates the App"
        app.settings  # noqa: B018  (resolve the project and read clm.toml now)
        return ctx.invoke(f, app, *args, **kwargs)

    return functools.update_wrapper(wrapper, f)  # type: ignore[return-value]


class ClmGroup(click.Group):
    """Turns errors into one clear line and exit status 1, with the details in the log."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                KeyboardInterrupt, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (`clm ... | head`): nothing to say
            ctx.exit(1)
        except Exception as exc:
            if os.environ.get("CLM_DEBUG"):
                raise
            app = ctx.find_object(App)
            path = log_exception(exc, app.log_path if app else log_file(None))
            if isinstance(exc, ClmError):
                click.secho(f"error: {exc}", fg="red", err=True)
            else:
                first = (str(exc).strip().splitlines() or [""])[0]
                click.secho(f"error: unexpected {type(exc).__name__}: {redact(first)} "
                            f"(traceback in {path})", fg="red", err=True)
            ctx.exit(1)
