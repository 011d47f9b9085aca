"""``clm demo``, ``clm run`` and ``clm limits``: the commands that run Prefect flows.

They live beside the flows, not in clm_core, which never imports Prefect. Prefect is imported
only inside the commands, after ``flows.runtime.configure`` has set its environment.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import datetime
from typing import Any

import click

from clm.context import App, pass_app
from clm_core.db.engine import describe

DATE = click.DateTime(formats=["%Y-%m-%d"])
TIME = click.DateTime(formats=["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"])


def ensure_signing_key(app: App) -> str | None:
    """The embedded default needs an HMAC key for unsubscribe links: keep a local one in
    ``.clm/secret-key`` (mode 0600, git-ignored). Returns its path when it is used."""
    name = app.settings.secret_key_env
    if os.environ.get(name):
        return None
    path = app.settings.project_dir / ".clm" / "secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    os.environ[name] = path.read_text().strip()
    return str(path)


def _port_open(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def _run_lifecycle(**params: Any) -> Any:
    from flows.runtime import configure

    configure()
    from flows.lifecycle import lifecycle

    return lifecycle(return_state=True, **params)


def _print_state(state: Any) -> None:
    colour = "green" if state.is_completed() else "red"
    click.secho(f"flow run {state.state_details.flow_run_id}: {state.type.value}: {state.message}", fg=colour)


def _drain_callbacks(server: Any, timeout: float = 60.0) -> None:
    """Wait until the sandbox has posted every callback it owes (or the timeout)."""
    deadline = time.monotonic() + timeout
    while server.store.callbacks.snapshot()["queued"] and time.monotonic() < deadline:
        time.sleep(0.2)


def _feedback_line(app: App) -> str:
    """What the providers reported back: delivery statuses, engagement, suppressions."""
    import sqlalchemy as sa

    from clm_core.db import tables as t

    with app.engine.connect() as conn:
        status = dict(conn.execute(sa.select(t.messages.c.delivery_status, sa.func.count())
                                   .where(t.messages.c.delivery_status.is_not(None))
                                   .group_by(t.messages.c.delivery_status)).all())
        events = dict(conn.execute(sa.select(t.events.c.event_type, sa.func.count())
                                   .where(t.events.c.event_type.in_(("opened", "clicked")))
                                   .group_by(t.events.c.event_type)).all())
        kinds = dict(conn.execute(sa.select(t.provider_events.c.kind, sa.func.count())
                                  .where(t.provider_events.c.kind.in_(
                                      ("complained", "unsubscribed")))
                                  .group_by(t.provider_events.c.kind)).all())
    parts = [f"{k} {status.get(k, 0):,}" for k in ("delivered", "bounced", "deferred",
                                                   "undelivered")]
    parts += [f"{k} {events.get(k, 0):,}" for k in ("opened", "clicked")]
    parts += [f"{k} {kinds.get(k, 0):,}" for k in ("unsubscribed", "complained")]
    return ", ".join(parts)


def _start_web(app: App) -> Any:
    """The web service beside the sandbox, so the links in the demo's messages answer. Its
    address becomes ``public_base_url`` unless the project set one."""
    from clm_core.settings import Settings
    from clm_core.web.app import create_app
    from clm_core.web.serving import BackgroundServer

    url = app.settings.public_base_url
    if url != Settings.public_base_url:
        click.echo(f"web        links point at the configured {url}")
        return None
    port = int(app.settings.section("web").get("demo_port", 8080))
    local = f"http://127.0.0.1:{port}"
    os.environ["CLM_PUBLIC_BASE_URL"] = local
    if _port_open(local):
        click.echo(f"web        using the web service already running at {local}")
        return None
    server = BackgroundServer(create_app(app.settings, app.engine), "127.0.0.1", port).start()
    click.echo(f"web        clm serve at {server.url}: unsubscribe, preferences and click links "
               "in the demo's messages")
    return server


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--sample", is_flag=True, help="The 2,357-customer CDNOW sample (faster).")
    @click.option("--as-of", type=DATE, default="1997-03-31", show_default=True,
                  help="Score the store as it stood on this day. The default, the end of the "
                       "CDNOW cohort's first quarter, has customers in every stage and journey.")
    @click.option("--faults", metavar="JSON", help='Sandbox faults to show failure handling, e.g. '
                  '\'{"rate_400": 0.05, "apis": ["sendgrid"]}\'.')
    @pass_app
    def demo(app: App, sample: bool, as_of: datetime, faults: str | None) -> None:
        """The whole job on the embedded default: CDNOW data, fit, score, journeys, sends to the
        local sandbox providers, all through the real `lifecycle` Prefect flow."""
        import json

        from clm_core.delivery.config import load_delivery_config
        from clm_core.delivery.sandbox import SandboxServer
        from clm_core.ingest.cdnow import import_cdnow
        from clm_core.reporting import summarize

        started = time.perf_counter()
        os.environ.setdefault("CLM_PROJECT_DIR", str(app.settings.project_dir))
        click.echo(f"database   {describe(app.settings.database_url)}")
        key_file = ensure_signing_key(app)
        if key_file:
            click.echo(f"signing    local key in {key_file} (set {app.settings.secret_key_env} in production)")
        report = import_cdnow(app.engine, sample=sample, prospects=300)
        click.echo(f"data       CDNOW{' sample' if sample else ''}: {report.customers:,} customers + "
                   f"{report.prospects} prospects, {report.orders:,} orders, {report.items:,} order lines")
        sandbox_url = load_delivery_config(app.settings).provider("email").base_url
        server = None
        if _port_open(sandbox_url):
            click.echo(f"providers  using the sandbox already running at {sandbox_url}")
        else:
            from urllib.parse import urlsplit

            u = urlsplit(sandbox_url)
            server = SandboxServer(u.hostname or "127.0.0.1", u.port or 8025, None)
            if faults:
                server.store.set_faults(json.loads(faults))
            server.start()
            click.echo(f"providers  sandbox at {server.url} (SendGrid, Twilio, Stripe ... over HTTP)")
        web = _start_web(app)
        click.echo(f"flow       running the `lifecycle` flow on Prefect's ephemeral API, scoring "
                   f"as of {as_of:%Y-%m-%d} ...")
        flow_started = time.perf_counter()
        try:
            if server and web:  # the sandbox reports back as providers do, signed
                server.store.callbacks.configure({"url": web.url, "seed": 7,
                                                  "delay_seconds": 0.5})
                click.echo(f"web        provider callbacks to {web.url}/hooks/...")
            state = _run_lifecycle(as_of=as_of.date())
            if server and web:
                _drain_callbacks(server)
        finally:
            stats = server.store.stats() if server else None
            if server:
                server.stop()
            if web:
                web.stop()
        flow_seconds = time.perf_counter() - flow_started
        s = summarize(app.engine)
        click.echo("")
        click.echo("stages     " + ", ".join(f"{k} {v:,}" for k, v in s.stages.items()))
        click.echo("outbox     " + ", ".join(f"{k} {v:,}" for k, v in sorted(s.by_status.items())))
        for (journey, channel, status), n in sorted(s.created.items()):
            click.echo(f"  {journey:<18} {channel:<6} {status:<9} {n:>7,}")
        if stats:
            click.echo(f"sandbox    {stats['requests']:,} requests received, {stats['duplicates']} duplicate sends")
        click.echo("feedback   " + _feedback_line(app))
        _print_state(state)
        click.echo(f"done in {time.perf_counter() - started:.1f}s (flow {flow_seconds:.1f}s)")
        click.echo("next       clm status | clm plan | clm preview JOURNEY --customer ID | "
                   f"PREFECT_HOME={os.environ.get('PREFECT_HOME')} prefect server start  (UI: flow run, Artifacts tab)")

    @cli.command("run")
    @click.option("--as-of", type=DATE, help="Scoring date (default: the newest order's day).")
    @click.option("--now", type=TIME, help="Journey and dispatch clock (default: now, UTC).")
    @click.option("--no-dispatch", is_flag=True, help="Plan messages but send nothing.")
    @pass_app
    def run_(app: App, as_of: datetime | None, now: datetime | None, no_dispatch: bool) -> None:
        """Run the `lifecycle` flow now against the configured database."""
        os.environ.setdefault("CLM_PROJECT_DIR", str(app.settings.project_dir))
        os.environ["CLM_DATABASE_URL"] = app.settings.database_url
        app.engine  # migrate before the flow starts  # noqa: B018
        state = _run_lifecycle(as_of=as_of.date() if as_of else None, now=now, dispatch=not no_dispatch)
        _print_state(state)
        if not state.is_completed():
            raise SystemExit(1)

    @cli.command("limits")
    @pass_app
    def limits(app: App) -> None:
        """Create or update the Prefect global rate limits of each provider (shared by every
        flow run and worker). Needs a Prefect server (PREFECT_API_URL)."""
        from tasks.limits import apply_limits

        for name, limit, decay in apply_limits(app.settings):
            click.echo(f"{name}: {limit} slots, {decay}/s")


