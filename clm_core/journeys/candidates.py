"""Which customers an evaluation needs to read: those that can enter, advance or exit.

The engine decides customer by customer, so a snapshot of some customers (with all their
enrollments) plans for them exactly what a snapshot of everyone plans. This module says, in
SQL over the current rows, which customers might see a change, and leaves out the rest:

- an active enrollment can change only when its step is due, it is on another version than
  the journey's, a goal may be reached (an order or an event since entry, a goal stage that
  is the customer's stage now, a goal condition that may hold) or its audience may no longer
  hold (``exit_when_audience_lost``);
- a journey that re-enters on rematch must see a customer stop matching its trigger, so an
  enrollment without ``unmatched_at`` counts while the trigger may no longer hold;
- a stage or tier transition, or an event, inside an entry window may enter someone;
- a segment entry may enter anyone its condition (with the audience) holds for, unless the
  journey's re-entry policy already rules them out: enrolled before in a journey entered
  ``once``, enrolled now, or entered within ``every`` of a journey re-entered by interval.
  Without that, every customer who matched a segment once would be read every night: at a
  million customers a hundred thousand a night, for a few thousand who can still enter.

Conditions become SQL two ways. ``superset`` holds wherever the condition holds (parts SQL may
judge otherwise, such as times, text search, another field or a derived field, are left out,
which only widens it): "may hold". ``subset`` holds only where the condition surely holds
(only parts SQL judges exactly: text, integers, flags, ``exists``): its negation is "may no
longer hold". Whatever cannot be expressed counts as "may", so an unusual condition costs
reading more customers, never a wrong plan. When a segment entry yields no filter at all (a
``{not: ...}``, or derived fields alone), every customer is read, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa

from clm_core.conditions import AllOf, AnyOf, Compare, Condition, FieldRef
from clm_core.db import tables as t
from clm_core.journeys.engine import ACTIVE
from clm_core.journeys.loader import CompiledJourney
from clm_core.lifecycle.features import NOT_PURCHASES

Column = Callable[[str], "sa.ColumnElement | None"]


def superset(cond: Condition, column: Column) -> sa.ColumnElement | None:
    """A SQL filter that holds wherever ``cond`` holds, or None when it cannot narrow anything.

    ``column(name)`` gives the stored column of a field (None for a derived one). Soundness
    rests on each leaf: a comparison the engine finds true is true in SQL too. Missing values
    agree (unknown in the engine, NULL in SQL: neither matches). Equality on non-integer
    numbers is left out: the engine compares floats read from the driver, SQL the stored value
    (exact on PostgreSQL's numeric), and the two may differ in the last digit; orderings keep
    their sense under that rounding, so they stay."""
    if isinstance(cond, AnyOf):  # before AllOf: AnyOf is one of its subclasses
        parts = [superset(c, column) for c in cond.children]
        return None if any(p is None for p in parts) else sa.or_(*parts)  # type: ignore[arg-type]
    if isinstance(cond, AllOf):
        kept = [p for p in (superset(c, column) for c in cond.children) if p is not None]
        return sa.and_(*kept) if kept else None
    if isinstance(cond, Compare):
        return _leaf(cond, column)
    return None  # not: the negation of a superset is no superset


def subset(cond: Condition, column: Column) -> sa.ColumnElement | None:
    """A SQL filter that holds only where ``cond`` holds, or None when nothing can be
    certified. Leaves only on text, integers, flags and ``exists``, which SQL and the engine
    judge alike (a missing value matching neither)."""
    if isinstance(cond, AnyOf):
        kept = [p for p in (subset(c, column) for c in cond.children) if p is not None]
        return sa.or_(*kept) if kept else None
    if isinstance(cond, AllOf):
        parts = [subset(c, column) for c in cond.children]
        return None if any(p is None for p in parts) else sa.and_(*parts)  # type: ignore[arg-type]
    if isinstance(cond, Compare):
        col = column(cond.field)
        if col is None or not (cond.op == "exists" or isinstance(
                col.type, (sa.Integer, sa.String, sa.Boolean))):
            return None
        return _leaf(cond, column)
    return None


def _may_fail(cond: Condition, column: Column) -> sa.ColumnElement:
    """Where ``cond`` may not hold: the negation of its subset."""
    sure = subset(cond, column)
    return sa.true() if sure is None else _unless(sure)


def _unless(sure: sa.ColumnElement) -> sa.ColumnElement:
    """Where ``sure`` does not hold, NULL counted as not holding."""
    return sa.not_(sa.func.coalesce(sure, sa.false()))


def tables_named(expr: sa.ColumnElement | None) -> set[sa.FromClause]:
    """The tables whose columns ``expr`` reads (none for None): which joins it needs."""
    if expr is None:
        return set()
    return {col.table for col in sa.sql.visitors.iterate(expr) if isinstance(col, sa.Column)}


def _leaf(cond: Compare, column: Column) -> sa.ColumnElement | None:
    col = column(cond.field)
    if col is None or isinstance(cond.value, FieldRef):
        return None
    op, v = cond.op, cond.value
    if op == "exists":
        return col.is_not(None) if v else col.is_(None)
    kind = col.type
    if isinstance(kind, (sa.DateTime, sa.Date)) or op == "contains":
        return None
    if isinstance(kind, sa.Boolean):
        return {"eq": col == bool(v), "ne": col != bool(v)}.get(op)
    exact = isinstance(kind, sa.Integer) or isinstance(kind, sa.String)
    if op == "between":
        return col.between(v[0], v[1])
    if op in ("in", "not_in"):
        if not exact:
            return None
        return col.in_(list(v)) if op == "in" else col.not_in(list(v))
    if op == "eq":
        return col == v if exact else None
    return {"ne": col != v, "lt": col < v, "lte": col <= v, "gt": col > v,
            "gte": col >= v}.get(op)


def entry_filters(journeys: Sequence[CompiledJourney], column: Column,
                  now: datetime | None = None) -> list[sa.ColumnElement] | None:
    """One SQL filter per segment-entered journey (its segment and audience together, and with
    ``now`` its re-entry policy: ``may_enter``), or None when some segment cannot be narrowed,
    so that every customer must be read. Only running journeys enter anyone, each by its
    latest version."""
    out = []
    for j in _latest(journeys).values():
        if j.spec.status != "active" or j.segment is None:
            continue
        parts = [superset(j.segment, column)]
        if j.audience is not None:
            parts.append(superset(j.audience, column))
        kept = [p for p in parts if p is not None]
        if not kept:
            return None
        out.append(sa.and_(*kept, *([] if now is None else [may_enter(j, now)])))
    return out


def may_enter(j: CompiledJourney, now: datetime) -> sa.ColumnElement:
    """Where the re-entry policy of ``j`` lets the scored customer enter at ``now``, as far as
    their enrollments can tell (a superset of the engine's rule, ``engine._Run.enter``): no
    enrollment in the journey blocks them. Any enrollment blocks under ``once``; the active one
    (only the latest can be) under every policy; one entered within ``every`` under
    ``interval`` (entries come in order, so the latest is then too). Under ``rematch`` an older
    enrollment may lack the ``unmatched_at`` the latest has (the policy may have changed), so
    the rest of that rule is left to the engine. One lookup a candidate in the enrollments'
    (journey, customer_id, entry_seq) index."""
    e = t.journey_enrollments
    policy = j.spec.entry.reentry
    blocks: list[sa.ColumnElement] = []
    if policy.policy == "interval" and policy.every is not None:
        blocks.append(sa.or_(e.c.status == ACTIVE, e.c.entered_at > now - policy.every))
    elif policy.policy != "once":
        blocks.append(e.c.status == ACTIVE)
    return ~sa.exists().where(e.c.journey == j.name,
                              e.c.customer_id == t.customer_scores.c.customer_id, *blocks)


def _latest(journeys: Iterable[CompiledJourney]) -> dict[str, CompiledJourney]:
    """Each journey's highest version (the one the engine runs)."""
    out: dict[str, CompiledJourney] = {}
    for j in journeys:
        if j.name not in out or j.version > out[j.name].version:
            out[j.name] = j
    return out


def changeable_enrollments(journeys: Sequence[CompiledJourney], now: datetime,
                           column: Column, entered: Mapping[str, datetime]) -> sa.Select:
    """Customers with an enrollment this evaluation may change (see the module's text).
    ``column`` resolves fields to the columns of customer_scores, customers and
    loyalty_status; ``entered``: the earliest entry of each journey's active enrollments
    (a goal counts what happened after entry, so nothing before the earliest can reach one).

    One pass over the enrollments, each joined to its customer's rows and to the time of
    their latest purchase (and goal event) since that earliest entry, all by hash or index
    joins: no correlated subquery a row, and no ``IN (subquery)``, which PostgreSQL scans
    whole for every row once the set outgrows its work memory."""
    e, s, c, lo = t.journey_enrollments, t.customer_scores, t.customers, t.loyalty_status
    o, ev = t.orders, t.events
    latest = {n: j for n, j in _latest(journeys).items() if j.spec.status == "active"}
    # the engine leaves a paused journey's enrollments be: only running journeys have a case
    ordering = [n for n, j in latest.items() if any(g.order for g in j.spec.goals)]
    since = min((entered.get(n, now) for n in ordering), default=now)
    bought = sa.select(o.c.customer_id, sa.func.max(o.c.ordered_at).label("at")).where(
        o.c.ordered_at > since, o.c.ordered_at <= now, o.c.status.not_in(NOT_PURCHASES)
    ).group_by(o.c.customer_id).subquery("bought")
    happened: dict[str, sa.Subquery] = {}
    cases = []
    for name, j in sorted(latest.items()):
        may = [e.c.journey_version != j.version, e.c.step_due_at.is_(None),
               e.c.step_due_at <= now, s.c.customer_id.is_(None)]  # no scores: exits
        for goal in j.spec.goals:
            if goal.order is not None:
                may.append(bought.c.at > e.c.entered_at)
            elif goal.event is not None:
                kind = goal.event.type
                if kind not in happened:
                    first = min((entered.get(n, now) for n, k in latest.items()
                                 if any(g.event and g.event.type == kind for g in k.spec.goals)),
                                default=now)
                    happened[kind] = sa.select(
                        ev.c.customer_id, sa.func.max(ev.c.occurred_at).label("at")).where(
                        ev.c.event_type == kind, ev.c.occurred_at > first,
                        ev.c.occurred_at <= now).group_by(ev.c.customer_id) \
                        .subquery(f"event_{len(happened)}")
                may.append(happened[kind].c.at > e.c.entered_at)
            elif goal.stage is not None:
                may.append(s.c.stage.in_(goal.stage))
            else:
                wide = superset(j.goal_conditions[goal.id], column)
                may.append(sa.true() if wide is None else wide)
        if j.audience is not None and j.spec.exit_when_audience_lost:
            may.append(_may_fail(j.audience, column))
        case = sa.and_(e.c.status == "active", sa.or_(*may))
        entry = j.spec.entry
        if entry.reentry.policy == "rematch" and entry.event is None:
            stop: sa.ColumnElement
            if entry.stage is not None:
                stop = _unless(s.c.stage == entry.stage.to)
            elif entry.tier is not None:
                to = entry.tier.to
                stop = lo.c.tier.is_(None) if to is None else _unless(lo.c.tier == to)
            else:
                assert j.segment is not None  # a stage, a tier or a segment
                stop = _may_fail(j.segment, column)
            case = sa.or_(case, sa.and_(e.c.state["unmatched_at"].as_string().is_(None),
                                        sa.or_(s.c.customer_id.is_(None), stop)))
        cases.append((e.c.journey == name, case))
    # Each row tests only its own journey's case: an OR of them all made SQLite test every
    # case on every row, and one query a journey walked every active enrollment once a
    # journey (by the status index, which SQLite preferred).
    which = sa.case(*cases, else_=sa.false()) if cases else sa.false()
    named = tables_named(which)
    joined = e.outerjoin(s, s.c.customer_id == e.c.customer_id)
    for other, key in ((c, c.c.id), (lo, lo.c.customer_id)):
        if other in named:  # only what the cases read
            joined = joined.outerjoin(other, key == e.c.customer_id)
    for times in ([bought] if ordering else []) + list(happened.values()):
        joined = joined.outerjoin(times, times.c.customer_id == e.c.customer_id)
    return sa.select(e.c.customer_id).select_from(joined).where(which)


def segment_candidates(filters: Sequence[sa.ColumnElement], *,
                       apart: bool = False) -> list[sa.Select]:
    """Scored customers some segment filter (``entry_filters``) holds for, as selects to put
    in a union: one with every filter in an OR, or with ``apart`` one a filter.

    Apart, each is planned on its own and may start from the table that picks out fewest
    rows, where the OR is one scan of every customer joined to everything any filter reads.
    That pays on PostgreSQL (the sample journeys' three filters at a million customers: 1.1 s
    against 1.8 s; since the scores' stage lost its index, which no filter needed, 0.9-1.0 s
    against 2.1-2.4 s on a slower machine), not on SQLite (1.5 s against 0.8 s), where a
    filter on the loyalty columns still scans every customer, now once more."""
    s, c, lo = t.customer_scores, t.customers, t.loyalty_status
    wheres = list(filters) if apart else [sa.or_(sa.false(), *filters)]
    out = []
    for where in wheres:
        joined = s.join(c, c.c.id == s.c.customer_id)
        if lo in tables_named(where):
            joined = joined.outerjoin(lo, lo.c.customer_id == s.c.customer_id)
        out.append(sa.select(s.c.customer_id).select_from(joined).where(where))
    return out
