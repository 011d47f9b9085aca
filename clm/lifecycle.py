"""``clm fit`` and ``clm score``: CLV models and lifecycle stages."""

from __future__ import annotations

import json
from datetime import date, datetime

import click

from clm.context import App, pass_app


class _Date(click.ParamType):
    name = "DATE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> date:
        if isinstance(value, date):
            return value
        try:
            return datetime.strptime(str(value), "%Y-%m-%d").date()
        except ValueError:
            self.fail(f"{value!r} is not a date like 2024-03-31", param, ctx)


DATE = _Date()


def _print_fit(report: object) -> None:
    from clm_core.lifecycle.fitting import fallback_note
    from clm_core.lifecycle.pipeline import FitReport

    assert isinstance(report, FitReport)
    p, s = report.purchases, report.spend
    start = f"{p.window_start:%Y-%m-%d}" if p.window_start else "?"
    click.echo(f"{p.model} fitted on {p.n_customers:,} customers, orders {start} .. {p.window_end} "
               f"(time unit: {p.time_unit}); fit id {p.id}, {p.seconds:.2f} s")
    click.echo("  " + "  ".join(f"{k} {v:.4f}" for k, v in p.params.items())
               + f"   log-likelihood {p.log_likelihood:,.2f}")
    click.echo(
        f"gamma_gamma fitted on {s.n_customers:,} repeat buyers; fit id {s.id}, {s.seconds:.2f} s"
    )
    click.echo("  " + "  ".join(f"{k} {v:.4f}" for k, v in s.params.items())
               + f"   log-likelihood {s.log_likelihood:,.2f}")
    for fit in (p, s):
        note = fallback_note(fit)
        if note:
            click.echo(f"note: {fit.model} used {note}")
    if report.holdout is not None:
        click.echo(f"\nModel check: repeat purchases {p.window_end} .. {p.holdout_end}, "
                   "mean per customer by calibration frequency (last row: totals)")
        click.echo(f"  {'frequency':>9}  {'customers':>9}  {'actual':>10}  {'predicted':>10}")
        for band, row in report.holdout.iterrows():
            click.echo(f"  {band:>9}  {int(row['customers']):>9,}  {row['actual']:>10.3f}  "
                       f"{row['predicted']:>10.3f}")


def fit_line(r: object) -> str:
    """Which fit a scoring used, and why."""
    from clm_core.lifecycle.pipeline import ScoreReport

    assert isinstance(r, ScoreReport)
    return f"fit {r.fit_id} (orders up to {r.fit_window_end}): {r.fit_reason}"


def register(cli: click.Group) -> None:
    @cli.command("fit")
    @click.option(
        "--as-of", type=DATE, help="Fit on orders up to this day (default: the newest order's day)."
    )
    @click.option(
        "--calibration-end", type=DATE, help="End of the calibration window (with --holdout-end)."
    )
    @click.option(
        "--holdout-end", type=DATE, help="End of the holdout window: also print the model check."
    )
    @click.option("--time-unit", type=click.Choice(["day", "week"]),
                  help="Unit of recency and T (default: [lifecycle] time_unit, else week).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @pass_app
    def fit_cmd(
        app: App,
        as_of: date | None,
        calibration_end: date | None,
        holdout_end: date | None,
        time_unit: str | None,
        as_json: bool,
    ) -> None:
        """Fit BG/NBD and Gamma-Gamma on the store's orders and store the parameters."""
        from clm_core.lifecycle.pipeline import LifecycleConfig, fit
        from clm_core.runs import record_run

        if (calibration_end is None) != (holdout_end is None):
            raise click.UsageError("--calibration-end and --holdout-end go together")
        if calibration_end and as_of:
            raise click.UsageError("use either --as-of or --calibration-end/--holdout-end")
        config = LifecycleConfig.from_settings(app.settings)
        with record_run(app.engine, "fit") as run:
            report = fit(
                app.engine,
                config,
                as_of=calibration_end or as_of,
                holdout_end=holdout_end,
                time_unit=time_unit,
                run_id=run.id,
            )
            run.summary = {
                "model": report.purchases.model,
                "fit_ids": [report.purchases.id, report.spend.id],
            }
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
        else:
            _print_fit(report)

    @cli.command("score")
    @click.option(
        "--as-of", type=DATE, help="Score as of this day (default: the newest order's day)."
    )
    @click.option("--fit", "fit_id", type=click.IntRange(1), metavar="ID",
                  help="Score with this fit (default: the newest whose data ends on or before "
                       "the as-of day; refitted when none ends within [lifecycle] "
                       "fit_max_age_days of it).")
    @pass_app
    def score_cmd(app: App, as_of: date | None, fit_id: int | None) -> None:
        """Score every customer (P(alive), CLV, RFM) and assign lifecycle stages."""
        from clm_core.lifecycle.pipeline import LifecycleConfig, latest_order_date, score
        from clm_core.runs import record_run

        config = LifecycleConfig.from_settings(app.settings)
        rules = config.load_rules()  # fail on bad rules before any work
        if as_of is None:
            as_of = latest_order_date(app.engine)
            click.echo(f"as of {as_of}: the newest order's day")
        with record_run(app.engine, "score") as run:
            r = score(app.engine, config, as_of=as_of, rules=rules, run_id=run.id, fit_id=fit_id)
            run.summary = {
                "as_of": r.as_of.isoformat(),
                "customers": r.customers,
                "fit_id": r.fit_id,
                "stages": r.stages,
                "transitions": r.transitions,
                "no_model": r.no_model,
            }
        click.echo(fit_line(r))
        model = f"fit {r.fit_id}" if r.fit_id is not None else "no CLV model yet"
        click.echo(f"scored {r.customers:,} customers as of {r.as_of} with {model}; "
                   f"{r.transitions:,} stage changes recorded "
                   f"({sum(r.seconds.values()):.1f} s)")
        if r.no_model:
            click.echo(f"{r.no_model}. Stages that need no model (prospect, new, one-time "
                       "buyers by the store's rhythm) are assigned; P(alive), expected "
                       "purchases and CLV stay empty until the models can be fitted.")
        width = max(len(s) for s in [*r.stages, *r.segments, "stage"])
        click.echo(f"\n{'stage':<{width}}  customers")
        for name, n in r.stages.items():
            click.echo(f"{name:<{width}}  {n:>9,}")
        click.echo(f"\n{'RFM segment':<{width}}  customers")
        for name, n in sorted(r.segments.items(), key=lambda kv: -kv[1]):
            click.echo(f"{name:<{width}}  {n:>9,}")
