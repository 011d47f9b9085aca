"""Load a journey file into a ``CompiledJourney``, collecting every problem with its location.

Checks beyond the schema: step ids unique, every ``goto`` names a step ("did you mean"), no
cycles, conditions compile against the customer fields; lint warnings for unreachable steps, a
journey without goal or exit, coupons without expiry, SMS without quiet hours and waits longer
than the re-entry gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clm_core.conditions import Condition, collect_problems
from clm_core.errors import Problem, SpecError
from clm_core.journeys.fields import FIELDS, STAGES
from clm_core.journeys.model import (
    BranchStep,
    ExitStep,
    Journey,
    ProjectPolicy,
    SendStep,
    SplitStep,
    WaitStep,
)
from clm_core.suggest import did_you_mean
from clm_core.yamlspec import Locator, parse_yaml, problems_from_pydantic

END = "_end"  # the virtual step after the last one (ids cannot start with "_")


@dataclass
class CompiledJourney:
    """A validated journey with its conditions compiled and its step graph resolved."""

    spec: Journey
    source: str
    file: str
    version: int = 0  # assigned by the store (journey_versions)
    audience: Condition | None = None
    segment: Condition | None = None
    goal_conditions: dict[str, Condition] = field(default_factory=dict)
    cases: dict[str, list[tuple[Condition, str]]] = field(default_factory=dict)
    successor: dict[str, str] = field(default_factory=dict)  # default next step (END at the end)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> tuple[str, int]:
        return (self.spec.name, self.version)

    @property
    def fields(self) -> set[str]:
        """Customer fields the journey's conditions read."""
        conds = [self.audience, self.segment, *self.goal_conditions.values(),
                 *(c for cases in self.cases.values() for c, _ in cases)]
        return set().union(*(c.fields for c in conds if c is not None))

    @property
    def first_step(self) -> str:
        return self.spec.steps[0].id

    def step(self, step_id: str) -> Any:
        return self.steps_by_id[step_id]

    @property
    def steps_by_id(self) -> dict[str, Any]:
        return {s.id: s for s in self.spec.steps}


def _targets(step: Any, successor: str) -> list[tuple[str, tuple[Any, ...]]]:
    """(target step, path of the reference) for each way out of ``step``."""
    if isinstance(step, BranchStep):
        out = [(c.goto, ("branch", i, "goto")) for i, c in enumerate(step.branch)]
        return out + [(step.else_ or successor, ("else",))]
    if isinstance(step, SplitStep):
        return [(v.goto, ("split", i, "goto")) for i, v in enumerate(step.split)]
    if isinstance(step, ExitStep):
        return []
    return [(step.goto or successor, ("goto",))]


def _pre_check_steps(data: Any, loc: Locator) -> list[Problem]:
    """Steps without exactly one action key, reported with a hint before pydantic's union."""
    problems: list[Problem] = []
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return problems
    kinds = ("send", "wait", "branch", "split", "exit")
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            problems.append(loc.problem(("steps", i), f"a step is a mapping with an id and one of "
                                        f"{', '.join(kinds)}, got {step!r}"))
            continue
        found = [k for k in kinds if k in step]
        if len(found) > 1:
            problems.append(loc.problem(("steps", i, found[1]), f"a step does one thing; this one "
                                        f"has {' and '.join(found)} (split it into two steps)"))
        elif not found:
            unknown = [k for k in step if k not in ("id", "goto", "else")]
            hint = did_you_mean(str(unknown[0]), kinds) if unknown else ""
            where = ("steps", i, unknown[0]) if unknown else ("steps", i)
            problems.append(loc.problem(where, f"step {step.get('id', i)!r} has no action"
                                        + (f"; unknown key {unknown[0]!r}{hint}" if unknown else "")
                                        + f": use one of {', '.join(kinds)}"))
    return problems


def parse_journey(text: str, file: str, policy: ProjectPolicy | None = None) -> CompiledJourney:
    """Validate and compile journey YAML; raise SpecError with every error (warnings kept)."""
    data, loc = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError(
            [Problem(file, 1, 1, "a journey file is a mapping with name, entry and steps")]
        )
    problems = _pre_check_steps(data, loc)
    try:
        spec = Journey.model_validate(data)
    except ValidationError as exc:
        # the pre-check already explained every step without exactly one action
        problems += [replace(p, message=p.message.replace("Value error, ", ""))
                     for p in problems_from_pydantic(exc, loc, Journey)
                     if "exactly one of send, wait" not in p.message]
        raise SpecError(problems) from None
    if problems:
        raise SpecError(problems)
    journey = CompiledJourney(spec=spec, source=text, file=file)
    problems = _compile(journey, data, loc, policy or ProjectPolicy())
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise SpecError(problems)
    journey.warnings = problems
    return journey


