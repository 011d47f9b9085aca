"""A journey as a Mermaid flowchart: steps, waits, branches with their conditions, splits with
their weights, exits; with entered/reached/converted counts where the store knows them.

The text is plain Mermaid (``flowchart TD``), so it renders wherever Mermaid does (GitHub,
editors); the report shows it as preformatted text (no script from a CDN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clm_core.journeys.loader import END, CompiledJourney
from clm_core.journeys.model import (
    BranchStep,
    ExitStep,
    SendStep,
    SplitStep,
    WaitStep,
    format_duration,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

_OPS = {"eq": "=", "ne": "≠", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "in": "in",
        "not_in": "not in", "contains": "contains", "between": "between"}


def condition_text(node: Any) -> str:
    """A condition in short words: ``p_alive < 0.3 and (n_orders = 1 or ...)``."""
    if not isinstance(node, dict):
        return str(node)
    for key, joiner in (("all", " and "), ("any", " or ")):
        if key in node:
            parts = [condition_text(c) for c in node[key]]
            return "(" + joiner.join(parts) + ")" if len(parts) > 1 else parts[0]
    if "not" in node:
        return "not " + condition_text(node["not"])
    name = node.get("field", "?")
    for op, word in _OPS.items():
        if op in node:
            return f"{name} {word} {_value(node[op])}"
    if "exists" in node:
        return f"{name} {'is set' if node['exists'] else 'is empty'}"
    return str(node)


def _value(v: Any) -> str:
    if isinstance(v, dict) and "field" in v:
        times = v.get("times")
        return f"{times} × {v['field']}" if times not in (None, 1) else str(v["field"])
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def _label(text: str) -> str:
    """Mermaid node text in quotes: quotes and angle brackets as entity codes; the line breaks
    this module writes (``BR``) become ``<br/>``."""
    safe = text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    return '"' + safe.replace(BR, "<br/>") + '"'


BR = "\x00"  # a line break inside a label (escaping leaves it alone)


def _node_id(step_id: str) -> str:
    return "s_" + step_id


def mermaid(j: CompiledJourney, counts: dict[str, int] | None = None) -> str:
    """The flowchart text. ``counts``: ``entered``, ``converted`` and ``step:<id>`` (how many
    enrollments reached that step), where known."""
    counts = counts or {}
    lines = ["flowchart TD"]
    entry = j.spec.entry
    if entry.stage is not None:
        trig = f"enters stage {entry.stage.to}" + (f" from {', '.join(entry.stage.from_)}"
                                                   if entry.stage.from_ else "")
    elif entry.event is not None:
        trig = f"event {entry.event.type}"
    else:
        trig = "segment: " + condition_text(entry.segment)
    start = f"{j.name}: {trig}"
    if "entered" in counts:
        start += BR + f"entered {counts['entered']:,}"
    if j.spec.holdout.percent:
        start += BR + f"holdout {j.spec.holdout.percent:g}%"
    lines.append(f"  start([{_label(start)}])")
    lines.append(f"  start --> {_node_id(j.first_step)}")
    ended = False
    for step in j.spec.steps:
        nid = _node_id(step.id)
        reached = counts.get(f"step:{step.id}")
        extra = BR + f"reached {reached:,}" if reached is not None else ""
        nxt = j.successor[step.id]
        if isinstance(step, SendStep):
            coupon = ""
            if step.send.coupon is not None:
                c = step.send.coupon
                coupon = (
                    BR
                    + f"coupon {c.value:g}{'%' if c.kind == 'percent' else ' ' + (c.currency or '')}"  # noqa: E501  (prose or a URL: clearer whole)
                )
            lines.append(
                f"  {nid}[{_label(f'{step.id}: send {step.send.channel} {step.send.template}{coupon}{extra}')}]"  # noqa: E501  (prose or a URL: clearer whole)
            )
            goto = step.goto or nxt
            lines.append(f"  {nid} --> {'finish' if goto == END else _node_id(goto)}")
            ended |= goto == END
        elif isinstance(step, WaitStep):
            spec = step.spec
            what = " then ".join(
                x
                for x in (
                    format_duration(spec.duration) if spec.duration else "",
                    f"until {spec.until:%H:%M}"
                    + (f" on {','.join(spec.weekdays)}" if spec.weekdays else "")
                    if spec.until
                    else "",
                )
                if x
            )
            lines.append(f"  {nid}{{{{{_label(f'{step.id}: wait {what}{extra}')}}}}}")
            goto = step.goto or nxt
            lines.append(f"  {nid} --> {'finish' if goto == END else _node_id(goto)}")
            ended |= goto == END
        elif isinstance(step, BranchStep):
            lines.append(f"  {nid}{{{_label(f'{step.id}: branch{extra}')}}}")
            for case in step.branch:
                lines.append(
                    f"  {nid} -- {_label(condition_text(case.when))} --> {_node_id(case.goto)}"
                )
            other = step.else_ or nxt
            lines.append(f"  {nid} -- {_label('otherwise')} --> "
                         f"{'finish' if other == END else _node_id(other)}")
            ended |= other == END
        elif isinstance(step, SplitStep):
            total = sum(v.weight for v in step.split)
            lines.append(f"  {nid}{{{_label(f'{step.id}: split{extra}')}}}")
            for v in step.split:
                lines.append(f"  {nid} -- {_label(f'{v.variant} {v.weight / total:.0%}')} --> "
                             f"{_node_id(v.goto)}")
        elif isinstance(step, ExitStep):
            lines.append(f"  {nid}([{_label(f'{step.id}: exit ({step.exit.reason}){extra}')}])")
    goals = ", ".join(g.id for g in j.spec.goals) or "any order"
    conv = BR + f"converted {counts['converted']:,}" if "converted" in counts else ""
    lines.append(f"  goal[/{_label(f'goal: {goals}{conv}')}/]")
    lines.append("  start -. " + _label(f"within {format_duration(j.spec.conversion_window)}")
                 + " .-> goal")
    if ended:
        lines.append(f"  finish([{_label('end')}])")
    return "\n".join(lines) + "\n"


def journey_counts(conn: Connection, journey: str) -> dict[str, int]:
    """entered, converted (attributed goals) and step:<id> reach counts of one journey."""
    import sqlalchemy as sa

    from clm_core.db import tables as t

    e, m, a = t.journey_enrollments, t.messages, t.attributions
    out = {
        "entered": int(
            conn.execute(sa.select(sa.func.count()).where(e.c.journey == journey)).scalar() or 0
        )
    }
    if not out["entered"]:
        return {}
    out["converted"] = int(conn.execute(sa.select(sa.func.count()).where(
        a.c.journey == journey, a.c.goal.is_not(None))).scalar() or 0)
    for step, n in conn.execute(
        sa.select(m.c.step_id, sa.func.count(sa.distinct(m.c.enrollment_id)))
        .where(m.c.journey == journey)
        .group_by(m.c.step_id)
    ):
        out[f"step:{step}"] = int(n)
    return out
