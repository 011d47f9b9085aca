"""A journey as a Mermaid flowchart: steps, waits, branches with their conditions, splits with
their weights, exits; with entered/reached/converted counts where the store knows them.

``structure`` is the one description of the boxes and arrows; ``mermaid`` writes it as plain
Mermaid (``flowchart TD``), which renders wherever Mermaid does (GitHub, editors), and
``measure.diagram`` draws it as inline SVG for the report and ``clm preview --html``, which may
load no script.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    """Mermaid node text in quotes: quotes and angle brackets as entity codes."""
    return '"' + text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;") + '"'


def _node_id(step_id: str) -> str:
    return "s_" + step_id


@dataclass(frozen=True)
class Node:
    """One box: ``lines`` say what it is, ``counts`` how many got there (where known)."""

    id: str
    kind: str  # start | send | wait | branch | split | exit | goal | end
    lines: tuple[str, ...]
    counts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""
    dashed: bool = False  # the conversion window (start to goal), not a path a customer takes


@dataclass(frozen=True)
class Diagram:
    """A journey as boxes and arrows, drawn by ``mermaid`` (text) and ``measure.diagram``
    (inline SVG) alike, so the two never disagree about a step."""

    journey: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


def _wait_text(step: WaitStep) -> str:
    spec = step.spec
    until = ""
    if spec.until:
        until = f"until {spec.until:%H:%M}" + (
            f" on {','.join(spec.weekdays)}" if spec.weekdays else ""
        )
    return " then ".join(x for x in (format_duration(spec.duration) if spec.duration else "",
                                     until) if x)


def structure(j: CompiledJourney, counts: dict[str, int] | None = None) -> Diagram:
    """The journey's boxes and arrows. ``counts``: ``entered``, ``converted`` and
    ``step:<id>`` (how many enrollments reached that step), where known."""
    counts = counts or {}
    nodes: list[Node] = []
    edges: list[Edge] = []
    entry = j.spec.entry
    if entry.stage is not None:
        trig = f"enters stage {entry.stage.to}" + (f" from {', '.join(entry.stage.from_)}"
                                                   if entry.stage.from_ else "")
    elif entry.tier is not None:
        trig = f"reaches tier {entry.tier.to or 'any'}" + (f" from {', '.join(entry.tier.from_)}"
                                                  if entry.tier.from_ else "")
    elif entry.event is not None:
        trig = f"event {entry.event.type}"
    else:
        trig = "segment: " + condition_text(entry.segment)
    holdout = (f"holdout {j.spec.holdout.percent:g}%",) if j.spec.holdout.percent else ()
    entered = (f"entered {counts['entered']:,}",) if "entered" in counts else ()
    nodes.append(Node("start", "start", (f"{j.name}: {trig}", *holdout), entered))
    edges.append(Edge("start", _node_id(j.first_step)))

    def to(target: str) -> str:
        return "finish" if target == END else _node_id(target)

    for step in j.spec.steps:
        nid = _node_id(step.id)
        reached = counts.get(f"step:{step.id}")
        known = (f"reached {reached:,}",) if reached is not None else ()
        nxt = j.successor[step.id]
        if isinstance(step, SendStep):
            coupon: tuple[str, ...] = ()
            if step.send.coupon is not None:
                c = step.send.coupon
                unit = "%" if c.kind == "percent" else " " + (c.currency or "")
                coupon = (f"coupon {c.value:g}{unit}",)
            nodes.append(Node(nid, "send", (
                f"{step.id}: send {step.send.channel} {step.send.template}", *coupon), known))
            edges.append(Edge(nid, to(step.goto or nxt)))
        elif isinstance(step, WaitStep):
            nodes.append(Node(nid, "wait", (f"{step.id}: wait {_wait_text(step)}",), known))
            edges.append(Edge(nid, to(step.goto or nxt)))
        elif isinstance(step, BranchStep):
            nodes.append(Node(nid, "branch", (f"{step.id}: branch",), known))
            edges.extend(Edge(nid, _node_id(case.goto), condition_text(case.when))
                         for case in step.branch)
            edges.append(Edge(nid, to(step.else_ or nxt), "otherwise"))
        elif isinstance(step, SplitStep):
            total = sum(v.weight for v in step.split)
            nodes.append(Node(nid, "split", (f"{step.id}: split",), known))
            edges.extend(Edge(nid, _node_id(v.goto), f"{v.variant} {v.weight / total:.0%}")
                         for v in step.split)
        elif isinstance(step, ExitStep):
            nodes.append(Node(nid, "exit", (f"{step.id}: exit ({step.exit.reason})",), known))
    goals = ", ".join(g.id for g in j.spec.goals) or "any order"
    converted = (f"converted {counts['converted']:,}",) if "converted" in counts else ()
    nodes.append(Node("goal", "goal", (f"goal: {goals}",), converted))
    edges.append(Edge("start", "goal", f"within {format_duration(j.spec.conversion_window)}",
                      dashed=True))
    if any(e.dst == "finish" for e in edges):
        nodes.append(Node("finish", "end", ("end",)))
    return Diagram(j.name, tuple(nodes), tuple(edges))


_SHAPES = {"start": ("([", "])"), "send": ("[", "]"), "wait": ("{{", "}}"),
           "branch": ("{", "}"), "split": ("{", "}"), "exit": ("([", "])"),
           "goal": ("[/", "/]"), "end": ("([", "])")}


def mermaid(j: CompiledJourney, counts: dict[str, int] | None = None) -> str:
    """The flowchart text. ``counts``: ``entered``, ``converted`` and ``step:<id>`` (how many
    enrollments reached that step), where known."""
    return mermaid_text(structure(j, counts))


def mermaid_text(d: Diagram) -> str:
    """A ``structure`` as Mermaid flowchart text."""
    lines = ["flowchart TD"]
    for n in d.nodes:
        left, right = _SHAPES[n.kind]
        text = "<br/>".join(_label(x)[1:-1] for x in (*n.lines, *n.counts))
        lines.append(f'  {n.id}{left}"{text}"{right}')
    for e in d.edges:
        if e.dashed:
            lines.append(f"  {e.src} -. {_label(e.label)} .-> {e.dst}")
        elif e.label:
            lines.append(f"  {e.src} -- {_label(e.label)} --> {e.dst}")
        else:
            lines.append(f"  {e.src} --> {e.dst}")
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
