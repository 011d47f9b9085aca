"""``clm run`` and ``clm limits``, and what every command that runs a Prefect flow shares.

They live beside the flows, not in clm_core, which never imports Prefect. Prefect is imported
only inside the commands, after ``flows.runtime.configure`` has set its environment. Before a
flow starts, the project is checked (stage rules, journeys, providers, the signing key) so a
mistake fails at once with one line, not minutes later inside a task; Prefect's own console
output goes to the project's log file, and the command prints one line for the outcome.
"""

from __future__ import annotations

import importlib
import os
from datetime import datetime
from typing import Any

import click

from clm.context import App, pass_app
from clm.logs import divert_prefect_console
from clm_core.errors import ClmError

DATE = click.DateTime(formats=["%Y-%m-%d"])
TIME = click.DateTime(formats=["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"])


def preflight(app: App, dispatch: bool) -> None:
    """Everything a flow would read from the project, read now: ClmError on the first problem
    (bad clm.toml, missing or invalid stage rules or journeys, unknown provider, no key)."""
    from clm_core.delivery.config import load_delivery_config
    from clm_core.delivery.unsubscribe import signing_key
    from clm_core.journeys.store import load_journeys, project_policy
    from clm_core.lifecycle.pipeline import LifecycleConfig

    settings = app.settings
    LifecycleConfig.from_settings(settings).load_rules()
    load_journeys(settings.journeys_dir, project_policy(settings.section("journeys")))
    load_delivery_config(settings)
    if dispatch:
        signing_key(settings)


def load_flow(app: App, module: str, name: str) -> Any:
    """The flow ``name`` of ``flows.<module>``, with Prefect set up for this project and its
    console output diverted to the log file."""
    os.environ["CLM_PROJECT_DIR"] = str(app.settings.project_dir)
    os.environ["CLM_DATABASE_URL"] = app.settings.database_url
    from flows.runtime import configure

    configure(app.settings.project_dir)
    flow = getattr(importlib.import_module(f"flows.{module}"), name)
    divert_prefect_console(app.log_path)
    return flow


def call_flow(flow: Any, **params: Any) -> Any:
    """Run ``flow`` and return its final state; Prefect's local API failing to start (it
    migrates its database on first use, slow on a busy machine) becomes one clear error."""
    try:
        return flow(return_state=True, **params)
    except RuntimeError as exc:
        if "ephemeral Prefect API" not in str(exc):
            raise
        wait = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "?")
        raise ClmError(f"Prefect's local API did not start within {wait} s (a busy machine?): "
                       "run the command again, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_"
                       "SECONDS, or start `prefect server start` and set PREFECT_API_URL") from exc


def failure(state: Any) -> str:
    """Why a flow run failed, in one line: the CLM error that stopped it, or its message."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001  (a result that cannot be read is the cause)
        result = exc
    if isinstance(result, ClmError):
        return str(result)
    return str(state.message or state.type.value)


def finish(app: App, state: Any) -> None:
    """Print the run's outcome; a failed run exits 1 with one line and the log's path."""
    run_id = state.state_details.flow_run_id
    if state.is_completed():
        click.secho(f"flow run {run_id}: {state.message}", fg="green")
        return
    click.secho(f"error: flow run {run_id} {state.type.value.lower()}: {failure(state)} "
                f"(details in {app.log_path})", fg="red", err=True)
    raise SystemExit(1)


def register(cli: click.Group) -> None:
    @cli.command("run")
    @click.option("--as-of", type=DATE, help="Scoring date (default: see below).")
    @click.option("--now", type=TIME, help="Journey and dispatch clock, UTC (default: see below).")
    @click.option("--fit", "fit_id", type=click.IntRange(1), metavar="ID",
                  help="Score with this fit (default: the newest whose data ends on or before "
                       "the as-of day; refitted when none is fresh enough).")
    @click.option("--no-dispatch", is_flag=True, help="Plan messages but send nothing.")
    @pass_app
    def run_(app: App, as_of: datetime | None, now: datetime | None, fit_id: int | None,
             no_dispatch: bool) -> None:
        """Run the `lifecycle` flow now against the configured database.

        Prints the as-of day and the clock it runs with, and why: given; after a simulated run
        (clm demo), the next day on that clock; else the newest order's day (never after the
        clock) and the wall clock.
        """
        from clm_core.simclock import choose

        preflight(app, dispatch=not no_dispatch)
        clock, simulated = choose(app.engine, as_of, now)
        for line in clock.describe():
            click.echo(line)
        lifecycle = load_flow(app, "lifecycle", "lifecycle")
        state = call_flow(lifecycle, as_of=clock.as_of, now=clock.now, fit_id=fit_id,
                          dispatch=not no_dispatch, simulated=simulated)
        finish(app, state)

    @cli.command("limits")
    @pass_app
    def limits(app: App) -> None:
        """Create or update the Prefect global rate limits of each provider (shared by every
        flow run and worker). Needs a Prefect server (PREFECT_API_URL)."""
        from tasks.limits import apply_limits

        for name, limit, decay in apply_limits(app.settings):
            click.echo(f"{name}: {limit} slots, {decay}/s")
