"""``clm simulate`` and ``clm demo --simulated``: a simulated store with planted effects, run
through the real ``lifecycle`` flow day by day on a simulated clock, against the sandbox
providers and ``clm serve``'s app (the same machinery as ``clm demo``), then the lift report
beside the truth. The truth is written to ``simulation/`` in the project, never to the
database the report reads."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from clm.context import App, pass_app
from clm.demo import live_providers
from clm.flows import DATE, call_flow, failure, finish, load_flow, preflight
from clm_core.errors import InputError

DEMO_CUSTOMERS = 3000
DEMO_DAYS = 91
DEMO_EVERY = 7


class StepInProgress:
    """The time the sandbox stamps on its callbacks' events during ``clm simulate``: the
    simulated clock of the lifecycle step in progress plus the wall time since it began (the
    same reading as ``clm.demo.StepClock``, told each step's clock directly). With the wall
    clock's stamps an open or a click would lie years after every simulated run, where no
    journey looks: a branch on ``opened`` or a ``clicked`` goal could never fire."""

    def __init__(self) -> None:
        self.now: datetime | None = None
        self.began = 0.0

    def start(self, now: datetime) -> None:
        self.now, self.began = now, time.monotonic()

    def __call__(self) -> float:
        if self.now is None:
            return time.time()
        at = self.now + timedelta(seconds=time.monotonic() - self.began)
        return at.replace(tzinfo=UTC).timestamp()


def _check_empty(app: App) -> None:
    import sqlalchemy as sa

    from clm_core.db import tables as t

    with app.engine.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).select_from(t.customers)) or 0
    if n:
        raise InputError(f"the store already has {n:,} customers: a simulation starts from an "
                         "empty store (a new project, `clm init DIR`, or --database URL of an "
                         "empty database)")


def run_simulation(app: App, customers: int, days: int, seed: int, effects_file: str | None,
                   every_days: int, history_days: int, start: date,
                   faults: str | None = None) -> tuple[Any, Path, Any, float]:
    """Simulate and measure; (the last failed flow state or the last state, the truth file,
    the simulation, seconds). Prints one line per lifecycle step."""
    from clm_core.delivery.unsubscribe import ensure_key_file
    from clm_core.journeys.store import load_journeys, project_policy
    from clm_core.runs import record_run
    from clm_core.simulate.effects import check_targets, load_effects
    from clm_core.simulate.store import SimConfig, Simulation, journey_templates
    from clm_core.simulate.truth import enrollments_truth, journey_truths, write_truth

    started = time.perf_counter()
    settings = app.settings
    ensure_key_file(settings)
    preflight(app, dispatch=True)
    effects = load_effects(effects_file)
    policy = project_policy(settings.section("journeys"))
    journeys = [j for j in load_journeys(settings.journeys_dir, policy)
                if j.spec.status == "active"]
    check_targets(effects, [j.name for j in journeys],
                  [x for temps in journey_templates(journeys).values() for x in temps])
    _check_empty(app)
    config = SimConfig(customers=customers, days=days, seed=seed, every_days=every_days,
                       history_days=history_days, start=start,
                       timezone=settings.default_timezone)
    sim = Simulation(app.engine, config, effects, journeys, policy)
    click.echo(f"store      simulated: {customers:,} customers (BG/NBD + Gamma-Gamma, seed "
               f"{seed}), {history_days} days of history, then {days} days from {start}")
    click.echo(f"effects    {effects.file}: " + "; ".join(
        f"{e.target} {e.purchase_lift:+.0%} for {e.days}d"
        + (f", coupon redeemed {e.coupon.redeem:.0%}" if e.coupon else "")
        + (f", unsubscribe {e.unsubscribe:.1%}" if e.unsubscribe else "")
        for e in effects.items))
    lifecycle = load_flow(app, "lifecycle", "lifecycle")
    states: list[Any] = []

    events_clock = StepInProgress()

    def step(as_of: date, now: datetime) -> None:
        t0 = time.perf_counter()
        events_clock.start(now)
        state = call_flow(lifecycle, as_of=as_of, now=now, simulated=True)
        states.append(state)
        ok = "" if state.is_completed() else f"  ({state.type.value.lower()}: {failure(state)})"
        click.echo(f"  as of {as_of}  run {now:%Y-%m-%d %H:%M}  {time.perf_counter() - t0:5.1f}s"
                   + ok)

    click.echo(f"clock      the `lifecycle` flow every {every_days} day(s) at 10:00 "
               f"{settings.default_timezone}, purchases day by day ...")
    with record_run(app.engine, "simulate") as run:
        run.summary = {"seed": seed, "customers": customers, "days": days,
                       "start": f"{start}", "simulated": True}
        with live_providers(app, faults, events_clock):
            sim.run(step)
        enrollments = enrollments_truth(sim, app.engine)
        truths = journey_truths(sim, enrollments)
        path = write_truth(sim, settings.project_dir / "simulation", truths, enrollments)
        failed = [s for s in states if not s.is_completed()]
        if failed:
            run.status = "failed"
    return (failed[0] if failed else states[-1]), path, (sim, truths), \
        time.perf_counter() - started


def print_truth_beside_lift(app: App, truths: list[Any]) -> None:
    """Each journey with a planted effect: its true effect and what ``clm lift`` measured."""
    from clm_core.measure.lift import lift

    report = {c.journey: c for c in lift(app.engine).comparisons if c.scope == "journey"}
    click.echo("\nPlanted effects against the lift report (conversion points, revenue per "
               "entered customer; 95% intervals):")
    click.echo(f"  {'journey':<16} {'treated':>7} {'control':>7} {'true':>6} "
               f"{'measured [95% CI]':<22} {'true rev':>8} {'measured rev [95% CI]':<24} "
               f"{'net':>8}")
    for tr in truths:
        c = report.get(tr.journey)
        if c is None:
            click.echo(f"  {tr.journey:<16} no complete windows yet")
        else:
            d, (lo, hi) = c.conversion.diff, c.conversion.diff_ci
            rd, (rlo, rhi) = c.revenue.diff, c.revenue.diff_ci
            conv = (f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                    if not math.isnan(d) and not math.isnan(lo) else "no control group")
            rev = (f"{rd:+.2f} [{rlo:+.2f}, {rhi:+.2f}]"
                   if not math.isnan(rd) and not math.isnan(rlo) else "-")
            net = (f"{c.net_incremental_revenue:+,.0f}"
                   if not math.isnan(c.net_incremental_revenue) else "-")
            click.echo(f"  {tr.journey:<16} {c.treated:>7,} {c.control:>7,} "
                       f"{100 * tr.conversion_effect:>+6.1f} {conv:<22} "
                       f"{tr.revenue_effect:>+8.2f} {rev:<24} {net:>8}")
        planted = "; ".join(
            (f"template {e['template']}: " if e.get("template") else "")
            + f"purchases {e['purchase_lift']:+.0%} for {e['days']}d"
            + (f", coupon used {e['coupon']['redeem']:.0%}" if e.get("coupon") else "")
            for e in tr.effects)
        click.echo(f"  {'':<16} planted: {planted}"
                   + ("" if tr.conversion_exact else "; true conversion counts order goals only"))


def simulated_demo(app: App, faults: str | None) -> None:
    """``clm demo --simulated``: a few months of a simulated store, then the report."""
    from clm_core.db.engine import describe
    from clm_core.measure.publish import build_report
    from clm_core.simulate.store import DEFAULT_START

    click.echo(f"project    {app.settings.project_dir}")
    click.echo(f"database   {describe(app.settings.database_url)}")
    state, path, (_, truths), took = run_simulation(
        app, DEMO_CUSTOMERS, DEMO_DAYS, 7, None, DEMO_EVERY, 365, DEFAULT_START, faults)
    print_truth_beside_lift(app, truths)
    out = app.settings.project_dir / "report.html"
    written, _ = build_report(app.engine, app.settings, out)
    click.echo(f"\ntruth      {path} (apart from the database; clm lift never reads it)")
    click.echo(f"report     {written} (clm report): its lift table is the one above")
    click.echo(f"took       {took:.1f}s")
    finish(app, state)


def register(cli: click.Group) -> None:
    from clm_core.simulate.store import DEFAULT_START

    @cli.command()
    @click.option("--customers", type=click.IntRange(10), default=2000, show_default=True)
    @click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True,
                  help="Simulated days after the history.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--effects", "effects_file", type=click.Path(dir_okay=False), metavar="FILE",
                  help="Planted effects (YAML; default: the file shipped for the demo).")
    @click.option("--every-days", type=click.IntRange(1, 365), default=1, show_default=True,
                  help="Days between lifecycle runs (purchases are always daily).")
    @click.option("--history-days", type=click.IntRange(30, 3650), default=365,
                  show_default=True, help="Days of orders before the first simulated day.")
    @click.option("--start", type=DATE, default=str(DEFAULT_START), show_default=True,
                  help="First simulated as-of day.")
    @pass_app
    def simulate(app: App, customers: int, days: int, seed: int, effects_file: str | None,
                 every_days: int, history_days: int, start: datetime) -> None:
        """A simulated store whose customers respond to messages with planted effects, run
        through the real `lifecycle` flow day by day on a simulated clock (sandbox providers,
        clm serve answering their callbacks); the truth (who was treated, the effects, the
        counterfactual purchases) goes to simulation/ in the project, apart from the tables
        `clm lift` and `clm report` read. Needs an empty store."""
        state, path, (_, truths), took = run_simulation(
            app, customers, days, seed, effects_file, every_days, history_days, start.date())
        print_truth_beside_lift(app, truths)
        click.echo(f"\ntruth      {path}")
        click.echo(f"took       {took:.1f}s; next: clm lift | clm report")
        finish(app, state)
