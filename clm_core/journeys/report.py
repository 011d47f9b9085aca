"""Readable and CSV forms of a plan, for ``clm plan``."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.journeys.engine import DONE, Plan


def _counts(series: pd.Series) -> str:
    c = series.value_counts()
    return ", ".join(f"{k} {v:,}" for k, v in c.items()) or "-"


def summary_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    """One block per journey: version, entries, exits by reason, messages by status and reason."""
    plan: Plan = result.plan
    e, m = plan.enrollments, plan.messages
    lines = [f"plan at {plan.now:%Y-%m-%d %H:%M} UTC (dry run: nothing was written)"]
    for j in sorted(result.journeys, key=lambda j: j.name):
        je, jm = e[e["journey"] == j.name], m[m["journey"] == j.name]
        new = je[je["is_new"]]
        lines.append(f"\n{j.name} v{j.version} ({j.spec.status}, "
                     f"{result.versions.get(j.name, 'same')} definition)")
        lines.append(f"  enter     {len(new):,} (control {int(new['is_control'].sum()):,})")
        ended = je[je["status"].isin(DONE)]
        lines.append(f"  leave     {len(ended):,}: {_counts(ended['exit_reason'])}")
        moving = je[(je["status"] == "active") & ~je["is_new"]]
        lines.append(f"  advance   {len(moving):,} enrollments move on")
        for status in ("pending", "deferred", "skipped"):
            part = jm[jm["status"] == status]
            why = f" ({_counts(part['reason'])})" if status != "pending" and len(part) else ""
            lines.append(f"  {status:<9} {len(part):,} messages{why}")
        if len(jm):
            lines.append(f"  by step   {_counts(jm['step_id'] + '/' + jm['channel'])}")
    return lines


def decisions(db: Engine, plan: Plan) -> pd.DataFrame:
    """Every entry, exit, advance (the step an enrollment now waits at, and until when) and
    message of the plan, one row each, with external customer ids."""
    e, m = plan.enrollments, plan.messages
    rows = [
        pd.DataFrame(
            {
                "kind": "enter",
                "journey": e.loc[e["is_new"], "journey"],
                "customer_id": e.loc[e["is_new"], "customer_id"],
                "status": e.loc[e["is_new"], "is_control"].map({True: "control", False: "treated"}),
                "reason": None,
            }
        ),
        pd.DataFrame(
            {
                "kind": "leave",
                "journey": e.loc[e["status"].isin(DONE), "journey"],
                "customer_id": e.loc[e["status"].isin(DONE), "customer_id"],
                "status": e.loc[e["status"].isin(DONE), "status"],
                "reason": e.loc[e["status"].isin(DONE), "exit_reason"],
            }
        ),
        m.assign(kind="message")[
            [
                "kind",
                "journey",
                "customer_id",
                "step_id",
                "channel",
                "template",
                "status",
                "reason",
                "send_after",
            ]
        ],
    ]
    moved = e[(e["status"] == "active") & ~e["is_new"]]
    rows.append(
        pd.DataFrame(
            {
                "kind": "advance",
                "journey": moved["journey"],
                "customer_id": moved["customer_id"],
                "step_id": moved["current_step"],
                "status": "active",
                "reason": None,
                "send_after": moved["step_due_at"],
            }
        )
    )
    out = pd.concat(rows, ignore_index=True)
    with db.connect() as conn:
        ext = dict(conn.execute(sa.select(t.customers.c.id, t.customers.c.external_id)).all())
    out.insert(2, "customer", out["customer_id"].map(ext))
    return out.drop(columns=["customer_id"])
