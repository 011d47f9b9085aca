"""Dispatch as tasks: each task drains one chunk of due messages through the dispatcher.

Chunks are claims, not id lists: every task claims up to ``limit`` due messages with a lease
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so tasks on any number of workers never share a
message. Send tasks are never retried by Prefect and never cached: the outbox decides what is
retried, and a Prefect retry after a crash could otherwise resend.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from clm_core.db import tables as t
from clm_core.runs import utcnow
from tasks.context import Target, opened

DUE_STATUSES = ("pending", "deferred")


def due_count(target: Target, now: datetime | None) -> int:
    m = t.messages
    with opened(target) as (_, engine), engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(m).where(
            m.c.status.in_(DUE_STATUSES), m.c.send_after <= (now or utcnow()))) or 0)


def plan_chunks(due: int, chunk_size: int, max_chunks: int) -> int:
    return min(max_chunks, max(1, math.ceil(due / max(1, chunk_size)))) if due else 0


@task(name="dispatch-chunk", task_run_name="dispatch-chunk-{chunk}", cache_policy=NO_CACHE)
async def dispatch_chunk(target: Target, chunk: int, limit: int,
                         now: datetime | None = None) -> dict[str, Any]:
    """Claim, send and record up to ``limit`` due messages."""
    from clm_core.delivery.config import load_delivery_config
    from clm_core.delivery.dispatcher import Dispatcher
    from clm_core.delivery.unsubscribe import signing_key

    with opened(target) as (settings, engine):
        clock = (lambda: now) if now is not None else utcnow
        dispatcher = Dispatcher(engine, settings, load_delivery_config(settings),
                                signing_key=signing_key(settings), clock=clock,
                                owner=f"chunk-{chunk}-{utcnow():%H%M%S%f}")
        report = await dispatcher.run(limit=limit)
    return {k: getattr(report, k) for k in ("claimed", "sent", "failed", "unknown", "skipped", "retried")} \
        | {"halted": dict(report.halted)}
