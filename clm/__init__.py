"""The ``clm`` command: the application layer.

It sits above everything else: it may import ``clm_core`` (the domain), ``tasks`` and ``flows``
(the Prefect orchestration), while ``clm_core`` imports none of them and ``tasks`` never imports
``flows``. Each area registers its commands from its own module here.
"""

from __future__ import annotations

import importlib
import sys

import click

from clm.context import ClmGroup, pass_app  # noqa: F401  (re-exported for modules)

# Modules of this package that add commands: each defines ``register(cli: click.Group) -> None``.
# ``flows`` and ``demo`` hold the commands that run Prefect flows (run, limits, demo).
COMMAND_MODULES = ["project", "db", "data", "ops", "lifecycle", "journeys", "delivery", "consent",
                   "web", "measure", "loyalty", "backtest", "recommend", "flows", "demo",
                   "simulate"]


@click.group(cls=ClmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database", "database_url", envvar="CLM_DATABASE_URL", metavar="URL",
              help="Database URL (default: CLM_DATABASE_URL, clm.toml, or clm.db in the project).")
@click.option("--project", "project_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Project directory with clm.toml, journeys/ and templates/ (default: the "
                   "current directory or the nearest parent with clm.toml; CLM_PROJECT_DIR).")
@click.version_option(package_name="clm")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, project_dir: str | None) -> None:
    """CLM: customer lifecycle stages, CLV, journeys and reliable delivery.

    Start with `clm init DIR` (a new store's project), then `cd DIR && clm demo`.
    """
    from clm.context import App

    ctx.obj = App(database_url=database_url, project_dir=project_dir)


for _name in COMMAND_MODULES:
    importlib.import_module(f"clm.{_name}").register(cli)


def main() -> None:
    sys.exit(cli.main(standalone_mode=True))
