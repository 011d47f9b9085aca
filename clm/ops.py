"""``clm status``: what ran lately, and what waits or failed in the outbox."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from clm.context import App, pass_app


def _clock(summary: dict[str, Any]) -> str:
    """The run's logical time, when it recorded one (lifecycle runs, the demo)."""
    if summary.get("as_of") and summary.get("now"):
        kind = " simulated" if summary.get("simulated") else ""
        now = datetime.fromisoformat(str(summary["now"]))
        return f"  as of {summary['as_of']}, clock {now:%Y-%m-%d %H:%M}{kind}"
    if summary.get("start") and summary.get("weeks"):
        return f"  simulated {summary['weeks']} weeks from {summary['start']}"
    return ""


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--runs", "n_runs", type=click.IntRange(1), default=10, show_default=True)
    @click.option("--failed", "n_failed", type=click.IntRange(0), default=10, show_default=True,
                  help="How many failed sends to list.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_app
    def status(app: App, n_runs: int, n_failed: int, as_json: bool) -> None:
        """Last runs (how long each took, and the as-of date and clock it ran on), outbox
        counts by status, and the latest failed sends."""
        from clm_core.reporting import failed_sends, summarize
        from clm_core.runs import last_runs

        runs = last_runs(app.engine, n_runs)
        summary = summarize(app.engine)
        failures = failed_sends(app.engine, limit=n_failed) if n_failed else []
        rates, halted = _deliverability(app)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "runs": runs,
                        "outbox": summary.by_status,
                        "stages": summary.stages,
                        "failed_sends": failures,
                        "deliverability": [r.as_dict() for r in rates],
                        "halted": halted,
                    },
                    default=str,
                    indent=2,
                )
            )
            return
        click.echo("Last runs:")
        for r in runs or [{}]:
            if not r:
                click.echo("  (none yet)")
                continue
            took = (
                (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
            )
            click.echo(f"  {r['started_at']:%Y-%m-%d %H:%M:%S}  {r['kind']:<10} {r['status']:<10}"
                       f"{f'{took:8.1f}s' if took is not None else '   running'}"
                       f"{_clock(r.get('summary') or {})}"
                       f"{'  flow run ' + r['flow_run_id'] if r['flow_run_id'] else ''}")
        click.echo(
            "Outbox: "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(summary.by_status.items())) or "empty")
        )
        if summary.stages:
            click.echo("Stages: " + ", ".join(f"{k} {v:,}" for k, v in summary.stages.items()))
        if rates:
            click.echo("Deliverability (complaints / hard bounces over the guard window):")
            for r in rates:
                click.echo(f"  {r.describe()}  [{r.verdict}]")
        for channel, why in halted.items():
            click.echo(f"HALTED {channel}: {why}")
        if failures:
            click.echo(f"Latest failed sends ({len(failures)} shown):")
            for f in failures:
                click.echo(
                    f"  {f['at']}  {f['customer']}  {f['journey']}/{f['step']}  {f['channel']} "
                    f"via {f['provider'] or '?'}  {f['status']}: {f['error']}  "
                    f"({f['attempts']} attempts)"
                )


def _deliverability(app: App) -> tuple[list[Any], dict[str, str]]:
    """Complaint and hard-bounce rates per channel and sending domain, and halted channels."""
    from datetime import timedelta

    from clm_core.delivery.config import load_delivery_config
    from clm_core.errors import ConfigError
    from clm_core.feedback import guard
    from clm_core.feedback.config import load_webhook_config
    from clm_core.runclock import normalize_now
    from clm_core.runs import utcnow
    from clm_core.simclock import last_lifecycle

    try:
        delivery = load_delivery_config(app.settings)
    except ConfigError:
        return [], guard.halted(app.engine)
    config = load_webhook_config(app.settings, delivery)
    window = timedelta(days=config.guard_window_days)
    # The window moves with the run's clock: after a simulation (clm demo) its sends and the
    # providers' reports live on the simulated clock, so the rates are read as of its last run.
    last = last_lifecycle(app.engine)
    now = (normalize_now(str(last["now"])) if last and last.get("simulated") and last.get("now")
           else None) or utcnow()
    return (guard.rates(app.engine, delivery, now, window, config),
            guard.halted(app.engine))
