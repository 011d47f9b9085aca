"""``clm demo``: the whole loop on the real CDNOW store, in the data's own time.

It loads CDNOW (real 1997-1998 purchase histories, fake contacts), starts the sandbox
providers, and runs the daily ``lifecycle`` flow on a simulated clock: weekly steps through
1997, each scoring the store as of a day and running the journeys the next morning, so that
stage changes enter customers into journeys, waits end, and the orders that really followed
reach the journeys' goals. Then it tells the store owner what happened: what was sent to whom
and why, what was held back, who bought, treated against control, and what is still waiting.
Every figure is read back from the database (``clm status`` shows the same runs).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import click

from clm.context import App, pass_app
from clm.flows import DATE, call_flow, finish, load_flow, preflight
from clm_core.errors import ConfigError

START = "1997-03-31"  # the CDNOW cohort's first quarter has ended: every buyer is known
WEEKS = 13


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if t else "?"


def _entry_words(journey: Any) -> str:
    entry = journey.spec.entry
    if entry.stage is not None:
        return f"when they became {entry.stage.to.replace('_', ' ')}"
    if entry.event is not None:
        return f"on a {entry.event.type} event"
    return "when they matched its audience"


def _start_sandbox(app: App, faults: str | None) -> tuple[Any, str]:
    from clm_core.delivery.config import load_delivery_config
    from clm_core.delivery.sandbox import SandboxServer

    url = load_delivery_config(app.settings).provider("email").base_url
    fault_spec = None
    if faults:
        try:
            fault_spec = json.loads(faults)
        except ValueError as exc:
            raise ConfigError(f"--faults: not JSON: {exc}") from exc
    if _port_open(url):
        return None, f"using the sandbox already running at {url}"
    u = urlsplit(url)
    server = SandboxServer(u.hostname or "127.0.0.1", u.port or 8025, None)
    if fault_spec:
        try:
            server.store.set_faults(fault_spec)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--faults: {exc}") from exc
    server.start()
    return server, f"sandbox at {server.url} (SendGrid, Twilio, Stripe ... over HTTP)"


def tell(app: App, first: date, weeks: int) -> None:
    """The store owner's account of the simulation, from the database."""
    from clm_core.journeys.outcomes import (
        engagement_outcomes,
        journey_outcomes,
        reason_words,
        sent_examples,
        simulated_steps,
    )
    from clm_core.journeys.store import load_journeys, project_policy
    from clm_core.reporting import summarize

    engine = app.engine
    steps = [s for s in simulated_steps(engine) if s.as_of >= f"{first}"][-weeks:]
    click.echo("\nWeek by week (each: score as of the day, journeys and sends the next morning):")
    click.echo(f"  {'as of':<10}  {'clock (UTC)':<16}  {'stage changes':>13}  {'entered':>8}  "
               f"{'sent':>7}  {'bought':>7}  {'run took':>8}")
    for s in steps:
        took = f"{s.seconds:.1f}s" if s.seconds is not None else "-"
        click.echo(f"  {s.as_of:<10}  {_when(s.now):<16}  {s.transitions:>13,}  {s.entered:>8,}  "
                   f"{s.sent:>7,}  {s.converted:>7,}  {took:>8}"
                   + ("" if s.status == "completed" else f"  ({s.status})"))
    summary = summarize(engine)
    click.echo("\nCustomers by stage now: " + ", ".join(
        f"{k.replace('_', ' ')} {v:,}" for k, v in summary.stages.items()))

    journeys = {j.name: j for j in load_journeys(app.settings.journeys_dir,
                                                 project_policy(app.settings.section("journeys")))}
    click.echo("\nWhat each journey did (bought = reached the journey's goal while in it; "
               "converted, where a goal is an event such as a click):")
    for o in journey_outcomes(engine):
        j = journeys.get(o.journey)
        about = f" - {j.spec.description}" if j is not None and j.spec.description else ""
        click.echo(f"\n  {o.journey}{about}")
        total = o.treated.entered + o.control.entered
        how = _entry_words(j) if j is not None else ""
        click.echo(f"    entered   {total:,} customers {how}".rstrip()
                   + (f"; {o.control.entered:,} of them kept as a control group (no messages)"
                      if o.control.entered else ""))
        if o.sent:
            click.echo(f"    sent      {sum(o.sent.values()):,}: " + ", ".join(
                f"{n:,} {name}" for name, n in sorted(o.sent.items(), key=lambda kv: -kv[1])))
        held = {k: v for k, v in o.held.items() if k != "control_group"}
        if held:
            click.echo(f"    not sent  {sum(held.values()):,}: " + "; ".join(
                f"{n:,} {reason_words(r)}" for r, n in sorted(held.items(), key=lambda kv: -kv[1])))
        if o.failed:
            click.echo(f"    failed    {o.failed:,} (clm status lists them)")
        lo, hi = o.treated.interval
        # a goal that is an event (a click) is no purchase: say "converted" for such journeys
        word = "converted" if j is not None and any(g.event for g in j.spec.goals) else "bought"
        click.echo(f"    {word:<9} {o.treated.converted:,} of {o.treated.entered:,} who got the "
                   f"messages: {_pct(o.treated.rate)} (95% Wilson interval {_pct(lo)}-{_pct(hi)})")
        diff = o.difference
        if diff is not None:
            d, dlo, dhi = diff
            clo, chi = o.control.interval
            verdict = ("the journey made a difference" if dlo > 0 else
                       "the journey did worse" if dhi < 0 else
                       "no evidence yet that the journey changes buying (the interval includes 0)")
            click.echo(
                f"    control   {o.control.converted:,} of {o.control.entered:,}: "
                f"{_pct(o.control.rate)} ({_pct(clo)}-{_pct(chi)}); difference "
                f"{100 * d:+.1f} points (Newcombe 95% {100 * dlo:+.1f} to {100 * dhi:+.1f}): "
                f"{verdict}"
            )
        for reason, (n, first_at, last_at) in sorted(o.waiting.items()):
            click.echo(f"    waiting   {n:,} messages {reason_words(reason or None)}, "
                       f"due {_when(first_at)} to {_when(last_at)}")
        if o.in_progress and o.next_due:
            click.echo(f"    ongoing   {o.in_progress:,} customers are still in the journey; "
                       f"their next steps are due {_when(o.next_due[0])} to {_when(o.next_due[1])}")

    branches, goals = engagement_outcomes(engine, journeys.values())
    if branches or goals:
        click.echo("\nWhat the opens and clicks the providers reported changed:")
        for b in branches:
            routes = [f"{n:,} {b.event} an email within {b.within} and took {step}"
                      + (f" ({template})" if template else "") for step, template, n in b.taken]
            if b.otherwise is not None:
                step, template, n = b.otherwise
                routes.append(f"{n:,} did not and took {step}"
                              + (f" ({template})" if template else ""))
            click.echo(f"  {b.journey}: branch {b.step!r}: " + "; ".join(routes))
        for g in goals:
            click.echo(f"  {g.journey}: {g.reached:,} of {g.entered:,} reached the goal {g.goal!r} "
                       f"(a {g.event} event reported by the provider)")

    examples = sent_examples(engine)
    if examples:
        click.echo("\nFor example, what was sent to whom and why:")
        for e in examples:
            stage = f", stage now {e.stage.replace('_', ' ')}" if e.stage else ""
            j = journeys.get(e.journey)
            why = f"entered {e.journey} {_entry_words(j)}" if j is not None else e.journey
            click.echo(
                f"  {_when(e.sent_at)}  {e.channel} {e.template!r} to {e.name or e.customer} "
                f"({e.customer}): {why} on {e.entered_at:%Y-%m-%d}{stage}"
            )


