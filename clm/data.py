"""``clm import`` and ``clm generate``: getting store data in."""

from __future__ import annotations

import click

from clm.context import App, pass_app
from clm_core.ingest.csvfile import ENCODINGS


def _parse_map(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise click.BadParameter(f"{pair!r}: use FIELD=COLUMN, e.g. email='E-mail address'",
                                     param_hint="--map")
        mapping[field.strip()] = column.strip()
    return mapping


def _csv_command(group: click.Group, entity: str, cmd_name: str) -> None:
    @group.command(cmd_name, help=f"Import {entity.replace('_', ' ')} from a CSV file.")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--encoding", type=click.Choice(ENCODINGS), default="auto", show_default=True,
                  help="auto: UTF-16 with BOM, UTF-8 (with or without BOM), GBK/GB18030, "
                  "else Windows-1252.")
    @click.option("--map", "mapping", multiple=True, metavar="FIELD=COLUMN",
                  help="Read FIELD from COLUMN (repeatable).")
    @click.option("--region", help="Country of phone numbers written without +code, e.g. CN "
                  "(default: settings default_region).")
    @click.option(
        "--timezone", "tz", help="Time zone of times without an offset (default: settings)."
    )
    @click.option("--rejects", type=click.Path(dir_okay=False), help="Where to write rows with "
                  "problems (default: <file>-rejects.csv next to the file).")
    @click.option("--strict", is_flag=True, help="Reject a row for a bad optional field too "
                  "(default: drop the field with a warning and keep the row).")
    @click.option("--strict-columns", is_flag=True, help="Refuse a file with columns that match "
                  "no field (default: list them and keep them as attributes).")
    @pass_app
    def command(app: App, file: str, encoding: str, mapping: tuple[str, ...], region: str | None,
                tz: str | None, rejects: str | None, strict: bool, strict_columns: bool) -> None:
        from clm_core.ingest.importer import import_csv

        report = import_csv(
            app.engine,
            entity,
            file,
            encoding=encoding,
            mapping=_parse_map(mapping),
            region=region or app.settings.default_region,
            tz=tz or app.settings.default_timezone,
            rejects=rejects,
            strict=strict,
            strict_columns=strict_columns,
            currency=app.settings.currency,
        )
        for line in report.lines():
            click.echo(line)


def register(cli: click.Group) -> None:
    @cli.group("import")
    def import_() -> None:
        """Import customers, orders, order items or events; or the CDNOW data set."""

    for entity, name in (("customers", "customers"), ("orders", "orders"),
                         ("order_items", "order-items"), ("events", "events")):
        _csv_command(import_, entity, name)

    @import_.command("cdnow")
    @click.option("--sample", is_flag=True, help="The 2,357-customer sample instead of all 23,570.")
    @click.option("--prospects", type=click.IntRange(0), default=0, show_default=True,
                  help="Also add this many sign-ups who never ordered.")
    @pass_app
    def cdnow(app: App, sample: bool, prospects: int) -> None:
        """Load the real CDNOW purchase histories shipped with lifetimes (fake contacts)."""
        from clm_core.ingest.cdnow import import_cdnow

        r = import_cdnow(app.engine, sample=sample, prospects=prospects)
        click.echo(
            f"CDNOW{' sample' if sample else ''}: {r.customers:,} customers"
            f"{f' + {r.prospects:,} prospects' if r.prospects else ''}, {r.orders:,} orders, "
            f"{r.items:,} order lines; new or changed rows: "
            + ", ".join(f"{k} {v:,}" for k, v in r.inserted.items())
        )

    @cli.command()
    @click.option("--customers", "n_customers", type=click.IntRange(1), required=True,
                  help="How many customers (about 8% are prospects with no order).")
    @click.option("--seed", type=int, default=0, show_default=True,
                  help="Random seed: the same seed gives the same data.")
    @click.option("--csv", "csv_dir", type=click.Path(file_okay=False), metavar="DIR",
                  help="Write DIR/customers.csv and DIR/orders.csv (import-ready) instead of "
                  "loading the database.")
    @click.pass_context
    def generate(ctx: click.Context, n_customers: int, seed: int, csv_dir: str | None) -> None:
        """Synthetic customers and orders following the BG/NBD model, for scale tests."""
        from clm_core.ingest import synthetic

        if csv_dir:
            report = synthetic.write_csv(csv_dir, n_customers, seed)
        else:
            app = ctx.find_object(App)
            assert app is not None  # the group callback made it
            report = synthetic.load_synthetic(app.engine, n_customers, seed)
        for line in report.lines():
            click.echo(line)
        if csv_dir:
            click.echo(f"  wrote {csv_dir}/customers.csv and {csv_dir}/orders.csv")
