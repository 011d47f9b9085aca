"""``clm db``: schema migrations and a look at what is stored."""

from __future__ import annotations

import click
import sqlalchemy as sa

from clm.context import App, pass_app
from clm_core.db import tables as t
from clm_core.db.engine import describe


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
                for name, table in t.metadata.tables.items()}


def register(cli: click.Group) -> None:
    @cli.group()
    def db() -> None:
        """Database schema and contents."""

    @db.command()
    @pass_app
    def upgrade(app: App) -> None:
        """Apply migrations (every command that needs the database does this too)."""
        from clm_core.db.migrate import current_revision

        click.echo(
            f"{describe(app.settings.database_url)} at revision {current_revision(app.engine)}"
        )

    @db.command()
    @pass_app
    def counts(app: App) -> None:
        """Rows per table."""
        for name, n in table_counts(app.engine).items():
            click.echo(f"{name:<20} {n:>10,}")

    @db.command("rebuild-aggregates")
    @pass_app
    def rebuild_aggregates(app: App) -> None:
        """Recompute every customer's purchase aggregates from the orders (after orders were
        written by something other than clm, e.g. a script or a restored backup)."""
        import time

        from clm_core.lifecycle.aggregates import rebuild

        start = time.perf_counter()
        with app.engine.begin() as conn:
            n = rebuild(conn)
        click.echo(f"purchase aggregates rebuilt for {n:,} customers in "
                   f"{time.perf_counter() - start:.1f}s")
