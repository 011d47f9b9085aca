"""What a run did, read back from the database: the operator's summary and failed-sends list.

Everything here is a query over the schema, so flows, ``clm status`` and ``clm demo`` report
the same numbers. Texts pass through ``redact`` before they leave: provider errors may quote
requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.settings import redact

FINAL_FAILURES = ("failed", "unknown")
STAGE_ORDER = ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated")


@dataclass
class RunSummary:
    since: datetime | None
    stages: dict[str, int] = field(default_factory=dict)
    transitions: dict[tuple[str | None, str], int] = field(default_factory=dict)
    created: dict[tuple[str, str, str], int] = field(
        default_factory=dict
    )  # (journey, channel, status)
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)  # whole outbox now
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for (_, _, s), n in self.outcomes.items() if s in FINAL_FAILURES)

    @property
    def sent(self) -> int:
        return sum(n for (_, _, s), n in self.outcomes.items() if s == "sent")

    @property
    def planned(self) -> int:
        return sum(self.created.values())


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def summarize(engine: Engine, since: datetime | None = None,
              recorded_since: datetime | None = None) -> RunSummary:
    """Stages now; transitions, messages created and send outcomes since ``since`` (the run's
    clock). ``recorded_since`` (the wall clock) picks the transitions and messages written
    since then instead: a backfill writes rows dated in the past."""
    m, tr, cs, mf = t.messages, t.stage_transitions, t.customer_scores, t.model_fits
    out = RunSummary(since)
    with engine.connect() as conn:
        out.stages = dict(sorted(((s or "unscored", n) for s, n in conn.execute(
            sa.select(cs.c.stage, sa.func.count()).group_by(cs.c.stage))),
            key=lambda kv: _stage_key(kv[0])))
        q = sa.select(tr.c.from_stage, tr.c.to_stage, sa.func.count()).group_by(
            tr.c.from_stage, tr.c.to_stage
        )
        if recorded_since is not None:
            q = q.where(tr.c.recorded_at >= recorded_since)
        elif since is not None:
            q = q.where(tr.c.transitioned_at >= since)
        out.transitions = {(a, b): n for a, b, n in conn.execute(q)}
        group = (sa.func.coalesce(m.c.journey, "(none)"), m.c.channel, m.c.status)
        q = sa.select(*group, sa.func.count()).group_by(*group)
        created = (q.where(m.c.recorded_at >= recorded_since) if recorded_since is not None
                   else q.where(m.c.created_at >= since) if since is not None else q)
        out.created = {(j, c, s): n for j, c, s, n in conn.execute(created)}
        done = q.where(m.c.status.in_(("sent", *FINAL_FAILURES)))
        if since is not None:
            done = done.where(m.c.updated_at >= since)
        out.outcomes = {(j, c, s): n for j, c, s, n in conn.execute(done)}
        out.by_status = dict(
            conn.execute(sa.select(m.c.status, sa.func.count()).group_by(m.c.status)).all()
        )
        latest = (
            sa.select(mf.c.model, sa.func.max(mf.c.id).label("id")).group_by(mf.c.model).subquery()
        )
        for row in conn.execute(
            sa.select(mf).join(latest, mf.c.id == latest.c.id).order_by(mf.c.model)
        ):
            out.models.append(
                {
                    "model": row.model,
                    "params": row.params,
                    "log_likelihood": row.log_likelihood,
                    "time_unit": row.time_unit,
                    "window_end": row.window_end,
                    "recorded_at": row.recorded_at,
                    "n_customers": row.n_customers,
                }
            )
    return out


def failed_sends(
    engine: Engine, since: datetime | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Every message that ended failed or unknown (since ``since``), newest first."""
    m, c = t.messages, t.customers
    q = (
        sa.select(
            m.c.id,
            c.c.external_id.label("customer"),
            m.c.journey,
            m.c.step_id.label("step"),
            m.c.channel,
            m.c.provider,
            m.c.status,
            m.c.error_code,
            m.c.error_message,
            m.c.attempts,
            m.c.updated_at,
        )
        .join(c, c.c.id == m.c.customer_id)
        .where(m.c.status.in_(FINAL_FAILURES))
        .order_by(m.c.updated_at.desc(), m.c.id.desc())
    )
    if since is not None:
        q = q.where(m.c.updated_at >= since)
    if limit:
        q = q.limit(limit)
    rows = []
    with engine.connect() as conn:
        for r in conn.execute(q):
            error = " ".join(filter(None, [r.error_code, r.error_message])) or r.status
            rows.append(
                {
                    "message": r.id,
                    "customer": r.customer,
                    "journey": r.journey or "",
                    "step": r.step or "",
                    "channel": r.channel,
                    "provider": r.provider or "",
                    "status": r.status,
                    "error": redact(error)[:500],
                    "attempts": r.attempts,
                    "at": r.updated_at.isoformat(sep=" ", timespec="seconds")
                    if r.updated_at
                    else "",
                }
            )
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["_none_", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return lines + [""]


def summary_markdown(s: RunSummary, title: str = "CLM run summary") -> str:
    """The flow run's markdown artifact."""
    lines = [f"# {title}", ""]
    if s.since:
        lines += [f"Since {s.since:%Y-%m-%d %H:%M:%S} UTC.", ""]
    lines += ["## Customers per stage", ""]
    lines += _table(["stage", "customers"], [[k, f"{v:,}"] for k, v in s.stages.items()])
    lines += ["## Stage transitions", ""]
    lines += _table(["from", "to", "customers"],
                    [[a or "(first stage)", b, f"{n:,}"] for (a, b), n in
                     sorted(s.transitions.items(), key=lambda kv: -kv[1])])
    lines += ["## Messages created", ""]
    lines += _table(["journey", "channel", "status", "messages"],
                    [[*k, f"{n:,}"] for k, n in sorted(s.created.items())])
    lines += ["## Send outcomes", ""]
    lines += _table(["journey", "channel", "status", "messages"],
                    [[*k, f"{n:,}"] for k, n in sorted(s.outcomes.items())])
    lines += ["## Outbox now", ""]
    lines += _table(["status", "messages"], [[k, f"{v:,}"] for k, v in sorted(s.by_status.items())])
    lines += ["## CLV models", ""]
    lines += _table(["model", "parameters", "log-likelihood", "window end", "fitted"],
                    [[f["model"], ", ".join(f"{k}={v:.4g}" for k, v in (f["params"] or {}).items()
                                            if isinstance(v, (int, float))),
                      f"{f['log_likelihood']:.1f}" if f["log_likelihood"] is not None else "",
                      f["window_end"], f["recorded_at"]] for f in s.models])
    return "\n".join(lines)
