"""``clm sandbox`` (the local provider server) and ``clm dispatch`` (drain the outbox)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import click

from clm.context import App, pass_app


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option(
        "--port", default=8025, show_default=True, type=int, help="HTTP APIs (0: any free port)."
    )
    @click.option("--smtp-port", default=8026, show_default=True, type=int, help="SMTP (-1: off).")
    @click.option("--faults", metavar="JSON", help='Faults to inject, e.g. \'{"rate_429": 0.2}\'.')
    def sandbox(host: str, port: int, smtp_port: int, faults: str | None) -> None:
        """Run the sandbox provider server: SendGrid, Mailgun, Twilio, Aliyun, Stripe, coupon
        and webhook APIs plus SMTP; stores every request; injects faults on request."""
        from clm_core.delivery.sandbox import SandboxServer
        from clm_core.errors import ConfigError

        server = SandboxServer(host, port, None if smtp_port < 0 else smtp_port)
        if faults:
            try:
                server.store.set_faults(json.loads(faults))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"--faults: {exc}") from exc
        server.start()
        click.echo(
            f"sandbox: {server.url}"
            + (f", SMTP {server.smtp_url}" if smtp_port >= 0 else "")
            + f"; inspect {server.url}/_sandbox/stats",
            err=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

    @cli.command()
    @click.argument("channel", type=click.Choice(["email", "sms", "coupon", "webhook"]))
    @pass_app
    def resume(app: App, channel: str) -> None:
        """Resume a channel the deliverability guard halted (after dealing with the cause:
        complaints usually mean mail people did not ask for)."""
        from clm_core.feedback.guard import resume as resume_channel

        if resume_channel(app.engine, channel):
            click.echo(f"channel {channel} resumed")
        else:
            click.echo(f"channel {channel} was not halted")

    @cli.command()
    @click.option("--limit", type=int, help="Send at most this many messages.")
    @click.option("--wait", default=0.0, show_default=True, type=float, metavar="SECONDS",
                  help="Keep running while retries or deferred messages come due within this time.")
    @click.option(
        "--batch-size", type=int, help="Messages per claim (default: [delivery] batch_size)."
    )
    @click.option(
        "--lanes", type=int, help="Batches in flight at once (default: [delivery] lanes)."
    )
    @click.option("--retry-failed", is_flag=True,
                  help="First requeue every message that failed for good (after fixing the cause).")
    @click.option("--retry-unknown", is_flag=True,
                  help="First requeue every message marked unknown (after checking the provider).")
    @click.option("--reconcile", is_flag=True,
                  help="First settle unknown messages from provider callbacks and the provider's "
                       "list of sent messages: sent, or requeued when the provider never got them.")
    @click.option("-v", "--verbose", is_flag=True)
    @pass_app
    def dispatch(
        app: App,
        limit: int | None,
        wait: float,
        batch_size: int | None,
        lanes: int | None,
        retry_failed: bool,
        retry_unknown: bool,
        reconcile: bool,
        verbose: bool,
    ) -> None:
        """Send due messages from the outbox: claim, check consent, issue coupons, render, send,
        record each outcome; retry transient failures with backoff."""
        from dataclasses import replace

        from clm_core.delivery import outbox
        from clm_core.delivery.config import RedactSecrets, load_delivery_config
        from clm_core.delivery.dispatcher import Dispatcher
        from clm_core.delivery.unsubscribe import signing_key
        from clm_core.errors import ProviderError
        from clm_core.runs import record_run, utcnow

        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactSecrets())
        config = load_delivery_config(app.settings)
        if batch_size is not None:
            config = replace(config, batch_size=batch_size)
        if lanes is not None:
            config = replace(config, lanes=lanes)
        engine = app.engine
        for status, wanted in (("failed", retry_failed), ("unknown", retry_unknown)):
            if wanted:
                click.echo(
                    f"requeued {outbox.requeue(engine, utcnow(), status):,} {status} messages"
                )
        if reconcile:
            click.echo(asyncio.run(_reconcile(engine, config)).summary())
        dispatcher = Dispatcher(engine, app.settings, config, signing_key=signing_key(app.settings))
        with record_run(engine, "dispatch") as run:
            report = asyncio.run(dispatcher.run(limit=limit, wait=wait))
            run.summary = {k: getattr(report, k) for k in
                           ("claimed", "sent", "failed", "unknown", "skipped", "retried")}
            if report.deliverability is not None:
                run.summary["deliverability"] = report.deliverability.as_dict()
            if report.halted:
                run.status = "failed"
        click.echo(report.summary())
        if report.halted:
            raise ProviderError("stopped sending: " + "; ".join(
                f"{ch}: {why}" for ch, why in report.halted.items()))


async def _reconcile(engine: Any, config: Any) -> Any:
    """Expired leases first (they become unknown), then settle what can be settled."""
    from datetime import timedelta

    from clm_core.delivery import outbox
    from clm_core.delivery.providers import build_provider
    from clm_core.delivery.reconcile import reconcile
    from clm_core.runs import utcnow

    providers = {ch: build_provider(cfg) for ch, cfg in config.channels.items()
                 if ch in ("email", "sms")}
    try:
        idempotent = [ch for ch, p in providers.items() if p.idempotent]
        await asyncio.to_thread(outbox.recover_expired, engine, utcnow(), idempotent)
        return await reconcile(engine, providers, utcnow(), timedelta(seconds=config.lease_seconds))
    finally:
        await asyncio.gather(*(p.aclose() for p in providers.values()))
