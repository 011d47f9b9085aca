"""``clm consent``: a customer's consent and its history; an operator's recorded change."""

from __future__ import annotations

import getpass
import json
import uuid

import click

from clm.context import App, pass_app


def register(cli: click.Group) -> None:
    @cli.group()
    def consent() -> None:
        """Consent per channel and topic, derived from the append-only consent ledger."""

    @consent.command("show")
    @click.argument("customer")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_app
    def show(app: App, customer: str, as_json: bool) -> None:
        """CUSTOMER's (external id) current consent, suppressions and every ledger row."""
        import sqlalchemy as sa

        from clm_core.consent import ledger
        from clm_core.consent.subscriptions import find_subscriber
        from clm_core.db import tables as t
        from clm_core.errors import ConsentError

        with app.engine.connect() as conn:
            sub = find_subscriber(conn, customer)
            if sub is None:
                raise ConsentError(f"no customer with external id {customer!r}")
            rows = ledger.history(conn, sub.customer_id)
            addresses = [a for a in (sub.email, sub.phone) if a]
            suppressed = conn.execute(sa.select(t.suppressions.c.channel, t.suppressions.c.address,
                                                t.suppressions.c.reason, t.suppressions.c.source)
                                      .where(t.suppressions.c.address.in_(addresses))).all()
        if as_json:
            click.echo(json.dumps({
                "customer": customer, "channels": sub.state.channels,
                "withdrawn_topics": {k: sorted(v) for k, v in sub.state.withdrawn_topics.items()},
                "suppressions": [dict(s._mapping) for s in suppressed], "ledger": rows},
                default=str, indent=2))
            return
        for channel, granted in sub.state.channels.items():
            topics = sorted(sub.state.withdrawn_topics.get(channel, ()))
            click.echo(f"{channel:<6} {'granted' if granted else 'withdrawn'}"
                       + (f"  (not: {', '.join(topics)})" if topics else ""))
        for s in suppressed:
            click.echo(f"suppressed {s.channel} {s.address}: {s.reason} ({s.source or '?'})")
        click.echo(f"ledger ({len(rows)} rows):")
        for r in rows:
            click.echo(f"  {r['occurred_at']:%Y-%m-%d %H:%M:%S}  {r['channel']:<5} "
                       f"{(r['topic'] or '*'):<12} {r['action']:<9} {r['source']:<20} "
                       f"{json.dumps(r['evidence'], ensure_ascii=False, default=str)}"
                       + (f"  wording {r['wording_version']}" if r["wording_version"] else ""))

    @consent.command("set")
    @click.argument("customer")
    @click.option("--channel", type=click.Choice(["email", "sms"]), required=True)
    @click.option("--topic", help="Only this topic (a journey tag listed in [consent] topics).")
    @click.option("--grant/--withdraw", required=True, help="Grant or withdraw consent.")
    @click.option("--note", required=True,
                  help="Why, e.g. 'asked by phone, ticket 123': kept as the evidence.")
    @pass_app
    def set_(app: App, customer: str, channel: str, topic: str | None, grant: bool,
             note: str) -> None:
        """Record an operator's change for CUSTOMER (external id), with a note as evidence."""
        from clm_core.consent import ledger
        from clm_core.consent.config import load_consent_config
        from clm_core.consent.subscriptions import find_subscriber
        from clm_core.errors import ConsentError
        from clm_core.runs import utcnow

        config = load_consent_config(app.settings)
        if topic is not None and topic not in config.topics:
            raise ConsentError(f"topic {topic!r} is not in [consent] topics "
                               f"({', '.join(config.topics) or 'none configured'})")
        with app.engine.begin() as conn:
            sub = find_subscriber(conn, customer)
            if sub is None:
                raise ConsentError(f"no customer with external id {customer!r}")
            got = ledger.record_change(
                conn, customer_id=sub.customer_id, channel=channel, topic=topic,
                action="granted" if grant else "withdrawn", source="operator",
                occurred_at=utcnow(), evidence_key=f"operator:{uuid.uuid4().hex}",
                evidence={"note": note, "operator": getpass.getuser()})
        assert got is not None  # a fresh key is never a replay
        click.echo(f"{customer} {channel}{'/' + topic if topic else ''}: "
                   f"{'granted' if grant else 'withdrawn'} (ledger row {got.id}); "
                   f"now {'granted' if got.current else 'withdrawn'}")
