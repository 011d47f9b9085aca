"""``clm attribute``, ``clm lift``, ``clm explain``, ``clm report`` and ``clm graph``: did it work?"""  # noqa: E501  (prose or a URL: clearer whole)

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import click

from clm.context import App, pass_app
from clm.journeys import _at
from clm.lifecycle import DATE
from clm_core.errors import ClmError


def _since(value: Any) -> datetime | None:
    return datetime(value.year, value.month, value.day) if value else None


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:.{digits}f}%"


def _money(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.2f}"


def _ensure_attribution(app: App) -> None:
    from clm_core.measure.publish import ensure_attribution

    ensure_attribution(app.engine, app.settings)


def _load_journey(app: App, name: str) -> Any:
    from clm_core.journeys.loader import load_journey
    from clm_core.journeys.store import journey_files, project_policy
    from clm_core.suggest import did_you_mean

    files = {p.stem: p for p in journey_files(app.settings.journeys_dir)}
    if name not in files:
        raise ClmError(
            f"no journey {name!r} in {app.settings.journeys_dir}{did_you_mean(name, files)}"
        )
    return load_journey(files[name], project_policy(app.settings.section("journeys")))


def print_lift(report: Any) -> None:
    from clm_core.measure import stats

    if not report.comparisons:
        click.echo("No enrollment has a complete conversion window yet"
                   + (f" ({report.pending:,} still open)" if report.pending else "") + ".")
        return
    click.echo(f"Lift measured at {report.measured_at:%Y-%m-%d %H:%M} "
               f"({report.pending:,} enrollments with open windows left out). 95% intervals.")
    click.echo(f"  conversion: {stats.RATE_METHOD}; revenue: {stats.MEAN_METHOD}")
    head = (f"\n{'comparison':<34} {'treated':>8} {'control':>8} {'conv T':>7} {'conv C':>7} "
            f"{'lift (pts) [95% CI]':>24} {'rev/cust T':>10} {'rev/cust C':>10} "
            f"{'diff [95% CI]':>26} {'net incr.':>11}")
    click.echo(head)
    for c in report.comparisons:
        r, m = c.conversion, c.revenue
        ci = (f"{r.diff * 100:+.1f} [{r.diff_ci[0] * 100:+.1f}, {r.diff_ci[1] * 100:+.1f}]"
              if math.isfinite(r.diff_ci[0]) else "n/a")
        mci = (f"{m.diff:+,.2f} [{m.diff_ci[0]:+,.2f}, {m.diff_ci[1]:+,.2f}]"
               if math.isfinite(m.diff_ci[0]) else "n/a")
        click.echo(f"{c.label[:34]:<34} {c.treated:>8,} {c.control:>8,} {_pct(r.rate_t):>7} "
                   f"{_pct(r.rate_c):>7} {ci:>24} {_money(m.mean_t):>10} {_money(m.mean_c):>10} "
                   f"{mci:>26} {_money(c.net_incremental_revenue):>11}")
    adjusted = [c for c in report.comparisons
                if c.revenue_cuped is not None and math.isfinite(c.revenue_cuped.low)]
    if adjusted:
        click.echo("\nRevenue per customer with CUPED (pre-entry revenue as covariate):")
        for c in adjusted:
            a = c.revenue_cuped
            assert a is not None
            click.echo(f"  {c.label[:34]:<34} {a.diff:+,.2f} [{a.low:+,.2f}, {a.high:+,.2f}]  "
                       f"variance {-a.variance_reduction:+.0%}, theta {a.theta:.3f}")
    click.echo("\nVerdicts:")
    for c in report.comparisons:
        if c.scope in ("journey", "program"):
            click.echo(f"  {c.verdict.text}")
            click.echo(f"  {c.revenue_verdict.text}")
    for v in report.variant_tests:
        click.echo(f"  {v.journey} variants: {v.test.text}")


def _d(v: Any) -> str:
    return "—" if v is None else f"{v:%Y-%m-%d %H:%M}" if isinstance(v, datetime) else str(v)


