"""What the unsubscribe and preferences pages do, as plain functions over the database.

Both act through the ledger in one transaction. Their evidence keys are state-relative
(``<action>:<token id>:<channel>:<topic>:after:<id of the current ledger row>``): the same
token pressed twice, or two presses racing, writes one row (the second finds the key taken or
the state already as asked), while a person who opted back in can still use an old link again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.consent import ledger
from clm_core.consent.tokens import Claims
from clm_core.db import tables as t
from clm_core.delivery.outbox import retrying


@dataclass(frozen=True)
class Subscriber:
    customer_id: int
    external_id: str
    locale: str | None
    email: str | None
    phone: str | None
    state: ledger.ConsentState

    def address(self, channel: str) -> str | None:
        return self.email if channel == "email" else self.phone


def find_subscriber(conn: sa.Connection, external_id: str) -> Subscriber | None:
    c = t.customers
    row = conn.execute(sa.select(c.c.id, c.c.external_id, c.c.locale, c.c.email, c.c.phone)
                       .where(c.c.external_id == external_id)).first()
    if row is None:
        return None
    return Subscriber(int(row.id), row.external_id, row.locale, row.email, row.phone,
                      ledger.consent_state(conn, int(row.id)))


def load_subscriber(engine: Engine, claims: Claims) -> Subscriber | None:
    with engine.connect() as conn:
        return find_subscriber(conn, claims.customer)


@dataclass(frozen=True)
class Changed:
    subscriber: Subscriber | None  # as it is after the change
    rows: int  # ledger rows written (0: nothing changed)


def _set(conn: sa.Connection, sub: Subscriber, claims: Claims, *, channel: str,
         topic: str | None, granted: bool, source: str, now: datetime,
         evidence: Mapping[str, Any], wording_version: str) -> bool:
    """Record one choice unless it is already the current state; True when a row was written."""
    now_granted = (ledger.current_consent(conn, sub.customer_id, channel) if topic is None
                   else ledger.topic_choice(conn, sub.customer_id, channel, topic))
    if now_granted == granted and not (source == "unsubscribe"
                                       and _opt_out_missing(conn, sub, channel)):
        return False
    head = ledger.head_id(conn, sub.customer_id, channel, topic)
    key = f"{source}:{claims.token_id}:{channel}:{topic or '*'}:after:{head}"
    return ledger.record_change(
        conn, customer_id=sub.customer_id, channel=channel, topic=topic,
        action="granted" if granted else "withdrawn", source=source, occurred_at=now,
        evidence_key=key, evidence={**evidence, "token_id": claims.token_id,
                                    "key_id": claims.key_id},
        wording_version=wording_version) is not None


def _opt_out_missing(conn: sa.Connection, sub: Subscriber, channel: str) -> bool:
    """A customer without consent whose address carries no suppression yet: an unsubscribe
    still records the wish (and suppresses the address), so a later import cannot undo it."""
    address = sub.address(channel)
    if not address:
        return False
    return conn.scalar(sa.select(sa.func.count()).select_from(t.suppressions).where(
        t.suppressions.c.channel == channel, t.suppressions.c.address == address)) == 0


@retrying
def unsubscribe(engine: Engine, claims: Claims, *, now: datetime, evidence: Mapping[str, Any],
                wording_version: str) -> Changed:
    """Withdraw the token's channel (RFC 8058 one-click); idempotent."""
    with engine.begin() as conn:
        sub = find_subscriber(conn, claims.customer)
        if sub is None:
            return Changed(None, 0)
        wrote = _set(conn, sub, claims, channel=claims.channel, topic=None, granted=False,
                     source="unsubscribe", now=now, evidence=evidence,
                     wording_version=wording_version)
        return Changed(find_subscriber(conn, claims.customer), int(wrote))


@retrying
def save_preferences(engine: Engine, claims: Claims, choices: Mapping[tuple[str, str | None], bool],
                     *, now: datetime, evidence: Mapping[str, Any],
                     wording_version: str) -> Changed:
    """Apply the preferences form: ``choices[(channel, topic or None)] = wanted``. Only what
    differs from the current state is written. A topic's choice is its own (it applies while
    its channel is on), so it is kept and shown even while the channel is off."""
    with engine.begin() as conn:
        sub = find_subscriber(conn, claims.customer)
        if sub is None:
            return Changed(None, 0)
        rows = 0
        for (channel, topic), wanted in choices.items():
            rows += _set(conn, sub, claims, channel=channel, topic=topic, granted=wanted,
                         source="preferences", now=now, evidence=evidence,
                         wording_version=wording_version)
        return Changed(find_subscriber(conn, claims.customer), rows)
