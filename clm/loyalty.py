"""``clm loyalty`` and ``clm points``: the membership programme and its points ledger."""

from __future__ import annotations

import json
from datetime import datetime

import click

from clm.context import App, pass_app


def _programme(app: App):  # type: ignore[no-untyped-def]
    from clm_core.errors import ConfigError
    from clm_core.loyalty.spec import LOYALTY_FILE, load_programme

    prog = load_programme(app.settings.journeys_dir)
    if prog is None:
        raise ConfigError(f"no loyalty programme: {app.settings.journeys_dir / LOYALTY_FILE} "
                          "does not exist (clm init writes a commented one)")
    return prog


def _now(app: App, now: str | None) -> tuple[datetime, str]:
    """The evaluation's clock and why: given, or the newest order's time (never the wall clock,
    so a rerun of the same data gives the same ledger)."""
    import pandas as pd
    import sqlalchemy as sa

    from clm_core.db import tables as t
    from clm_core.errors import InputError

    if now:
        try:
            ts = pd.Timestamp(now)
        except ValueError:
            raise InputError(f"--now {now!r} is not a time like 2024-03-31 or "
                             "\"2024-03-31 10:00\"") from None
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        return ts.to_pydatetime(), "given with --now"
    with app.engine.connect() as conn:
        newest = conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar()
    if newest is None:
        raise InputError("no orders yet: give --now")
    return pd.Timestamp(newest).to_pydatetime(), "the newest order's time"


def register(cli: click.Group) -> None:
    @cli.command("loyalty")
    @click.option("--now", metavar="TIME", help="Evaluate as of this time (default: the newest "
                  "order's time).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--report", is_flag=True, help="Print the programme's figures (members per "
                  "tier over time, liability, redemption rate, the expiry reminder's lift) "
                  "instead of evaluating.")
    @pass_app
    def loyalty_cmd(app: App, now: str | None, as_json: bool, report: bool) -> None:
        """Apply the loyalty programme: earn, bonus, reverse, expire, rewards, tiers."""
        from clm_core.loyalty.store import run_loyalty
        from clm_core.runs import record_run

        prog = _programme(app)
        if report:
            from dataclasses import asdict

            from clm_core.loyalty.report import loyalty_report

            figures = loyalty_report(app.engine, prog)
            if as_json:
                click.echo(json.dumps(asdict(figures), indent=2, default=str))
            else:
                for line in figures.lines():
                    click.echo(line)
            return
        at, why = _now(app, now)
        with record_run(app.engine, "loyalty") as run:
            summary = run_loyalty(app.engine, prog, at, run_id=run.id)
            run.summary = {"as_of": at.isoformat(), "members": summary.members,
                           "rows": summary.rows, "tier_changes": summary.tier_changes}
        if as_json:
            click.echo(json.dumps({"now": at.isoformat(), "why": why, "members": summary.members,
                                   "rows": summary.rows, "points": summary.points,
                                   "tier_changes": summary.tier_changes,
                                   "rewards": summary.rewards, "tiers": summary.tiers}, indent=2))
            return
        click.echo(f"clock: {at:%Y-%m-%d %H:%M} ({why})")
        for line in summary.lines():
            click.echo(line)

    @cli.group("points")
    def points() -> None:
        """Look at or adjust a customer's points."""

    @points.command("adjust")
    @click.argument("customer")
    @click.argument("amount", metavar="POINTS")
    @click.option("--reason", required=True, help="Why (kept in the ledger).")
    @click.option("--id", "adjustment_id", metavar="ID",
                  help="Your reference: the same ID never adds twice (e.g. a ticket number).")
    @click.option("--now", metavar="TIME", help="When the adjustment counts (default: the newest "
                  "order's time).")
    @pass_app
    def adjust_cmd(app: App, customer: str, amount: str, reason: str, adjustment_id: str | None,
                   now: str | None) -> None:
        """Add (+100) or take away (-20) points, with a reason."""
        from clm_core.errors import InputError
        from clm_core.loyalty.store import adjust

        try:
            value = float(amount)
        except ValueError:
            raise InputError(f"POINTS {amount!r} is not a number like +100 or -20") from None
        at, _ = _now(app, now)
        out = adjust(app.engine, customer, value, reason, at, adjustment_id)
        verb = "added" if out["added"] else "already recorded (nothing added)"
        click.echo(f"customer {customer}: {out['points']:+,} points {verb}; "
                   f"balance {out['balance']:,}")

    @points.command("show")
    @click.argument("customer")
    @pass_app
    def show_cmd(app: App, customer: str) -> None:
        """A customer's ledger, oldest first, with the running balance."""
        import sqlalchemy as sa

        from clm_core.db import tables as t
        from clm_core.errors import InputError
        from clm_core.loyalty.store import ledger_of

        with app.engine.connect() as conn:
            cid = conn.execute(sa.select(t.customers.c.id)
                               .where(t.customers.c.external_id == customer)).scalar()
        if cid is None:
            raise InputError(f"no customer {customer!r}")
        rows = ledger_of(app.engine, cid)
        balance = 0
        click.echo(f"{'when':<16}  {'kind':<8}  {'points':>8}  {'balance':>8}  why")
        for r in rows.itertuples():
            balance += int(r.points)
            why = r.reason or r.key
            click.echo(f"{r.occurred_at:%Y-%m-%d %H:%M}  {r.kind:<8}  {int(r.points):>+8,}  "
                       f"{balance:>8,}  {why}")