class StepClock:
    """What time the sandbox's providers say their events happened during a simulation: the
    simulated clock of the lifecycle run in progress, plus the wall time since it started.

    Providers stamp opens and clicks with their own clock. On a simulated clock in 1997 the
    wall clock's stamps would lie decades after every run, where no journey looks, so a
    branch on ``opened within 7d`` or a ``clicked`` goal could never fire; stamped this way
    an open lands just after the send it answers, on the clock the next run reads. The run
    in progress is the newest of the simulation's ``lifecycle`` runs (one per step, in order),
    read at most every half second.
    """

    def __init__(self, engine: Any, step_times: list[datetime], since: datetime) -> None:
        self.engine = engine
        self.step_times = step_times  # each step's clock, naive UTC
        self.since = since  # wall clock (naive UTC) before the simulation's first run
        self._cached: tuple[float, int, datetime | None] = (-1.0, 0, None)
        self._lock = threading.Lock()

    def _current(self) -> tuple[int, datetime | None]:
        import sqlalchemy as sa

        from clm_core.db import tables as t

        with self._lock:
            at, k, started = self._cached
            if time.monotonic() - at > 0.5:
                r = t.runs
                with self.engine.connect() as conn:
                    row = conn.execute(sa.select(sa.func.count(), sa.func.max(r.c.started_at))
                                       .where(r.c.kind == "lifecycle",
                                              r.c.started_at >= self.since)).one()
                k, started = int(row[0] or 0), row[1]
                self._cached = (time.monotonic(), k, started)
            return k, started

    def __call__(self) -> float:
        from clm_core.runs import utcnow

        k, started = self._current()
        step = self.step_times[min(max(k, 1), len(self.step_times)) - 1]
        elapsed = (utcnow() - started) if started is not None else timedelta(0)
        return (step + max(elapsed, timedelta(0))).replace(tzinfo=UTC).timestamp()


