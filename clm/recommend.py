"""``clm recommend``: what the recommendations in messages would be, and how well they do."""

from __future__ import annotations

import json

import click

from clm.context import App, pass_app


def register(cli: click.Group) -> None:
    @cli.group("recommend")
    def recommend() -> None:
        """Product recommendations (the `recommendations` of message templates)."""

    @recommend.command("evaluate")
    @click.option("-k", "k", type=click.IntRange(1, 50), default=3, show_default=True,
                  help="Recommendations per customer.")
    @click.option("--periods", type=click.IntRange(1, 120), default=12, show_default=True,
                  help="Time periods of held-out orders; each period's model is fitted on the "
                       "orders before it.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @pass_app
    def evaluate_cmd(app: App, k: int, periods: int, as_json: bool) -> None:
        """Hit rate at k on each customer's last order, beside the most popular products.

        Each customer with two or more orders that have items has their last order held out;
        recommendations come from the orders placed before it only (point in time). A hit: the
        held-out order holds one of the k products. 95% intervals, methods named.
        """
        from clm_core.errors import InputError
        from clm_core.recommend.evaluate import evaluate
        from clm_core.recommend.recommender import read_lines

        with app.engine.connect() as conn:
            lines = read_lines(conn)
        if lines.empty:
            raise InputError("no order items in the store: import them with "
                             "`clm import order-items FILE` (recommendations learn from them)")
        result = evaluate(lines, k=k, periods=periods)
        if not result.customers:
            raise InputError("no customer has two or more orders with items yet: nothing to "
                             "hold out")
        if as_json:
            click.echo(json.dumps(result.as_dict(), indent=2))
            return
        for row in result.lines():
            click.echo(row)
