"""``clm demo``: the main job on the embedded default, end to end, on real CDNOW histories."""

from __future__ import annotations

import time

import click

from clm_core.cli.context import App, pass_app
from clm_core.db.engine import describe


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--sample", is_flag=True, help="Use the 2,357-customer CDNOW sample (faster).")
    @pass_app
    def demo(app: App, sample: bool) -> None:
        """Set up the database, load CDNOW, and show what was loaded."""
        from clm_core.cli.db import table_counts
        from clm_core.ingest.cdnow import import_cdnow

        started = time.perf_counter()
        click.echo(f"database: {describe(app.settings.database_url)}")
        report = import_cdnow(app.engine, sample=sample, prospects=300)
        click.echo(f"CDNOW: {report.customers:,} customers + {report.prospects} prospects, "
                   f"{report.orders:,} orders, {report.items:,} order lines")
        counts = table_counts(app.engine)
        click.echo("stored: " + ", ".join(f"{k} {counts[k]:,}" for k in
                                          ("customers", "orders", "order_items")))
        click.echo(f"done in {time.perf_counter() - started:.1f}s")