def _drain_callbacks(server: Any, timeout: float = 60.0) -> None:
    """Wait until the sandbox has posted every callback it owes (or the timeout)."""
    deadline = time.monotonic() + timeout
    while server.store.callbacks.snapshot()["queued"] and time.monotonic() < deadline:
        time.sleep(0.2)


@contextmanager
def live_providers(app: App, faults: str | None,
                   clock: Callable[[], float] | None = None) -> Iterator[dict[str, Any]]:
    """The sandbox providers (started unless one runs at the configured URL) and ``clm serve``'s
    app answering their signed callbacks, as in production, for the body of the ``with``;
    afterwards the sandbox's owed callbacks are drained and its counts left in the dict
    (``stats``, None for a sandbox this command did not start). ``clock`` is the time the
    callbacks' events carry (default: the wall clock; see ``StepClock``)."""
    from clm_core.settings import Settings
    from clm_core.web.app import create_app
    from clm_core.web.serving import BackgroundServer

    settings = app.settings
    out: dict[str, Any] = {"stats": None}
    server, where = _start_sandbox(app, faults)
    click.echo(f"providers  {where}")
    try:
        web = BackgroundServer(create_app(settings, app.engine)).start()
        try:
            web_url = web.url
            if settings.public_base_url == Settings.public_base_url:
                # unconfigured: the demo's links point at the service it runs
                os.environ["CLM_PUBLIC_BASE_URL"] = web_url
                click.echo(f"web        clm serve's app at {web_url}: unsubscribe, "
                           "preferences and click links in the demo's messages")
            if server:
                server.store.callbacks.configure({"url": web_url, "seed": 7,
                                                  "delay_seconds": 0.5})
                if clock is not None:
                    server.store.callbacks.clock = clock
                click.echo(f"web        provider callbacks to {web_url}/hooks/... "
                           "(the app `clm serve` runs)")
            yield out
            if server:
                _drain_callbacks(server)
        finally:
            web.stop()
    finally:
        if server:
            out["stats"] = server.store.stats()
            server.stop()


