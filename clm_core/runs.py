"""The ``runs`` table: one row per evaluation, dispatch or fit, for ``clm status``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t


def utcnow() -> datetime:
    """Naive UTC, the schema's time convention."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class Run:
    id: str
    kind: str
    started_at: datetime
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"


@contextmanager
def record_run(engine: Engine, kind: str, flow_run_id: str | None = None,
               run_id: str | None = None) -> Iterator[Run]:
    """Record a run; it ends ``failed`` if the block raises or sets ``run.status``."""
    run = Run(run_id or uuid.uuid4().hex, kind, utcnow())
    with engine.begin() as conn:
        conn.execute(sa.insert(t.runs).values(id=run.id, kind=kind, started_at=run.started_at,
                                              status="running", flow_run_id=flow_run_id))
    try:
        yield run
    except BaseException:
        run.status = "failed"
        raise
    finally:
        with engine.begin() as conn:
            conn.execute(sa.update(t.runs).where(t.runs.c.id == run.id).values(
                finished_at=utcnow(), status=run.status, summary=run.summary or None))


def last_runs(engine: Engine, limit: int = 10) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.runs).order_by(t.runs.c.started_at.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]