def print_story(story: Any) -> None:
    from clm_core.measure.explain import check_text

    c, o, sc = story.customer, story.orders, story.scores
    click.secho(f"{c['external_id']}  {c['name'] or ''}", bold=True)
    click.echo(
        f"  email {c['email'] or '—'}  phone {c['phone'] or '—'}  locale {c['locale'] or '—'}  "
        f"time zone {c['timezone'] or '—'}  country {c['country'] or '—'}"
    )
    cons = story.consent
    click.echo(
        f"  consent: email {'yes' if cons['email']['granted'] else 'no'} "
        f"({_d(cons['email']['at'])}), sms {'yes' if cons['sms']['granted'] else 'no'} "
        f"({_d(cons['sms']['at'])})"
        + "".join(f"; suppressed {s['channel']} ({s['reason']})" for s in cons["suppressions"])
    )
    for row in cons.get("ledger", []):
        click.echo(
            "    ledger: " + ", ".join(f"{k} {_d(v)}" for k, v in row.items() if v is not None)
        )
    click.echo(
        f"Orders: {o['purchases']:,} purchases of {o['orders']:,} orders, spend {o['spend']:,.2f}, "
        f"first {_d(o['first'])}, last {_d(o['last'])}"
        + (f"; not purchases: {o['not_purchases']}" if o["not_purchases"] else "")
    )
    if sc is None:
        click.echo("Not scored yet (run clm score).")
    else:
        f = story.fit
        click.echo(
            f"Scores as of {sc['as_of']}: P(alive) {sc['p_alive'] if sc['p_alive'] is None else round(sc['p_alive'], 3)}, "  # noqa: E501  (prose or a URL: clearer whole)
            f"expected purchases 90d {_num(sc['expected_purchases_90d'])}, CLV 12m {_num(sc['clv_12m'])}, "  # noqa: E501  (prose or a URL: clearer whole)
            f"RFM {sc['r_score']}{sc['f_score']}{sc['m_score']} ({sc['rfm_segment']})"
        )
        if f:
            click.echo(
                f"  from fit {f['id']}: {f['model']} on {f['n_customers']:,} customers, orders "
                f"to {_d(f['window_end'])} (time unit {f['time_unit']}), params "
                + ", ".join(f"{k} {v:.4g}" for k, v in f["params"].items())
            )
        click.secho(f"Stage: {story.stage} (since {_d(sc['stage_since'])}); rules tried in order, "
                    "first match wins:", bold=True)
        if story.rules_stage != story.stage:
            click.secho(f"  note: on the data as it is now the rules give {story.rules_stage}; the "
                        "store changed since it was scored (run clm score again)", fg="yellow")
        for r in story.rules:
            click.echo(f"  {'MATCHED' if r.matched else 'no match':<8} {r.stage}")
            for line in check_text(r.check):
                click.echo(f"      {line}")
    if story.history:
        click.echo(
            "Stage history: "
            + "; ".join(
                f"{_d(h['as_of'])} {h['from_stage'] or '(first)'} -> {h['to_stage']}"
                for h in story.history
            )
        )
    for e in story.enrollments:
        click.secho(
            f"Journey {e['journey']} v{e['version']} (entry {e['entry']}): entered "
            f"{_d(e['entered_at'])}, {e['group']}"
            + (f", variant {e['variant']}" if e["variant"] else "")
            + f", {e['status']}"
            + (f" ({e['exit_reason']})" if e["exit_reason"] else "")
            + (f", goal {e['goal']} at {_d(e['converted_at'])}" if e["goal"] else ""),
            bold=True,
        )
        for m in e["messages"]:
            click.echo(f"  {m['step_id']:<14} {m['channel']:<5} {m['status']:<9} "
                       f"{_d(m['send_after'])}  {m['why']}")
        a = e["attribution"]
        if a:
            click.echo(
                f"  attribution to {_d(a['window_end'])}: goal {a['goal'] or '—'}"
                f" {_d(a['goal_at']) if a['goal'] else ''}, {a['orders']} orders, revenue "
                f"{a['revenue']:,.2f}, coupons redeemed {a['coupons_redeemed']} (cost "
                f"{a['coupon_cost']:,.2f}), delivered {a['delivered']}, opened {a['opened']}, "
                f"clicked {a['clicked']}"
            )
    if story.events:
        click.echo("Events (latest first): " + "; ".join(
            f"{_d(ev['occurred_at'])} {ev['event_type']}" for ev in story.events))


