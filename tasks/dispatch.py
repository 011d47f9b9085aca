"""Dispatch as tasks: each task drains one chunk of due messages through the dispatcher.

Chunks are claims, not id lists: every task claims up to ``limit`` due messages with a lease
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so tasks on any number of workers never share a
message. Send tasks are never retried by Prefect and never cached: the outbox decides what is
retried, and a Prefect retry after a crash could otherwise resend.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import rate_limit

from clm_core.db import tables as t
from clm_core.delivery.config import DeliveryConfig, RedactSecrets, load_delivery_config
from clm_core.delivery.dispatcher import Dispatcher
from clm_core.delivery.unsubscribe import signing_key
from clm_core.runs import utcnow
from tasks.context import Target, opened

DUE_STATUSES = ("pending", "deferred")

# httpx logs request URLs, and some provider APIs put account ids in the path.
for _name in ("httpx", "httpcore", "clm.delivery"):
    logging.getLogger(_name).addFilter(RedactSecrets())


def due_count(target: Target, now: datetime | None) -> int:
    m = t.messages
    with opened(target) as (_, engine), engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(m).where(
            m.c.status.in_(DUE_STATUSES), m.c.send_after <= (now or utcnow()))) or 0)


def plan_chunks(due: int, chunk_size: int, max_chunks: int) -> int:
    return min(max_chunks, max(1, math.ceil(due / max(1, chunk_size)))) if due else 0


def shared_throttle(config: DeliveryConfig, use_limits: bool) -> Callable[[str, int], Awaitable[None]] | None:
    """Take slots from the Prefect global rate limit of each provider that has a rate (made by
    ``clm limits``); strict, so a missing limit fails the chunk instead of running unthrottled.
    Without a Prefect server there is nothing to share: each provider's own bucket applies."""
    from tasks.limits import limit_name

    limited = {cfg.name for cfg in config.channels.values() if cfg.rate_per_second}
    if not use_limits or not limited:
        return None

    async def throttle(provider: str, n: int) -> None:
        if provider in limited:
            await rate_limit(limit_name(provider), occupy=n, strict=True)

    return throttle


@task(name="dispatch-chunk", task_run_name="dispatch-chunk-{chunk}", cache_policy=NO_CACHE)
async def dispatch_chunk(target: Target, chunk: int, limit: int,
                         now: datetime | None = None) -> dict[str, Any]:
    """Claim, send and record up to ``limit`` due messages."""
    with opened(target) as (settings, engine):
        config = load_delivery_config(settings)
        clock = (lambda: now) if now is not None else utcnow
        dispatcher = Dispatcher(engine, settings, config, signing_key=signing_key(settings),
                                clock=clock, owner=f"chunk-{chunk}-{utcnow():%H%M%S%f}",
                                throttle=shared_throttle(config, bool(os.environ.get("PREFECT_API_URL"))))
        report = await dispatcher.run(limit=limit)
    return {k: getattr(report, k) for k in ("claimed", "sent", "failed", "unknown", "skipped", "retried")} \
        | {"halted": dict(report.halted),
           "deliverability": report.deliverability.as_dict() if report.deliverability else None}