def load_journey(path: str | Path, policy: ProjectPolicy | None = None) -> CompiledJourney:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError([Problem(str(p), None, None, f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            [
                Problem(
                    str(p),
                    line,
                    column,
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
                )
            ]
        ) from None
    return parse_journey(text, str(p), policy)


def stage_refs(spec: Journey) -> list[tuple[str, tuple[Any, ...]]]:
    """(stage name, key path) of every stage a journey names, in its entry and its goals."""
    refs: list[tuple[str, tuple[Any, ...]]] = []
    if spec.entry.stage:
        refs.append((spec.entry.stage.to, ("entry", "stage", "to")))
        refs += [
            (s, ("entry", "stage", "from", i)) for i, s in enumerate(spec.entry.stage.from_ or [])
        ]
    for i, goal in enumerate(spec.goals):
        refs += [(s, ("goals", i, "stage", k)) for k, s in enumerate(goal.stage or [])]
    return refs


def _compile(j: CompiledJourney, data: dict[str, Any], loc: Locator,
             policy: ProjectPolicy) -> list[Problem]:
    spec = j.spec
    problems: list[Problem] = []

    def cond(node: Any, path: tuple[Any, ...]) -> Condition | None:
        compiled, found = collect_problems(node, FIELDS, loc, path)
        problems.extend(found)
        return compiled

    if spec.audience is not None:
        j.audience = cond(spec.audience, ("audience",))
    if spec.entry.segment is not None:
        j.segment = cond(spec.entry.segment, ("entry", "segment"))
    goal_ids: set[str] = set()
    for i, goal in enumerate(spec.goals):
        if goal.id in goal_ids:
            problems.append(loc.problem(("goals", i, "id"), f"goal id {goal.id!r} is used twice"))
        goal_ids.add(goal.id)
        if goal.condition is not None:
            c = cond(goal.condition, ("goals", i, "condition"))
            if c is not None:
                j.goal_conditions[goal.id] = c
    for name, path in stage_refs(spec):
        if name not in STAGES:
            problems.append(
                loc.problem(
                    path,
                    f"unknown stage {name!r}{did_you_mean(name, STAGES)}; "
                    f"stages: {', '.join(STAGES)}",
                    "warning",
                )
            )

    # step graph
    ids = spec.step_ids()
    index: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in index:
            problems.append(loc.problem(("steps", i, "id"), f"step id {sid!r} is used twice "
                                        f"(first at step {index[sid] + 1})"))
        index.setdefault(sid, i)
    j.successor = {sid: (ids[i + 1] if i + 1 < len(ids) else END) for i, sid in enumerate(ids)}
    graph: dict[str, list[str]] = {}
    for i, step in enumerate(spec.steps):
        outs = []
        for target, path in _targets(step, j.successor[step.id]):
            if target != END and target not in index:
                problems.append(
                    loc.problem(
                        ("steps", i, *path),
                        f"unknown step {target!r}"
                        f"{did_you_mean(target, ids)}; steps: {', '.join(ids)}",
                    )
                )
            else:
                outs.append(target)
        graph[step.id] = outs
        if isinstance(step, BranchStep):
            compiled_cases = []
            for k, case in enumerate(step.branch):
                c = cond(case.when, ("steps", i, "branch", k, "when"))
                if c is not None:
                    compiled_cases.append((c, case.goto))
            j.cases[step.id] = compiled_cases
        if isinstance(step, SplitStep):
            names = [v.variant for v in step.split]
            if len(set(names)) != len(names):
                problems.append(
                    loc.problem(("steps", i, "split"), "split variants need distinct names")
                )
    problems += _cycles(graph, index, loc)
    problems += _lints(j, graph, index, loc, policy)
    return problems


def _cycles(graph: dict[str, list[str]], index: dict[str, int], loc: Locator) -> list[Problem]:
    """A goto that leads back to an earlier step would loop forever: report each back edge."""
    problems = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if nxt == END:
                continue
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
                problems.append(loc.problem(("steps", index[node]), "steps form a cycle: "
                                            + " -> ".join(dict.fromkeys(cycle)) + f" -> {nxt}; "
                                            "journeys run forward only"))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    return problems


def _lints(j: CompiledJourney, graph: dict[str, list[str]], index: dict[str, int], loc: Locator,
           policy: ProjectPolicy) -> list[Problem]:
    spec = j.spec
    warn: list[Problem] = []

    def w(path: tuple[Any, ...], message: str) -> None:
        warn.append(loc.problem(path, message, "warning"))

    reachable: set[str] = set()
    todo = [spec.steps[0].id]
    while todo:
        node = todo.pop()
        if node in reachable or node == END:
            continue
        reachable.add(node)
        todo += graph.get(node, [])
    for sid, i in index.items():
        if sid not in reachable:
            w(("steps", i, "id"), f"step {sid!r} can never be reached")
    has_exit = any(isinstance(s, ExitStep) for s in spec.steps)
    if not spec.goals and not has_exit:
        w(("steps",), "the journey has neither goals nor an exit step: nothing measures or ends it")
    quiet = spec.contact_policy.quiet_hours_window or policy.quiet_hours
    gap = spec.entry.reentry.min_gap or spec.entry.reentry.every
    for i, step in enumerate(spec.steps):
        if isinstance(step, SendStep):
            if step.send.coupon and step.send.coupon.expires_in_days is None:
                w(("steps", i, "send", "coupon"), "coupon without expiry: add expires_in_days")
            if step.send.channel == "sms" and not quiet.enabled:
                w(("steps", i, "send"), "SMS without quiet hours: texts may arrive at night")
        if isinstance(step, WaitStep) and gap is not None:
            wait = step.spec.duration
            if wait is not None and wait > gap:
                w(("steps", i, "wait"), f"this wait is longer than the re-entry gap "
                  f"({spec.entry.reentry.policy}): customers may qualify again while waiting")
    return warn
