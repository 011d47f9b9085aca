"""What the journeys did, read back from the database in terms a store owner uses.

Per journey: who entered (treated and control), what was sent, what was held back and why,
who reached the journey's goal, and who is still waiting and until when. Conversion rates come
with 95% Wilson score intervals, and treated vs control with Newcombe's hybrid score interval
for the difference; a difference whose interval includes zero is reported as no evidence.
Everything is a query over the schema, so ``clm demo`` and any later look agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.journeys.loader import CompiledJourney
from clm_core.journeys.model import BranchStep

Z95 = 1.959964

# Reason codes of skipped and deferred messages, in words (completing "N messages ...").
REASONS = {
    "control_group": "held back: the control group that measures what the journey adds",
    "no_consent": "without consent for the channel",
    "no_consent_topic": "to customers who opted out of the journey's topic",
    "no_address": "without an address for the channel",
    "suppressed": "to customers who unsubscribed or bounced before",
    "quiet_hours": "wait for the customer's daytime (quiet hours)",
}


def reason_words(code: str | None) -> str:
    if not code:
        return "are due"
    if code.startswith("frequency_cap"):
        return "wait: the customer already got the most messages allowed in the period"
    return REASONS.get(code, code.replace("_", " "))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of p1 - p2."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@dataclass
class Group:
    entered: int = 0
    converted: int = 0

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.converted, self.entered)


@dataclass
class JourneyOutcome:
    journey: str
    treated: Group = field(default_factory=Group)
    control: Group = field(default_factory=Group)
    sent: dict[str, int] = field(default_factory=dict)  # template -> messages sent
    held: dict[str, int] = field(default_factory=dict)  # reason -> messages skipped
    waiting: dict[str, tuple[int, datetime, datetime]] = field(default_factory=dict)
    failed: int = 0
    in_progress: int = 0  # enrollments still active
    next_due: tuple[datetime, datetime] | None = None  # earliest, latest step due

    @property
    def difference(self) -> tuple[float, float, float] | None:
        """Treated minus control conversion rate and its 95% interval (None without both)."""
        if not self.treated.entered or not self.control.entered:
            return None
        lo, hi = newcombe(self.treated.converted, self.treated.entered,
                          self.control.converted, self.control.entered)
        return self.treated.rate - self.control.rate, lo, hi


def journey_outcomes(engine: Engine) -> list[JourneyOutcome]:
    """Every journey that has enrollments or messages, by name."""
    e, m = t.journey_enrollments, t.messages
    out: dict[str, JourneyOutcome] = {}

    def get(name: str) -> JourneyOutcome:
        return out.setdefault(name, JourneyOutcome(name))

    with engine.connect() as conn:
        converted = sa.func.sum(sa.case((e.c.converted_at.is_not(None), 1), else_=0))
        for name, control, n, k in conn.execute(
                sa.select(e.c.journey, e.c.is_control, sa.func.count(), converted)
                .group_by(e.c.journey, e.c.is_control)):
            group = get(name).control if control else get(name).treated
            group.entered, group.converted = int(n), int(k or 0)
        for name, n, first, last in conn.execute(
                sa.select(e.c.journey, sa.func.count(), sa.func.min(e.c.step_due_at),
                          sa.func.max(e.c.step_due_at))
                .where(e.c.status == "active").group_by(e.c.journey)):
            get(name).in_progress = int(n)
            get(name).next_due = (first, last) if first is not None else None
        journey = sa.func.coalesce(m.c.journey, "(none)")
        for name, template, status, reason, n, first, last in conn.execute(
                sa.select(journey, m.c.template, m.c.status, m.c.reason, sa.func.count(),
                          sa.func.min(m.c.send_after), sa.func.max(m.c.send_after))
                .group_by(journey, m.c.template, m.c.status, m.c.reason)):
            o, n = get(name), int(n)
            if status == "sent":
                o.sent[template or "?"] = o.sent.get(template or "?", 0) + n
            elif status == "skipped":
                o.held[reason or "?"] = o.held.get(reason or "?", 0) + n
            elif status in ("pending", "deferred", "claimed"):
                was = o.waiting.get(reason or "", (0, first, last))
                o.waiting[reason or ""] = (was[0] + n, min(was[1], first), max(was[2], last))
            elif status in ("failed", "unknown"):
                o.failed += n
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class SentExample:
    sent_at: datetime
    customer: str
    name: str | None
    journey: str
    template: str
    channel: str
    entered_at: datetime
    stage: str | None


def sent_examples(engine: Engine, limit: int = 5) -> list[SentExample]:
    """A few sent messages, one per journey where possible (the first sent of each)."""
    m, c, e, s = t.messages, t.customers, t.journey_enrollments, t.customer_scores
    first = (sa.select(m.c.journey, sa.func.min(m.c.id).label("id"))
             .where(m.c.status == "sent").group_by(m.c.journey).subquery())
    q = (sa.select(m.c.sent_at, c.c.external_id, c.c.name, m.c.journey, m.c.template,
                   m.c.channel, e.c.entered_at, s.c.stage)
         .join(first, first.c.id == m.c.id)
         .join(c, c.c.id == m.c.customer_id)
         .join(e, e.c.id == m.c.enrollment_id, isouter=True)
         .join(s, s.c.customer_id == m.c.customer_id, isouter=True)
         .order_by(m.c.sent_at).limit(limit))
    with engine.connect() as conn:
        return [SentExample(r.sent_at, r.external_id, r.name, r.journey or "", r.template or "",
                            r.channel, r.entered_at, r.stage) for r in conn.execute(q)]


@dataclass(frozen=True)
class Step:
    as_of: str
    now: datetime
    seconds: float | None
    status: str
    transitions: int
    entered: int
    sent: int
    converted: int


def simulated_steps(engine: Engine) -> list[Step]:
    """The simulated lifecycle runs, oldest first, with what happened on each step's clock:
    stage changes as of its day, entries at its clock, sends and goals reached since the
    previous step."""
    r, tr, e, m = t.runs, t.stage_transitions, t.journey_enrollments, t.messages
    with engine.connect() as conn:
        rows = [row for row in conn.execute(
            sa.select(r.c.started_at, r.c.finished_at, r.c.status, r.c.summary)
            .where(r.c.kind == "lifecycle").order_by(r.c.started_at))
            if row.summary and row.summary.get("simulated") and row.summary.get("now")]
        steps, previous = [], None
        for row in rows:
            now = datetime.fromisoformat(str(row.summary["now"]))
            as_of = str(row.summary.get("as_of"))
            since = previous or datetime(1900, 1, 1)

            def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
                return int(conn.scalar(sa.select(sa.func.count()).select_from(table)
                                       .where(*where)) or 0)

            seconds = ((row.finished_at - row.started_at).total_seconds()
                       if row.finished_at else None)
            steps.append(Step(as_of, now, seconds, row.status,
                              count(tr, tr.c.as_of == date.fromisoformat(as_of)),
                              count(e, e.c.entered_at == now),
                              count(m, m.c.status == "sent", m.c.sent_at > since,
                                    m.c.sent_at <= now),
                              count(e, e.c.converted_at > since, e.c.converted_at <= now)))
            previous = now
    return steps


@dataclass(frozen=True)
class EventBranch:
    """Where a branch on an engagement event (``{event: opened, within: 7d}``) sent people:
    per route, the enrollments that reached its send step (whether the message then went out
    or was held back, the branch was taken)."""

    journey: str
    step: str
    event: str
    within: str
    taken: tuple[tuple[str, str | None, int], ...]  # (target step, its template, enrollments)
    otherwise: tuple[str, str | None, int] | None  # the route of those without the event


@dataclass(frozen=True)
class EventGoal:
    """Enrollments that ended by reaching a goal that is an event (``clicked``)."""

    journey: str
    goal: str
    event: str
    reached: int
    entered: int  # treated enrollments of the journey


def _event_of(when: dict[str, Any]) -> tuple[str, str] | None:
    """(event, within) of a branch case on an engagement event, else None."""
    if "event" in when:
        return str(when["event"]), str(when.get("within", ""))
    return None


def engagement_outcomes(engine: Engine, journeys: Iterable[CompiledJourney]
                        ) -> tuple[list[EventBranch], list[EventGoal]]:
    """What the journeys did with the opens and clicks providers reported: the routes their
    event branches sent enrollments down and the event goals reached, from the database."""
    e, m = t.journey_enrollments, t.messages
    branches: list[EventBranch] = []
    goals: list[EventGoal] = []
    with engine.connect() as conn:
        reached_step: dict[tuple[str, str], int] = {
            (j, s): int(n) for j, s, n in conn.execute(
                sa.select(m.c.journey, m.c.step_id, sa.func.count(sa.distinct(m.c.enrollment_id)))
                .where(sa.or_(m.c.reason.is_(None), m.c.reason != "control_group"))
                .group_by(m.c.journey, m.c.step_id))}
        by_goal: dict[tuple[str, str], int] = {
            (j, g): int(n) for j, g, n in conn.execute(
                sa.select(e.c.journey, e.c.goal, sa.func.count())
                .where(e.c.goal.is_not(None), e.c.is_control.is_(False))
                .group_by(e.c.journey, e.c.goal))}
        entered: dict[str, int] = {
            j: int(n) for j, n in conn.execute(
                sa.select(e.c.journey, sa.func.count()).where(e.c.is_control.is_(False))
                .group_by(e.c.journey))}
    for j in sorted(journeys, key=lambda j: j.name):
        steps = {s.id: s for s in j.spec.steps}

        def route(target: str, name: str = j.name) -> tuple[str, str | None, int]:
            step = steps.get(target)
            send = getattr(step, "send", None)
            return target, getattr(send, "template", None), reached_step.get((name, target), 0)

        for step in j.spec.steps:
            if not isinstance(step, BranchStep):
                continue
            found = [(c, ev) for c in step.branch if (ev := _event_of(c.when)) is not None]
            if not found:
                continue
            event, within = found[0][1]
            otherwise = step.else_ or j.successor.get(step.id)
            branches.append(EventBranch(
                j.name, step.id, event, within, tuple(route(c.goto) for c, _ in found),
                route(otherwise) if otherwise in steps else None))
        for goal in j.spec.goals:
            if goal.event is not None:
                goals.append(EventGoal(j.name, goal.id, goal.event.type,
                                       by_goal.get((j.name, goal.id), 0), entered.get(j.name, 0)))
    return branches, goals
