"""Attribution: what followed each enrollment, treated and control alike, as a table.

One row per enrollment in ``attributions``, rebuilt as a whole from the store's own tables by
``rebuild`` (so it can always be recomputed and never drifts from them):

- the conversion window is ``(entered_at, entered_at + conversion_window]`` (the journey's
  ``conversion_window``, 14 days by default), cut at ``now``; ``window_complete`` says whether
  the whole window lies before ``now``. Lift uses complete windows only.
- orders and revenue count purchases only: orders whose status is one of
  ``features.NOT_PURCHASES`` (cancelled, refunded, pending, ...) never count, the same rule as
  scoring and goals.
- the goal is the earliest goal of the journey reached inside the window: an order goal from the
  orders (its ``min_amount``), an event goal from the events, a stage goal from the recorded
  transitions, a condition goal from the engine's own record (``converted_at``). A journey
  without goals converts on any order.
- coupons: those issued by the enrollment's messages; a redemption is a purchase by the same
  customer after entry, up to ``now``, carrying the coupon's code. Its cost is ``value`` percent
  of the order amount for a percent coupon, ``value`` (at most the amount) for an amount coupon.
- engagement, by message: ``delivered`` counts the enrollment's sent messages the provider
  reported delivered (``messages.delivery_status``); ``opened``/``clicked`` count the engagement
  events that name one of the enrollment's messages (``properties.message_id``, as provider
  callbacks and tracked clicks record them) inside the window. An event that names no message
  (an imported one) counts for each of the customer's enrollments whose window holds it. So an
  open of one journey's email never counts for another journey the customer is in.
- last touch (a secondary view, never used for lift): the last message sent to the enrollment
  before its first order inside the window.
- ``global_control``: the customer is in the project's global control group (the same stable
  hash the engine draws it with).

Everything is computed for a logical ``now`` (the run's clock); the wall clock plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.errors import SpecError
from clm_core.journeys import hashing
from clm_core.journeys.model import Goal, Journey, ProjectPolicy
from clm_core.journeys.store import read_frame
from clm_core.lifecycle.features import NOT_PURCHASES
from clm_core.yamlspec import parse_yaml

DEFAULT_WINDOW = timedelta(days=14)
ENGAGEMENT = ("delivered", "opened", "clicked")
COLUMNS = [c.name for c in t.attributions.columns]


@dataclass(frozen=True)
class JourneyTerms:
    """What attribution needs of one journey version."""

    window: timedelta
    goals: tuple[Goal, ...]


@dataclass(frozen=True)
class AttributionReport:
    now: datetime
    enrollments: int
    complete: int
    converted: int
    revenue: float
    coupon_cost: float


def purchases_filter(column: Any) -> Any:
    """SQL: the order is a purchase (its status is not one of NOT_PURCHASES)."""
    return sa.or_(column.is_(None), column.notin_(NOT_PURCHASES))


def journey_terms(conn: Connection) -> dict[tuple[str, int], JourneyTerms]:
    """Conversion window and goals of every stored journey version."""
    v = t.journey_versions
    out = {}
    for name, version, definition in conn.execute(
        sa.select(v.c.journey, v.c.version, v.c.definition)
    ):
        try:
            data, _ = parse_yaml((definition or {}).get("source", ""), f"{name} v{version}")
            spec = Journey.model_validate(data)
            terms = JourneyTerms(spec.conversion_window, tuple(spec.goals))
        except (ValidationError, SpecError, TypeError, AttributeError):
            terms = JourneyTerms(DEFAULT_WINDOW, ())
        out[(name, int(version))] = terms
    return out


def default_now(engine: Engine) -> datetime:
    """The newest moment the store knows of (its latest order or enrollment): the measuring
    clock when the caller gives none. Data time, never the wall clock."""
    with engine.connect() as conn:
        times = [conn.execute(sa.select(sa.func.max(t.orders.c.ordered_at))).scalar(),
                 conn.execute(sa.select(sa.func.max(t.journey_enrollments.c.entered_at))).scalar()]
    known = [pd.Timestamp(x).to_pydatetime() for x in times if x is not None]
    return max(known) if known else datetime(1970, 1, 1)


def global_control(customer_ids: np.ndarray, policy: ProjectPolicy) -> np.ndarray:
    """Which customers the engine holds out of every journey (the global control group)."""
    if policy.global_control_percent <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return (
        hashing.uniform(customer_ids, policy.global_control_salt)
        < policy.global_control_percent / 100
    )


def compute(conn: Connection, now: datetime, policy: ProjectPolicy | None = None,
            run_id: str | None = None) -> pd.DataFrame:
    """The attribution rows (``COLUMNS``) for every enrollment that entered by ``now``."""
    policy = policy or ProjectPolicy.model_validate({})
    now_ts = pd.Timestamp(now)
    e = t.journey_enrollments
    enr = read_frame(conn, sa.select(
        e.c.id.label("enrollment_id"), e.c.journey, e.c.journey_version, e.c.customer_id,
        e.c.is_control, e.c.variant, e.c.entered_at, e.c.goal.label("engine_goal"),
        e.c.converted_at).where(e.c.entered_at <= now))
    if enr.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    terms = journey_terms(conn)
    keys = list(zip(enr["journey"], enr["journey_version"].astype(int)))
    window = pd.to_timedelta([terms.get(k, JourneyTerms(DEFAULT_WINDOW, ())).window for k in keys])
    enr["is_control"] = enr["is_control"].astype(bool)
    enr["window_end"] = enr["entered_at"] + window
    enr["horizon"] = enr["window_end"].where(enr["window_end"] <= now_ts, now_ts)
    enr["pre_start"] = enr["entered_at"] - window
    start = enr["pre_start"].min().to_pydatetime()
    ids = sa.select(e.c.customer_id).where(e.c.entered_at <= now).scalar_subquery()

    o = t.orders
    orders = read_frame(conn, sa.select(o.c.id.label("order_id"), o.c.customer_id, o.c.ordered_at,
                                        o.c.amount, o.c.coupon_code)
                        .where(o.c.customer_id.in_(ids), o.c.ordered_at > start,
                               o.c.ordered_at <= now, purchases_filter(o.c.status)))
    orders["amount"] = orders["amount"].astype(float)
    pairs = enr[["enrollment_id", "customer_id", "entered_at", "horizon", "pre_start"]].merge(
        orders, on="customer_id")
    inside = pairs[
        (pairs["ordered_at"] > pairs["entered_at"]) & (pairs["ordered_at"] <= pairs["horizon"])
    ]
    before = pairs[
        (pairs["ordered_at"] > pairs["pre_start"]) & (pairs["ordered_at"] <= pairs["entered_at"])
    ]
    by = inside.groupby("enrollment_id")
    enr = enr.set_index("enrollment_id")
    enr["orders"] = by.size().reindex(enr.index, fill_value=0)
    enr["revenue"] = by["amount"].sum().reindex(enr.index, fill_value=0.0)
    enr["first_order_at"] = by["ordered_at"].min().reindex(enr.index)
    enr["pre_revenue"] = (
        before.groupby("enrollment_id")["amount"].sum().reindex(enr.index, fill_value=0.0)
    )

    _goals(conn, enr, inside, terms, keys, now)
    msgs = _messages_and_coupons(conn, enr, orders, now)
    _engagement(conn, enr, now, start, msgs)

    enr["global_control"] = global_control(enr["customer_id"].to_numpy(), policy)
    enr["window_complete"] = enr["window_end"] <= now_ts
    enr["measured_at"] = now_ts
    enr["run_id"] = run_id
    return enr.reset_index()[COLUMNS]


def _goals(
    conn: Connection,
    enr: pd.DataFrame,
    inside: pd.DataFrame,
    terms: dict[tuple[str, int], JourneyTerms],
    keys: list[tuple[str, int]],
    now: datetime,
) -> None:
    """``goal``/``goal_at``: the earliest goal reached inside each window (in place)."""
    enr["goal"] = None
    enr["goal_at"] = pd.Series(pd.NaT, index=enr.index, dtype="datetime64[ns]")
    key_of = pd.Series(keys, index=enr.index)
    need_events = any(g.event for k in set(keys) if k in terms for g in terms[k].goals)
    need_stages = any(g.stage for k in set(keys) if k in terms for g in terms[k].goals)
    events = transitions = None
    ids = sa.select(t.journey_enrollments.c.customer_id).scalar_subquery()
    if need_events:
        ev = t.events
        events = read_frame(conn, sa.select(ev.c.customer_id, ev.c.event_type, ev.c.occurred_at)
                            .where(ev.c.customer_id.in_(ids), ev.c.occurred_at <= now))
    if need_stages:
        st = t.stage_transitions
        transitions = read_frame(conn, sa.select(st.c.customer_id, st.c.to_stage, st.c.as_of)
                                 .where(st.c.customer_id.in_(ids)))

    def first_after(rows: pd.DataFrame, idx: pd.Index, when: str) -> pd.Series:
        left = enr.loc[idx, ["customer_id", "entered_at", "horizon"]].reset_index()
        hits = left.merge(rows, on="customer_id")
        hits = hits[(hits[when] > hits["entered_at"]) & (hits[when] <= hits["horizon"])]
        return hits.groupby("enrollment_id")[when].min()

    for key, idx in enr.groupby(key_of).groups.items():
        goals = terms[key].goals if key in terms else ()
        if not goals:  # no goals: any purchase in the window converts
            first = (
                inside[inside["enrollment_id"].isin(idx)]
                .groupby("enrollment_id")["ordered_at"]
                .min()
            )
            _better(enr, first, "order")
            continue
        for g in goals:
            if g.order is not None:
                rows = inside[
                    inside["enrollment_id"].isin(idx) & (inside["amount"] >= g.order.min_amount)
                ]
                first = rows.groupby("enrollment_id")["ordered_at"].min()
            elif g.event is not None and events is not None:
                first = first_after(
                    events[events["event_type"] == g.event.type], idx, "occurred_at"
                )
            elif g.stage is not None and transitions is not None:
                first = first_after(
                    transitions[transitions["to_stage"].isin(g.stage)], idx, "as_of"
                )
            else:  # a condition goal: only the engine saw the condition become true
                sub = enr.loc[idx]
                ok = (sub["engine_goal"] == g.id) & (sub["converted_at"] > sub["entered_at"]) \
                    & (sub["converted_at"] <= sub["horizon"])
                first = sub.loc[ok, "converted_at"]
            _better(enr, first, g.id)


def _better(enr: pd.DataFrame, first: pd.Series, goal_id: str) -> None:
    if first.empty:
        return
    first = pd.to_datetime(first).astype("datetime64[ns]")
    cur = enr.loc[first.index, "goal_at"]
    take = first.index[(cur.isna() | (first < cur)).to_numpy()]
    enr.loc[take, "goal_at"] = first[take]
    enr.loc[take, "goal"] = goal_id


def _messages_and_coupons(conn: Connection, enr: pd.DataFrame, orders: pd.DataFrame,
                          now: datetime) -> pd.DataFrame:
    """Messages sent, last touch and coupons per enrollment; returns the enrollments' sent
    messages (message_id, enrollment_id, delivery_status, ...)."""
    m, cp = t.messages, t.coupons
    en_ids = sa.select(t.journey_enrollments.c.id).scalar_subquery()
    # a message's logical time is its planned send time (``send_after``, on the run's clock);
    # ``sent_at`` records when the provider call happened
    msgs = read_frame(
        conn,
        sa.select(
            m.c.id.label("message_id"),
            m.c.enrollment_id,
            m.c.step_id,
            m.c.channel,
            m.c.send_after.label("sent_at"),
            m.c.delivery_status,
        ).where(m.c.status == "sent", m.c.enrollment_id.in_(en_ids), m.c.send_after <= now),
    )
    msgs = msgs[msgs["enrollment_id"].isin(enr.index)]
    enr["messages_sent"] = msgs.groupby("enrollment_id").size().reindex(enr.index, fill_value=0)
    # last touch: the last message sent at or before the first order in the window
    lt = msgs.merge(enr[["first_order_at"]], left_on="enrollment_id", right_index=True).reset_index(
        drop=True
    )
    lt = lt[lt["sent_at"] <= lt["first_order_at"]].sort_values(
        ["enrollment_id", "sent_at", "message_id"]
    )
    last = lt.groupby("enrollment_id").tail(1).set_index("enrollment_id")
    enr["last_touch_step"] = last["step_id"].reindex(enr.index)
    enr["last_touch_channel"] = last["channel"].reindex(enr.index)

    coupons = read_frame(conn, sa.select(cp.c.code, cp.c.kind, cp.c.value, m.c.enrollment_id)
                         .join(m, m.c.id == cp.c.message_id).where(m.c.enrollment_id.in_(en_ids)))
    coupons = coupons[coupons["enrollment_id"].isin(enr.index)]
    enr["coupons_issued"] = coupons.groupby("enrollment_id").size().reindex(enr.index, fill_value=0)
    coded = orders[orders["coupon_code"].notna()]
    # empty frames come back with guessed dtypes: compare codes as text
    used = coupons.astype({"code": "string"}).merge(coded.astype({"coupon_code": "string"}),
                                                    left_on="code", right_on="coupon_code")
    used = used.merge(enr[["customer_id", "entered_at"]], left_on="enrollment_id", right_index=True,
                      suffixes=("", "_enr")).reset_index(drop=True)
    used = used[
        (used["customer_id"] == used["customer_id_enr"]) & (used["ordered_at"] > used["entered_at"])
    ]
    value = used["value"].astype(float)
    used = used.assign(cost=np.where(used["kind"] == "percent", used["amount"] * value / 100,
                                     np.minimum(value, used["amount"])))
    enr["coupons_redeemed"] = used.groupby("enrollment_id").size().reindex(enr.index, fill_value=0)
    enr["coupon_cost"] = (
        used.groupby("enrollment_id")["cost"].sum().reindex(enr.index, fill_value=0.0)
    )
    return msgs


def _engagement(conn: Connection, enr: pd.DataFrame, now: datetime, start: datetime,
                msgs: pd.DataFrame) -> None:
    """``delivered``, ``opened`` and ``clicked`` per enrollment, by message (module docstring)."""
    delivered = msgs[msgs["delivery_status"] == "delivered"]
    enr["delivered"] = delivered.groupby("enrollment_id").size().reindex(enr.index, fill_value=0)
    ev = t.events
    ids = sa.select(t.journey_enrollments.c.customer_id).scalar_subquery()
    kinds = [k for k in ENGAGEMENT if k != "delivered"]
    rows = read_frame(conn, sa.select(ev.c.customer_id, ev.c.event_type, ev.c.occurred_at,
                                      ev.c.properties)
                      .where(ev.c.event_type.in_(kinds), ev.c.customer_id.in_(ids),
                             ev.c.occurred_at > start, ev.c.occurred_at <= now))
    named = pd.to_numeric(rows["properties"].map(
        lambda p: p.get("message_id") if isinstance(p, dict) else None), errors="coerce")
    owner = pd.Series(msgs["enrollment_id"].to_numpy(), index=msgs["message_id"].to_numpy())
    window = enr[["customer_id", "entered_at", "horizon"]]
    # events that name a message: its enrollment, if the event is inside that one's window
    by_message = rows[named.notna().to_numpy()].assign(
        enrollment_id=owner.reindex(named.dropna().astype("int64").to_numpy()).to_numpy())
    by_message = by_message.dropna(subset=["enrollment_id"]).astype({"enrollment_id": "int64"})
    by_message = by_message.merge(window, left_on="enrollment_id", right_index=True,
                                  suffixes=("", "_enr"))
    # events that name none: every enrollment of the customer whose window holds them
    loose = rows[named.isna().to_numpy()].merge(window.reset_index(), on="customer_id")
    hits = pd.concat([by_message[["enrollment_id", "event_type", "occurred_at", "entered_at",
                                  "horizon"]],
                      loose[["enrollment_id", "event_type", "occurred_at", "entered_at",
                             "horizon"]]], ignore_index=True)
    hits = hits[
        (hits["occurred_at"] > hits["entered_at"]) & (hits["occurred_at"] <= hits["horizon"])
    ]
    counts = hits.groupby(["enrollment_id", "event_type"]).size().unstack(fill_value=0)
    for kind in kinds:
        col = counts[kind] if kind in counts else pd.Series(dtype="int64")
        enr[kind] = col.reindex(enr.index, fill_value=0).astype(int)


def rebuild(engine: Engine, now: datetime | None = None, policy: ProjectPolicy | None = None,
            run_id: str | None = None) -> AttributionReport:
    """Recompute the whole ``attributions`` table for ``now`` (default: the store's newest
    order or enrollment), in one transaction: readers see the old table or the new one."""
    now = now or default_now(engine)
    with engine.begin() as conn:
        rows = compute(conn, now, policy, run_id)
        conn.execute(sa.delete(t.attributions))
        if not rows.empty:
            write_frame(conn, t.attributions, rows)
    done = rows[rows["window_complete"].astype(bool)] if not rows.empty else rows
    return AttributionReport(
        now,
        len(rows),
        len(done),
        int(done["goal"].notna().sum()) if len(done) else 0,
        float(done["revenue"].sum()) if len(done) else 0.0,
        float(done["coupon_cost"].sum()) if len(done) else 0.0,
    )


def read(
    conn: Connection, since: datetime | None = None, journey: str | None = None
) -> pd.DataFrame:
    """The stored attribution rows (entered on or after ``since``; of one journey)."""
    a = t.attributions
    q = sa.select(a)
    if since is not None:
        q = q.where(a.c.entered_at >= since)
    if journey is not None:
        q = q.where(a.c.journey == journey)
    df = read_frame(conn, q)
    for c in ("is_control", "global_control", "window_complete"):
        df[c] = df[c].astype(bool)
    return df