def _feedback_line(app: App) -> str:
    """What the providers reported back: delivery statuses, engagement, suppressions."""
    import sqlalchemy as sa

    from clm_core.db import tables as t

    with app.engine.connect() as conn:
        status: dict[str, int] = dict(
            conn.execute(
                sa.select(t.messages.c.delivery_status, sa.func.count())
                .where(t.messages.c.delivery_status.is_not(None))
                .group_by(t.messages.c.delivery_status)
            ).all()
        )
        events: dict[str, int] = dict(conn.execute(sa.select(t.events.c.event_type, sa.func.count())
                                   .where(t.events.c.event_type.in_(("opened", "clicked")))
                                   .group_by(t.events.c.event_type)).all())
        kinds: dict[str, int] = dict(
            conn.execute(
                sa.select(t.provider_events.c.kind, sa.func.count())
                .where(t.provider_events.c.kind.in_(("complained", "unsubscribed")))
                .group_by(t.provider_events.c.kind)
            ).all()
        )
    parts = [f"{k} {status.get(k, 0):,}" for k in ("delivered", "bounced", "deferred",
                                                   "undelivered")]
    parts += [f"{k} {events.get(k, 0):,}" for k in ("opened", "clicked")]
    parts += [f"{k} {kinds.get(k, 0):,}" for k in ("unsubscribed", "complained")]
    return ", ".join(parts)


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--sample", is_flag=True, help="The 2,357-customer CDNOW sample (faster).")
    @click.option("--start", type=DATE, default=START, show_default=True,
                  help="First simulated day. The default is the end of the CDNOW cohort's first "
                       "quarter, when every one of its customers has bought.")
    @click.option("--weeks", type=click.IntRange(1, 70), default=WEEKS, show_default=True,
                  help="How many weekly steps the simulated clock takes.")
    @click.option("--simulated", is_flag=True,
                  help="A simulated store instead of CDNOW: customers who respond to the "
                       "journeys' messages with planted effects (a few months, a couple of "
                       "minutes); the report's lift table beside the truth. See clm simulate.")
    @click.option("--faults", metavar="JSON", help='Sandbox faults to show failure handling, e.g. '
                  '\'{"rate_400": 0.05, "apis": ["sendgrid"]}\'.')
    @pass_app
    def demo(app: App, sample: bool, start: datetime, weeks: int, simulated: bool,
             faults: str | None) -> None:
        """The whole job on the embedded default: CDNOW data, models, stages, journeys and
        sends to the local sandbox providers, on a simulated clock through 1997, all through
        the real `lifecycle` Prefect flow; then what happened, in a store owner's words."""
        from clm_core.db.engine import describe
        from clm_core.delivery.unsubscribe import ensure_key_file
        from clm_core.ingest.cdnow import import_cdnow
        from clm_core.runs import last_runs, record_run, utcnow
        from clm_core.simclock import simulated_steps

        if simulated:
            from clm.simulate import simulated_demo

            simulated_demo(app, faults)
            return
        started = time.perf_counter()
        settings = app.settings
        click.echo(f"project    {settings.project_dir}")
        click.echo(f"database   {describe(settings.database_url)}")
        key = ensure_key_file(settings)
        if key:
            click.echo(f"signing    unsubscribe links signed with the project's key in {key} "
                       f"(clm run and clm dispatch use it too; set {settings.secret_key_env} "
                       "in production)")
        preflight(app, dispatch=True)
        first = start.date()
        last = first + timedelta(weeks=weeks - 1)
        with record_run(app.engine, "demo") as run:
            run.summary = {"start": f"{first}", "weeks": weeks, "simulated": True}
            report = import_cdnow(app.engine, sample=sample, prospects=300)
            click.echo(f"data       CDNOW{' sample' if sample else ''}: {report.customers:,} "
                       f"customers + {report.prospects} prospects, {report.orders:,} orders, "
                       f"{report.items:,} order lines (1997-01-01 to 1998-06-30)")
            click.echo(f"clock      simulated: {weeks} weekly runs of the `lifecycle` flow, as of "
                       f"{first} to {last}, each the next morning at 10:00 "
                       f"{settings.default_timezone} ...")
            simulate = load_flow(app, "simulate", "simulate")
            steps = simulated_steps(first, weeks, timedelta(weeks=1), 10,
                                    settings.default_timezone)
            clock = StepClock(app.engine, [now for _, now in steps], utcnow())
            with live_providers(app, faults, clock) as live:
                state = call_flow(simulate, start=first, steps=weeks)
            stats = live.get("stats")
            if not state.is_completed():
                run.status = "failed"
        tell(app, first, weeks)
        if stats:
            click.echo(f"\nsandbox    {stats['requests']:,} provider requests received, "
                       f"{stats['duplicates']} duplicate sends")
        click.echo("feedback   " + _feedback_line(app))
        mine = next((r for r in last_runs(app.engine, 50) if r["id"] == run.id), None)
        took = ((mine["finished_at"] - mine["started_at"]).total_seconds()
                if mine and mine["finished_at"] else time.perf_counter() - started)
        click.echo(f"took       {took:.1f}s (run {run.id[:8]} in `clm status`, with each "
                   "weekly lifecycle run)")
        click.echo(
            f"next       clm status | clm sandbox & clm run (the next day on this clock: "
            f"as of {last + timedelta(days=1)}) | clm preview welcome --customer cdnow-00001 | "
            f"PREFECT_HOME={os.environ.get('PREFECT_HOME')} prefect server start (the UI)"
        )
        finish(app, state)
