"""``clm validate``, ``clm plan`` and ``clm preview``: journeys for marketers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from clm.context import App, pass_app
from clm_core.errors import ClmError


def _at(value: str | None) -> datetime | None:
    from clm_core.runclock import normalize_now

    try:
        return normalize_now(value)
    except ClmError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from exc


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("paths", nargs=-1, type=click.Path())
    @click.option("--strict", is_flag=True, help="Treat warnings as errors.")
    @pass_app
    def validate(app: App, paths: tuple[str, ...], strict: bool) -> None:
        """Check journeys, stage rules and their templates (default: the journeys directory).

        Prints file:line:column: severity: message for each problem; exit status 1 on errors.
        """
        from clm_core.journeys.store import project_policy
        from clm_core.journeys.validate import validate_paths

        settings = app.settings
        problems = validate_paths(paths or [settings.journeys_dir], settings,
                                  project_policy(settings.section("journeys")))
        for p in problems:
            click.secho(str(p), fg="red" if p.severity == "error" else "yellow")
        errors = sum(p.severity == "error" for p in problems)
        warnings = len(problems) - errors
        click.echo(f"{errors} error(s), {warnings} warning(s)")
        if errors or (strict and warnings):
            raise SystemExit(1)

    @cli.command()
    @click.option(
        "--at", "at", metavar="TIME", help="Evaluate as of this time (default: now, UTC)."
    )
    @click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
                  help="Write every decision (entries, exits, messages) to this CSV file.")
    @pass_app
    def plan(app: App, at: str | None, csv_path: str | None) -> None:
        """Dry run of the next evaluation: who enters, exits and advances, and which messages
        would be created, deferred or skipped and why. Changes nothing."""
        from clm_core.journeys.report import decisions, summary_lines
        from clm_core.journeys.run import evaluate
        from clm_core.spreadsheet import safe_cells

        result = evaluate(app.engine, app.settings, _at(at), dry_run=True)
        assert result.plan is not None  # a dry run keeps its plan
        for line in summary_lines(result):
            click.echo(line)
        if csv_path:
            table = decisions(app.engine, result.plan)
            safe_cells(table).to_csv(csv_path, index=False)  # customer data: no formulas
            click.echo(f"{len(table):,} decisions written to {csv_path}")

    @cli.command()
    @click.argument("journey")
    @click.option("--customer", "customer", required=True, metavar="ID",
                  help="External id (or numeric id) of the customer.")
    @click.option("--step", "step", metavar="ID", help="Only this send step.")
    @click.option("--html", "html_dir", type=click.Path(file_okay=False),
                  help="Also write each email's HTML into this directory.")
    @pass_app
    def preview(app: App, journey: str, customer: str, step: str | None,
                html_dir: str | None) -> None:
        """Show the messages CUSTOMER would get from JOURNEY, rendered in their locale."""
        from clm_core.journeys.loader import load_journey
        from clm_core.journeys.preview import preview as render
        from clm_core.journeys.store import journey_files, project_policy
        from clm_core.suggest import did_you_mean
        from clm_core.templating import RenderedEmail

        settings = app.settings
        files = {p.stem: p for p in journey_files(settings.journeys_dir)}
        if journey not in files:
            raise ClmError(f"no journey {journey!r} in {settings.journeys_dir}"
                           f"{did_you_mean(journey, files)}")
        j = load_journey(files[journey], project_policy(settings.section("journeys")))
        emails: dict[str, str] = {}
        for p in render(app.engine, settings, j, customer, step):
            r = p.rendered
            click.secho(f"── {p.step} · {p.channel} · {p.template} · {r.locale}", bold=True)
            if isinstance(r, RenderedEmail):
                click.echo(f"Subject: {r.subject}\n\n{r.text}")
                if html_dir:
                    out = Path(html_dir) / f"{j.name}-{p.step}.html"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(r.html, encoding="utf-8")
                    emails[p.step] = out.name
                    click.echo(f"(HTML: {out})")
            else:
                click.echo(f"{r.text}\n({r.encoding}, {r.length} units, {r.segments} segment(s))")
        if html_dir:
            from clm_core.measure.diagram import page
            from clm_core.measure.graph import journey_counts, structure

            with app.engine.connect() as conn:
                counts = journey_counts(conn, j.name)
            out = Path(html_dir) / f"{j.name}.html"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(page(structure(j, counts), emails), encoding="utf-8")
            click.echo(f"(journey diagram: {out})")
