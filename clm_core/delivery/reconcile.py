"""Settle messages whose outcome is ``unknown`` from what the provider reports.

A dispatcher that dies mid-send leaves the messages it was sending ``unknown``: a provider that
does not deduplicate may or may not have them, so they are never resent blindly. Two sources
settle them:

1. callbacks: a provider event linked to the message (by the key the send carried, e.g.
   Twilio's StatusCallback query) proves the provider had it: ``sent``.
2. the provider's list of sent messages (Twilio's message list by recipient and time): a
   listed message with the same recipient and text (the ``content_digest`` stored when sending
   started) is ours: ``sent`` with its id; when the list has none, the provider never got it:
   back to ``pending`` (safe to resend, consent checked again). Each listed message settles at
   most one of ours, and none already recorded for another message.

Messages of channels whose provider cannot list stay ``unknown`` for an operator.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.delivery.outbox import retrying
from clm_core.delivery.providers.sms import content_digest
from clm_core.errors import ProviderError

m, pe = t.messages, t.provider_events


class Lister(Protocol):
    name: str

    async def list_sent(self, to: str, since: datetime) -> list[dict[str, str]]: ...


@dataclass
class Reconciled:
    by_callback: int = 0
    by_list: int = 0
    requeued: int = 0  # never reached the provider: will be sent
    left: int = 0  # still unknown (no callback, no list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"reconciled unknown messages: {self.by_callback:,} sent (callbacks), "
                f"{self.by_list:,} sent (provider list), {self.requeued:,} never sent (requeued), "
                f"{self.left:,} still unknown")
        return text + ("; " + "; ".join(self.errors) if self.errors else "")


@retrying
def settle_by_callbacks(engine: Engine, now: datetime) -> int:
    """Unknown messages with a provider event about them were accepted: ``sent``."""
    first = (sa.select(sa.func.min(pe.c.occurred_at)).where(pe.c.message_id == m.c.id)
             .scalar_subquery())
    with engine.begin() as conn:
        return int(conn.execute(sa.update(m).where(
            m.c.status == "unknown",
            sa.exists(sa.select(pe.c.id).where(pe.c.message_id == m.c.id))).values(
            status="sent", reason="reconciled_by_callback", sent_at=first, error_code=None,
            error_message=None, lease_owner=None, updated_at=now)).rowcount or 0)


def _unknown(engine: Engine, channel: str) -> list[dict[str, Any]]:
    c = t.customers
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(m.c.id, m.c.updated_at, m.c.content_digest, c.c.phone)
            .join(c, c.c.id == m.c.customer_id)
            .where(m.c.status == "unknown", m.c.channel == channel,
                   m.c.content_digest.is_not(None)))]


def _known_ids(engine: Engine, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(m.c.provider_message_id)
                                           .where(m.c.provider_message_id.in_(ids)))}


@retrying
def _settle(engine: Engine, sent: dict[int, str], requeue: list[int], now: datetime) -> None:
    with engine.begin() as conn:
        if sent:
            conn.execute(sa.update(m).where(m.c.id == sa.bindparam("_id"),
                                            m.c.status == "unknown").values(
                status="sent", reason="reconciled_by_list",
                provider_message_id=sa.bindparam("_sid"), sent_at=now, error_code=None,
                error_message=None, lease_owner=None, updated_at=now),
                [{"_id": i, "_sid": sid} for i, sid in sent.items()])
        if requeue:
            conn.execute(sa.update(m).where(m.c.id.in_(requeue), m.c.status == "unknown").values(
                status="pending", reason="reconciled_not_sent", send_after=now, attempts=0,
                lease_owner=None, error_code=None, error_message=None, updated_at=now))


async def settle_by_list(engine: Engine, channel: str, provider: Lister, now: datetime,
                         lease: timedelta, report: Reconciled) -> None:
    rows = await asyncio.to_thread(_unknown, engine, channel)
    by_phone: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_phone[r["phone"]].append(r)
    sent: dict[int, str] = {}
    requeue: list[int] = []
    for phone, mine in sorted(by_phone.items()):
        # The send started at most one lease before the message was marked unknown.
        since = min(r["updated_at"] for r in mine) - lease * 2
        try:
            listed = await provider.list_sent(phone, since)
        except ProviderError as exc:
            report.errors.append(str(exc))
            continue
        taken = await asyncio.to_thread(_known_ids, engine, [x.get("sid", "") for x in listed])
        free = [x for x in listed if x.get("sid") and x["sid"] not in taken]
        for r in sorted(mine, key=lambda r: r["id"]):
            hit = next((x for x in free
                        if content_digest(str(x.get("to", "")), str(x.get("body", "")))
                        == r["content_digest"]), None)
            if hit is not None:
                free.remove(hit)
                sent[r["id"]] = hit["sid"]
            else:
                requeue.append(r["id"])
    await asyncio.to_thread(_settle, engine, sent, requeue, now)
    report.by_list += len(sent)
    report.requeued += len(requeue)


async def reconcile(engine: Engine, providers: dict[str, Any], now: datetime,
                    lease: timedelta) -> Reconciled:
    """Settle every ``unknown`` message that callbacks or a provider's list can settle."""
    report = Reconciled(by_callback=await asyncio.to_thread(settle_by_callbacks, engine, now))
    for channel, provider in sorted(providers.items()):
        if hasattr(provider, "list_sent"):
            await settle_by_list(engine, channel, provider, now, lease, report)
    with engine.connect() as conn:
        report.left = int(conn.scalar(sa.select(sa.func.count()).where(m.c.status == "unknown"))
                          or 0)
    return report
