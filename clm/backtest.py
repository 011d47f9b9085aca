"""``clm backtest``: what the journeys would have done over a past period (a replay of the
store's history through the real engine, in memory: the live tables are only read)."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import click
import pandas as pd

from clm.context import App, pass_app
from clm.lifecycle import DATE
from clm_core.errors import InputError

_EVERY = re.compile(r"^(\d+)([dw])$")


def _every(value: str) -> timedelta:
    m = _EVERY.match(value.strip().lower())
    if not m or int(m.group(1)) < 1:
        raise InputError(f"--every {value!r}: write a number of days or weeks, e.g. 1d or 1w")
    n = int(m.group(1))
    return timedelta(days=n * (7 if m.group(2) == "w" else 1))


def _table(df: pd.DataFrame, title: str) -> None:
    click.echo(title)
    if df.empty:
        click.echo("  (nothing)")
        return
    shown = df.copy()
    if "coupon_cost" in shown:
        shown["coupon_cost"] = shown["coupon_cost"].map(lambda v: f"{v:,.2f}")
    click.echo(shown.to_string(index=False))


def _print(result: Any) -> None:
    d = result.as_dict()
    click.echo(f"backtest {d['from']} to {d['to']} every {d['every_days']}d: {d['steps']} steps, "
               f"{d['fits']} fits, journeys {', '.join(d['journeys']) or '(none)'}")
    for f in d["failed_days"]:
        click.echo(f"failed   {f['as_of']}: {f['error']}")
    weekly = result.tally.weekly()
    for journey, part in weekly.groupby("journey", sort=True):
        _table(part.drop(columns="journey"), f"\n{journey}")
    _table(result.tally.totals(), "\ntotals")
    _table(result.tally.customers_in_several(),
           "\ncustomers who entered several journeys in a week")


def _compare(a: Any, b: Any, other: Path) -> None:
    ta, tb = a.tally.totals().set_index("journey"), b.tally.totals().set_index("journey")
    click.echo(f"\ncompare: project journeys (A) against A with {other} (B)")
    rows = []
    for journey in sorted(set(ta.index) | set(tb.index)):
        for col in ta.columns:
            va = float(ta.at[journey, col]) if journey in ta.index else 0.0
            vb = float(tb.at[journey, col]) if journey in tb.index else 0.0
            if va or vb:
                rows.append({"journey": journey, "figure": col, "A": va, "B": vb, "B-A": vb - va})
    df = pd.DataFrame(rows)
    click.echo(df.to_string(index=False, float_format=lambda v: f"{v:,.2f}".rstrip("0")
                            .rstrip(".")) if len(df) else "  (nothing)")


def _write(path: Path, result: Any, compared: Any | None) -> None:
    from clm_core.spreadsheet import safe_cells

    if path.suffix.lower() == ".csv":
        weekly = result.tally.weekly()
        if compared is not None:
            other = compared.tally.weekly()
            weekly = pd.concat([weekly.assign(version="A"), other.assign(version="B")])
        safe_cells(weekly).to_csv(path, index=False)
    else:
        doc = result.as_dict()
        if compared is not None:
            doc = {"A": doc, "B": compared.as_dict()}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--from", "start", type=DATE, help="First as-of day (default: the first "
                  "order's day).")
    @click.option("--to", "end", type=DATE, help="Last as-of day (default: the newest order's "
                  "day).")
    @click.option("--every", default="1d", show_default=True, metavar="N{d|w}",
                  help="Step: the daily run (1d) or coarser (1w).")
    @click.option("--journeys", "names", metavar="A,B",
                  help="Only these journeys (others are not run, so their messages do not count "
                       "against the caps).")
    @click.option("--compare", "other", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
                  help="Also replay with this journey file in place of the journey of the same "
                       "name (or added), and print both side by side.")
    @click.option("--hour", default=10, show_default=True, type=click.IntRange(0, 23),
                  help="Local hour of the simulated daily run.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                  help="Also write the result: FILE.csv (weekly rows) or FILE.json.")
    @pass_app
    def backtest(app: App, start: date | None, end: date | None, every: str,
                 names: str | None, other: Path | None, hour: int, as_json: bool,
                 out: Path | None) -> None:
        """Replay the store's history day by day through the lifecycle and the journeys, as
        the daily run would have done it (point-in-time fits, nothing looking ahead), and print
        per journey and week: entered, messages by channel, deferred by quiet hours, capped,
        skipped for consent, coupons and their cost, conversions, customers in several
        journeys. Reads the database; writes nothing to it and sends nothing."""
        import sys

        from clm_core.backtest.history import load_history
        from clm_core.backtest.run import Period, select_journeys
        from clm_core.backtest.run import backtest as run

        step = _every(every)
        chosen = [n.strip() for n in names.split(",") if n.strip()] if names else None
        journeys = select_journeys(app.settings, chosen)
        with app.engine.connect() as conn:
            history = load_history(conn)
        first_day, last_day = history.first_day, history.last_day
        if first_day is None or last_day is None:
            raise InputError("the store has no orders to replay: import some first")
        first = start or first_day.date()
        last = end or last_day.date()
        if last < first:
            raise InputError(f"--to {last} is before --from {first}")
        period = Period(first, last, step, hour)
        result = run(app.engine, app.settings, period, journeys, history)
        compared = None
        if other is not None:
            compared = run(app.engine, app.settings, period,
                           select_journeys(app.settings, chosen, other), history)
        if as_json:
            doc = result.as_dict()
            click.echo(json.dumps({"A": doc, "B": compared.as_dict()} if compared else doc,
                                  indent=2, default=str))
        else:
            _print(result)
            if compared is not None:
                _compare(result, compared, other)  # type: ignore[arg-type]
        if out is not None:
            _write(out, result, compared)
        seconds = result.seconds + (compared.seconds if compared else 0.0)
        click.echo(f"replayed {result.tally.steps} steps in {seconds:.1f} s", err=True)
        if result.tally.failed and len(result.tally.failed) == result.tally.steps:
            sys.exit(1)  # not one day could be scored: the replay did nothing
