"""One customer's story: why they are in their stage, what they were sent and what followed.

The stage explanation is recomputed by the scoring code itself (``pipeline.rules_values``) for
the as-of date of the stored scores, so it shows exactly the values the rules compared: every
rule tried in order, each comparison with the customer's value, the threshold and the outcome,
down to the first rule that matched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.conditions import AllOf, AnyOf, Compare, Condition, FieldRef, Not
from clm_core.db import tables as t
from clm_core.errors import ClmError
from clm_core.lifecycle.features import NOT_PURCHASES
from clm_core.lifecycle.pipeline import LifecycleConfig, rules_values
from clm_core.lifecycle.stages import StageRules

RECENT = 10  # orders and events listed in full


class UnknownCustomer(ClmError):
    """No customer has that external id or number."""


@dataclass
class RuleTrace:
    stage: str
    matched: bool
    check: dict[str, Any] | None  # the condition tree with values; None: takes everyone left


@dataclass
class Story:
    customer: dict[str, Any]
    consent: dict[str, Any]
    orders: dict[str, Any]
    scores: dict[str, Any] | None
    fit: dict[str, Any] | None
    stage: str | None
    rules: list[RuleTrace] = field(default_factory=list)
    rules_stage: str | None = None  # what the rules give on today's data for the same as-of date
    history: list[dict[str, Any]] = field(default_factory=list)
    enrollments: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (datetime, date, pd.Timestamp)):
        return None if pd.isna(x) else x.isoformat()
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def trace(cond: Condition, row: pd.DataFrame) -> dict[str, Any]:
    """The condition as a tree of checks on a one-row frame, each with its outcome."""
    ok = bool(cond.mask(row).iloc[0])
    if isinstance(cond, Compare):
        out: dict[str, Any] = {
            "field": cond.field,
            "op": cond.op,
            "actual": row[cond.field].iloc[0],
            "result": ok,
        }
        if isinstance(cond.value, FieldRef):
            other = row[cond.value.name].iloc[0]
            out["value"] = {"field": cond.value.name, "times": cond.value.times, "actual": other,
                            "threshold": other * cond.value.times if pd.notna(other) and
                            isinstance(other, (int, float)) else other}
        else:
            out["value"] = list(cond.value) if isinstance(cond.value, (tuple, set)) else cond.value
        return out
    if isinstance(cond, Not):
        return {"not": trace(cond.child, row), "result": ok}
    if isinstance(cond, AnyOf):
        return {"any": [trace(c, row) for c in cond.children], "result": ok}
    if isinstance(cond, AllOf):
        return {"all": [trace(c, row) for c in cond.children], "result": ok}
    return {"result": ok}


def rule_traces(rules: StageRules, row: pd.DataFrame) -> list[RuleTrace]:
    """Every rule tried, in order, up to and including the first match."""
    out = []
    for s in rules.stages:
        if s.condition is None:
            out.append(RuleTrace(s.name, True, None))
            break
        check = trace(s.condition, row)
        out.append(RuleTrace(s.name, bool(check["result"]), check))
        if check["result"]:
            break
    return out


def find_customer(conn: Connection, ref: str) -> Any:
    c = t.customers
    row = conn.execute(sa.select(c).where(c.c.external_id == ref)).first()
    if row is None and ref.isdigit():
        row = conn.execute(sa.select(c).where(c.c.id == int(ref))).first()
    if row is None:
        raise UnknownCustomer(f"no customer with external id or number {ref!r}")
    return row


def _rows(conn: Connection, query: sa.Select) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(query)]


def _consent(conn: Connection, cust: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"email": {"granted": cust.consent_email, "at": cust.consent_email_at},
                           "sms": {"granted": cust.consent_sms, "at": cust.consent_sms_at}}
    s = t.suppressions
    addresses = [a for a in (cust.email, cust.phone) if a]
    out["suppressions"] = _rows(
        conn,
        sa.select(s.c.channel, s.c.reason, s.c.source, s.c.created_at)
        .where(sa.or_(s.c.customer_id == cust.id, s.c.address.in_(addresses)))
        .order_by(s.c.created_at),
    )
    # the consent ledger, where this store has one
    if "consent_ledger" in sa.inspect(conn).get_table_names():
        ledger = sa.Table("consent_ledger", sa.MetaData(), autoload_with=conn)
        if "customer_id" in ledger.c:
            order = [ledger.c[k] for k in ("occurred_at", "recorded_at", "id") if k in ledger.c]
            out["ledger"] = _rows(conn, sa.select(ledger).where(ledger.c.customer_id == cust.id)
                                  .order_by(*order))
    return out


def _orders(conn: Connection, cid: int) -> dict[str, Any]:
    o = t.orders
    rows = _rows(
        conn,
        sa.select(
            o.c.external_id, o.c.ordered_at, o.c.amount, o.c.currency, o.c.status, o.c.coupon_code
        )
        .where(o.c.customer_id == cid)
        .order_by(o.c.ordered_at),
    )
    bought = [r for r in rows if r["status"] not in NOT_PURCHASES]
    return {"orders": len(rows), "purchases": len(bought),
            "not_purchases": {s: sum(r["status"] == s for r in rows) for s in
                              sorted({r["status"] for r in rows} & set(NOT_PURCHASES))},
            "first": bought[0]["ordered_at"] if bought else None,
            "last": bought[-1]["ordered_at"] if bought else None,
            "spend": float(sum(float(r["amount"]) for r in bought)),
            "recent": [{**r, "amount": float(r["amount"])} for r in rows[-RECENT:]]}


def _enrollments(conn: Connection, cid: int) -> list[dict[str, Any]]:
    e, m, a = t.journey_enrollments, t.messages, t.attributions
    out = []
    for r in _rows(
        conn, sa.select(e).where(e.c.customer_id == cid).order_by(e.c.entered_at, e.c.id)
    ):
        msgs = _rows(conn, sa.select(m.c.step_id, m.c.channel, m.c.template, m.c.status, m.c.reason,
                                     m.c.send_after, m.c.sent_at, m.c.error_code, m.c.provider)
                     .where(m.c.enrollment_id == r["id"]).order_by(m.c.send_after, m.c.id))
        attr = conn.execute(sa.select(a).where(a.c.enrollment_id == r["id"])).first()
        out.append({
            "journey": r["journey"], "version": r["journey_version"], "entry": r["entry_seq"],
            "entered_at": r["entered_at"], "status": r["status"],
            "group": "control" if r["is_control"] else "treated", "variant": r["variant"],
            "current_step": r["current_step"], "exit_reason": r["exit_reason"],
            "exited_at": r["exited_at"], "goal": r["goal"], "converted_at": r["converted_at"],
            "messages": [{**x, "why": _why(x)} for x in msgs],
            "attribution": None if attr is None else {
                k: attr._mapping[k] for k in ("window_end", "goal", "goal_at", "orders", "revenue",
                                              "coupons_redeemed", "coupon_cost", "delivered",
                                              "opened", "clicked", "last_touch_step")}})
    return out


_WHY = {
    "control_group": "held out: the customer is in the control group",
    "no_consent": "no consent for this channel",
    "no_consent_topic": "the customer opted out of this topic on this channel",
    "no_address": "no address for this channel",
    "suppressed": "the address is suppressed",
    "quiet_hours": "the customer's quiet hours",
    "frequency_cap": "a frequency cap",
    "unschedulable": "no allowed time to send",
}


def _why(msg: dict[str, Any]) -> str:
    reason, status = msg.get("reason") or "", msg["status"]
    code, _, detail = reason.partition(":")
    if code == "control_group":
        return _WHY[code]
    if code in _WHY and status in ("skipped", "deferred"):
        return f"{status}: {_WHY[code]}" + (f" ({detail})" if detail else "")
    if status == "sent":
        return "sent: every check passed" + (f" ({reason})" if reason and reason != "sent" else "")
    if status in ("failed", "unknown"):
        return f"{status}: {msg.get('error_code') or reason or 'provider error'}"
    return f"{status}" + (f": {reason}" if reason else "")


def explain(
    engine: Engine, config: LifecycleConfig, ref: str, rules: StageRules | None = None
) -> Story:
    """The whole story of the customer with external id (or number) ``ref``."""
    rules = rules or config.load_rules()
    cs, mf, st, ev = t.customer_scores, t.model_fits, t.stage_transitions, t.events
    with engine.connect() as conn:
        cust = find_customer(conn, ref)
        cid = int(cust.id)
        scores = conn.execute(sa.select(cs).where(cs.c.customer_id == cid)).first()
        fit = conn.execute(sa.select(mf).where(mf.c.id == scores.fit_id)).first() \
            if scores is not None and scores.fit_id is not None else None
        story = Story(
            customer={
                k: getattr(cust, k)
                for k in (
                    "external_id",
                    "name",
                    "email",
                    "phone",
                    "locale",
                    "timezone",
                    "country",
                    "signed_up_at",
                )
            },
            consent=_consent(conn, cust),
            orders=_orders(conn, cid),
            scores=dict(scores._mapping) if scores is not None else None,
            fit=None
            if fit is None
            else {
                k: fit._mapping[k]
                for k in (
                    "id",
                    "model",
                    "params",
                    "time_unit",
                    "window_start",
                    "window_end",
                    "n_customers",
                    "recorded_at",
                )
            },
            stage=scores.stage if scores is not None else None,
        )
        story.history = _rows(conn, sa.select(st.c.from_stage, st.c.to_stage, st.c.as_of,
                                              st.c.transitioned_at)
                              .where(st.c.customer_id == cid).order_by(st.c.as_of, st.c.id))
        story.enrollments = _enrollments(conn, cid)
        story.events = _rows(conn, sa.select(ev.c.event_type, ev.c.occurred_at, ev.c.properties)
                             .where(ev.c.customer_id == cid)
                             .order_by(ev.c.occurred_at.desc(), ev.c.id.desc()).limit(RECENT))
    if scores is not None:
        row, _ = rules_values(engine, config, rules, pd.Timestamp(scores.as_of).date(), cid)
        if len(row):
            story.rules = rule_traces(rules, row.reset_index(drop=True))
            story.rules_stage = next((r.stage for r in story.rules if r.matched), None)
    return story


def check_text(check: dict[str, Any] | None) -> list[str]:
    """A rule's checks as indented lines: ``✓ p_alive 0.21 < 0.3``."""
    if check is None:
        return ["(no condition: takes everyone not matched above)"]

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (datetime, pd.Timestamp)):
            return "—" if pd.isna(v) else f"{v:%Y-%m-%d}"
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    lines: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        mark = "✓" if node["result"] else "✗"
        pad = "  " * depth
        for key in ("all", "any"):
            if key in node:
                lines.append(f"{pad}{mark} {key} of:")
                for c in node[key]:
                    walk(c, depth + 1)
                return
        if "not" in node:
            lines.append(f"{pad}{mark} not:")
            walk(node["not"], depth + 1)
            return
        value = node["value"]
        if isinstance(value, dict):
            times = "" if value["times"] == 1 else f"{value['times']:g} × "
            rhs = f"{times}{value['field']} ({fmt(value['threshold'])})"
        else:
            rhs = fmt(value)
        lines.append(
            f"{pad}{mark} {node['field']} = {fmt(node['actual'])}; needs {node['op']} {rhs}"
        )

    walk(check, 0)
    return lines