def _num(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:,.2f}"


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--now", "now", metavar="TIME",
                  help="Measure as of this time (default: the newest order or enrollment).")
    @pass_app
    def attribute(app: App, now: str | None) -> None:
        """Rebuild the attribution table: per enrollment, goal, orders and revenue in the
        journey's conversion window, coupons and their cost, engagement, last touch."""
        from clm_core.journeys.store import project_policy
        from clm_core.measure.attribution import rebuild
        from clm_core.runs import record_run

        with record_run(app.engine, "attribute") as run:
            r = rebuild(
                app.engine, _at(now), project_policy(app.settings.section("journeys")), run.id
            )
            run.summary = {
                "now": r.now.isoformat(),
                "enrollments": r.enrollments,
                "complete": r.complete,
            }
        click.echo(f"attributed {r.enrollments:,} enrollments as of {r.now:%Y-%m-%d %H:%M}; "
                   f"{r.complete:,} with complete windows: {r.converted:,} converted, revenue "
                   f"{r.revenue:,.2f}, coupon cost {r.coupon_cost:,.2f}")

    @cli.command("lift")
    @click.argument("journey", required=False)
    @click.option("--since", type=DATE, help="Only enrollments that entered on or after this day.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @pass_app
    def lift_cmd(app: App, journey: str | None, since: Any, as_json: bool) -> None:
        """Treated vs control per journey, step, variant, and the program vs the global control
        group, with 95% intervals and a verdict that never calls a winner without evidence."""
        from clm_core.measure.lift import lift

        _ensure_attribution(app)
        report = lift(app.engine, journey, _since(since))
        if journey and not report.comparisons and not report.pending:
            raise ClmError(f"no attributed enrollments of journey {journey!r}")
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            print_lift(report)

    @cli.command()
    @click.argument("journey")
    @click.option("--counts/--no-counts", default=True, show_default=True,
                  help="Show entered/reached/converted counts from the database.")
    @pass_app
    def graph(app: App, journey: str, counts: bool) -> None:
        """Print JOURNEY as a Mermaid flowchart."""
        from clm_core.measure.graph import journey_counts, mermaid

        j = _load_journey(app, journey)
        known: dict[str, int] = {}
        if counts:
            with app.engine.connect() as conn:
                known = journey_counts(conn, j.name)
        click.echo(mermaid(j, known), nl=False)

    @cli.command()
    @click.option("--since", type=DATE, help="Journeys, messages and transitions from this day on.")
    @click.option("--out", "out", type=click.Path(dir_okay=False), default="report.html",
                  show_default=True, help="Where to write the HTML file.")
    @click.option("--locale", type=click.Choice(["en", "zh-CN"]), default="en", show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print the key figures as JSON.")
    @pass_app
    def report(app: App, since: Any, out: str, locale: str, as_json: bool) -> None:
        """Write the store report: one self-contained HTML file (lifecycle, value, churn,
        journeys and lift, model check, deliverability) that opens offline."""
        from clm_core.measure.publish import build_report

        path, summary = build_report(app.engine, app.settings, out, _since(since), locale)
        if as_json:
            click.echo(json.dumps({"path": str(path), **summary}, indent=2, default=str))
        else:
            click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    @cli.command()
    @click.argument("customer")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @pass_app
    def explain(app: App, customer: str, as_json: bool) -> None:
        """One customer's story: contact and consent, orders, scores and their fit, the stage
        rule that matched and the values that decided it, history, journeys, messages, events."""
        from clm_core.lifecycle.pipeline import LifecycleConfig
        from clm_core.measure.explain import explain as tell

        story = tell(app.engine, LifecycleConfig.from_settings(app.settings), customer)
        if as_json:
            click.echo(json.dumps(story.as_dict(), indent=2, default=str, ensure_ascii=False))
        else:
            print_story(story)
