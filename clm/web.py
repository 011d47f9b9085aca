"""``clm serve``: the web service (unsubscribe, preferences, clicks, provider callbacks)."""

from __future__ import annotations

import logging
import sys

import click

from clm.context import App, pass_app


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Interface to listen on (behind a reverse proxy: keep 127.0.0.1).")
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
    @click.option(
        "--grace",
        default=10,
        show_default=True,
        type=click.IntRange(0),
        metavar="SECONDS",
        help="On SIGTERM/SIGINT, wait this long for requests in flight to finish.",
    )
    @click.option("--proxy-headers/--no-proxy-headers", default=True, show_default=True,
                  help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips.")
    @click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True)
    @pass_app
    def serve(app: App, host: str, port: int, grace: int, proxy_headers: bool,
              forwarded_allow_ips: str) -> None:
        """Run the web service on uvicorn: one-click unsubscribe, preferences, click tracking,
        provider callbacks and a health check (GET /healthz)."""
        from clm_core.delivery.config import RedactSecrets
        from clm_core.web.app import create_app
        from clm_core.web.serving import serve_forever

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RedactSecrets())
        access = logging.getLogger("clm.web.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
        asgi = create_app(app.settings, app.engine)
        click.echo(f"clm serve: http://{host}:{port} (public_base_url "
                   f"{app.settings.public_base_url})", err=True)
        serve_forever(asgi, host, port, grace=grace, proxy_headers=proxy_headers,
                      forwarded_allow_ips=forwarded_allow_ips)
        click.echo("clm serve: stopped", err=True)
