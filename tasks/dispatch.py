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

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient, get_client

from clm_core.db import tables as t
from clm_core.delivery.config import DeliveryConfig, RedactSecrets, load_delivery_config
from clm_core.delivery.dispatcher import Dispatcher, DispatchReport
from clm_core.delivery.unsubscribe import signing_key
from clm_core.runs import utcnow
from tasks.context import Target, opened
from tasks.limits import limit_name, limit_slots, shared_limit

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


def shared_throttle(config: DeliveryConfig,
                    client: PrefectClient) -> Callable[[str], Awaitable[None]] | None:
    """Before each request to a provider that has a rate, take one slot of its Prefect global
    rate limit (made by ``clm limits``); a missing limit stops that channel (its messages wait)
    instead of running unthrottled. None when no provider has a rate."""
    limits = {cfg.name: shared_limit(limit_name(cfg.name), limit_slots(cfg.rate_per_second),
                                     cfg.rate_per_second)
              for cfg in config.channels.values() if cfg.rate_per_second}
    if not limits:
        return None

    async def throttle(provider: str) -> None:
        if provider in limits:
            await limits[provider].take(client)

    return throttle


@task(name="dispatch-chunk", task_run_name="dispatch-chunk-{chunk}", cache_policy=NO_CACHE)
async def dispatch_chunk(target: Target, chunk: int, limit: int,
                         now: datetime | None = None) -> DispatchReport:
    """Claim, send and record up to ``limit`` due messages."""
    with opened(target) as (settings, engine):
        config = load_delivery_config(settings)
        clock = (lambda: now) if now is not None else utcnow
        owner = f"chunk-{chunk}-{utcnow():%H%M%S%f}"
        if not os.environ.get("PREFECT_API_URL"):  # no server: nothing to share limits through
            return await Dispatcher(engine, settings, config, signing_key=signing_key(settings),
                                    clock=clock, owner=owner).run(limit=limit)
        async with get_client() as client:
            dispatcher = Dispatcher(engine, settings, config, signing_key=signing_key(settings),
                                    clock=clock, owner=owner,
                                    throttle=shared_throttle(config, client))
            return await dispatcher.run(limit=limit)
