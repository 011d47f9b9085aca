"""The store report's figures: queries over the schema, aggregated in the database or over one
column at a time, so a million customers fit in memory and in a minute.

Sections: lifecycle, value, churn, journeys, model check, deliverability. The lift figures come
from ``measure.lift`` and the stage counts from ``reporting.summarize``, so the report shows
exactly what ``clm lift --json`` and ``clm status`` show. ``render`` (``measure.html``) turns a
``ReportData`` into one self-contained HTML file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.db import tables as t
from clm_core.journeys.loader import CompiledJourney
from clm_core.lifecycle.features import NOT_PURCHASES
from clm_core.measure.attribution import purchases_filter
from clm_core.measure.diagram import svg
from clm_core.measure.graph import journey_counts, mermaid_text, structure
from clm_core.measure.lift import LiftReport, lift
from clm_core.reporting import STAGE_ORDER, summarize

AT_RISK = ("at_risk",)
CHURNED = ("churned",)
COHORT_MONTHS = 12  # retention curves: months after the first order
MAX_COHORTS = 12  # the most recent acquisition cohorts drawn
BOUNCE_EVENTS = ("bounced", "bounce", "dropped")
COMPLAINT_EVENTS = ("complained", "spamreport", "spam_report", "complaint")
UNSUBSCRIBE_REASONS = ("unsubscribed", "opted_out", "stop")


@dataclass
class ReportData:
    since: datetime | None
    as_of: date | None
    customers: int
    stages: dict[str, int]
    stages_over_time: list[tuple[date, dict[str, int]]]
    transitions: dict[tuple[str | None, str], int]
    by_stage: list[dict[str, Any]]  # stage, customers, revenue, clv_sum, clv_mean
    clv_hist: list[tuple[float, float, int]]  # (low, high, customers)
    clv_share: dict[str, float]  # top10, top20
    clv_total: float
    rfm_grid: dict[tuple[int, int], int]  # (r, f) -> customers
    retention: list[dict[str, Any]]  # cohort, customers, curve[k] share active in month k
    churn_by: dict[str, list[dict[str, Any]]]  # first_order_value | rfm_segment | locale | country
    at_risk: dict[str, Any]
    journeys_at_risk: list[dict[str, Any]]
    lift: LiftReport
    funnels: list[dict[str, Any]]
    graphs: dict[str, str]  # journey -> Mermaid text
    diagrams: dict[str, str]  # journey -> inline SVG (the same boxes and counts)
    model_check: dict[str, Any] | None
    deliverability: list[dict[str, Any]]
    last_touch: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The key figures (the Prefect artifact and the consistency test read these)."""
        journeys = [c for c in self.lift.comparisons if c.scope in ("journey", "program")]
        return {
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "customers": self.customers,
            "stages": self.stages,
            "clv_total": self.clv_total,
            "clv_top10_share": self.clv_share.get("top10"),
            "revenue_at_risk": self.at_risk.get("clv"),
            "customers_at_risk": self.at_risk.get("customers"),
            "journeys": [
                {
                    "comparison": c.label,
                    "treated": c.treated,
                    "control": c.control,
                    "conversion_lift": c.conversion.diff,
                    "conversion_lift_ci": list(c.conversion.diff_ci),
                    "net_incremental_revenue": c.net_incremental_revenue,
                    "verdict": c.verdict.call,
                }
                for c in journeys
            ],
        }


def _dialect(conn: Connection) -> str:
    return conn.dialect.name


def _month(conn: Connection, col: str) -> str:
    """SQL for the first day of ``col``'s month, as text YYYY-MM."""
    return f"substr({col}, 1, 7)" if _dialect(conn) == "sqlite" else f"to_char({col}, 'YYYY-MM')"


def _stages_over_time(conn: Connection, now: dict[str, int]) -> list[tuple[date, dict[str, int]]]:
    """Customers per stage after each scoring date, rebuilt from the transitions."""
    st = t.stage_transitions
    rows = conn.execute(
        sa.select(st.c.as_of, st.c.from_stage, st.c.to_stage, sa.func.count())
        .group_by(st.c.as_of, st.c.from_stage, st.c.to_stage)
        .order_by(st.c.as_of)
    ).all()
    counts: dict[str, int] = {}
    out: list[tuple[date, dict[str, int]]] = []
    for day, part in pd.DataFrame(rows, columns=["as_of", "from", "to", "n"]).groupby(
        "as_of", sort=True
    ):
        for _, r in part.iterrows():
            counts[r["to"]] = counts.get(r["to"], 0) + int(r["n"])
            if r["from"] is not None and not pd.isna(r["from"]):
                counts[r["from"]] = counts.get(r["from"], 0) - int(r["n"])
        out.append((pd.Timestamp(day).date(), {k: v for k, v in counts.items() if v}))
    if not out and now:
        return []
    return out


def _by_stage(conn: Connection) -> list[dict[str, Any]]:
    cs = t.customer_scores
    rows = conn.execute(sa.select(cs.c.stage, sa.func.count(), sa.func.sum(cs.c.total_spend),
                                  sa.func.sum(cs.c.clv_12m), sa.func.avg(cs.c.clv_12m))
                        .group_by(cs.c.stage)).all()
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    return sorted(
        (
            {
                "stage": s or "unscored",
                "customers": int(n),
                "revenue": float(r or 0),
                "clv_sum": float(c or 0),
                "clv_mean": float(m) if m is not None else math.nan,
            }
            for s, n, r, c, m in rows
        ),
        key=lambda d: (order.get(d["stage"], 99), d["stage"]),
    )


def _clv(conn: Connection) -> tuple[list[tuple[float, float, int]], dict[str, float], float]:
    cs = t.customer_scores
    clv = np.array(
        conn.execute(sa.select(cs.c.clv_12m).where(cs.c.clv_12m.is_not(None))).scalars().all(),
        dtype=float,
    )
    clv = clv[np.isfinite(clv)]
    if not len(clv):
        return [], {}, 0.0
    total = float(clv.sum())
    top = np.sort(clv)[::-1]
    share = {
        f"top{p}": float(top[: max(1, math.ceil(len(top) * p / 100))].sum() / total)
        if total
        else math.nan
        for p in (10, 20)
    }
    hi = float(np.quantile(clv, 0.99)) or float(clv.max()) or 1.0
    edges = np.linspace(0.0, hi, 21)
    counts, _ = np.histogram(np.clip(clv, 0, hi), bins=edges)
    return (
        [(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(len(counts))],
        share,
        total,
    )


def _rfm_grid(conn: Connection) -> dict[tuple[int, int], int]:
    cs = t.customer_scores
    rows = conn.execute(sa.select(cs.c.r_score, cs.c.f_score, sa.func.count())
                        .where(cs.c.r_score.is_not(None), cs.c.f_score.is_not(None))
                        .group_by(cs.c.r_score, cs.c.f_score)).all()
    return {(int(r), int(f)): int(n) for r, f, n in rows}


def _month_index(conn: Connection, col: str) -> str:
    """SQL for ``col``'s month as a number (year * 12 + month), so months subtract."""
    if _dialect(conn) == "sqlite":
        return f"(CAST(substr({col}, 1, 4) AS INTEGER) * 12 + CAST(substr({col}, 6, 2) AS INTEGER))"
    return f"(CAST(EXTRACT(YEAR FROM {col}) AS INTEGER) * 12 + CAST(EXTRACT(MONTH FROM {col}) AS INTEGER))"  # noqa: E501  (one SQL expression)


def _retention(conn: Connection) -> list[dict[str, Any]]:
    """Share of each monthly acquisition cohort that bought in month k after its first order
    (k = 1..COHORT_MONTHS), for the most recent cohorts.

    Only the drawn cohorts' orders are counted: the cohorts are chosen first (one pass over the
    scores), then their customers' orders since the oldest drawn cohort began are read through
    the (customer, ordered_at) index. Counting every cohort's orders sorted all five million
    orders of a million-customer store to draw twelve lines. The latest month observed (which
    decides where each curve stops) is still taken over every cohort, by one backward walk of
    the order-time index that stops at the first qualifying order.
    """
    first = _month(conn, "s.first_order_at")
    month = _month(conn, "o.ordered_at")
    excluded = ", ".join(f"'{x}'" for x in NOT_PURCHASES)
    size = pd.DataFrame(conn.execute(sa.text(
        f"SELECT {first} AS cohort, COUNT(*) FROM customer_scores s "
        "WHERE s.first_order_at IS NOT NULL GROUP BY 1")).all(), columns=["cohort", "size"])
    size = size.set_index("cohort")["size"]
    if size.empty:
        return []
    cohorts = sorted(size.index)[-MAX_COHORTS:]
    since = sa.bindparam("since", datetime.strptime(cohorts[0] + "-01", "%Y-%m-%d"),
                         type_=sa.DateTime())
    # SQLite: the scores drive the join (CROSS JOIN fixes the order), so each drawn customer's
    # orders are one index range; left to itself it walks the order-time index instead
    join = "CROSS JOIN" if _dialect(conn) == "sqlite" else "JOIN"
    sql = sa.text(f"""
        SELECT {first} AS cohort, {month} AS month, COUNT(DISTINCT o.customer_id) AS n
        FROM customer_scores s {join} orders o ON o.customer_id = s.customer_id
        WHERE s.first_order_at >= :since AND o.ordered_at >= :since
          AND o.status NOT IN ({excluded})
        GROUP BY 1, 2""").bindparams(since)
    df = pd.DataFrame(conn.execute(sql).all(), columns=["cohort", "month", "n"])
    purchases = f"""FROM orders o JOIN customer_scores s ON s.customer_id = o.customer_id
        WHERE s.first_order_at IS NOT NULL AND o.status NOT IN ({excluded})"""
    if df.empty and conn.execute(sa.text(f"SELECT 1 {purchases} LIMIT 1")).first() is None:
        return []
    k = f"{_month_index(conn, 'o.ordered_at')} - {_month_index(conn, 's.first_order_at')}"
    latest_month = conn.execute(sa.text(
        f"SELECT {month} {purchases} AND {k} BETWEEN 1 AND {COHORT_MONTHS} "
        "ORDER BY o.ordered_at DESC LIMIT 1")).scalar()

    def index(ym: pd.Series) -> pd.Series:
        return ym.str.slice(0, 4).astype(int) * 12 + ym.str.slice(5, 7).astype(int)

    if len(df):
        df["k"] = index(df["month"]) - index(df["cohort"])
        df = df[(df["k"] >= 1) & (df["k"] <= COHORT_MONTHS)]
    latest = index(pd.Series([latest_month])).iloc[0] if latest_month is not None else 0
    out = []
    for cohort in cohorts:
        part = df[df["cohort"] == cohort].set_index("k")["n"] if len(df) else pd.Series()
        n = int(size[cohort])
        seen = latest - index(pd.Series([cohort])).iloc[0]  # months observed so far
        curve = [
            float(part.get(k, 0)) / n if k <= seen else None for k in range(1, COHORT_MONTHS + 1)
        ]
        out.append({"cohort": cohort, "customers": n, "curve": curve})
    return out


def _churn_by(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Churned and at-risk shares of buyers, by first-order value band, RFM segment, locale and
    country."""
    cs, c, o = t.customer_scores, t.customers, t.orders
    churned = sa.func.sum(sa.case((cs.c.stage.in_(CHURNED), 1), else_=0))
    risk = sa.func.sum(sa.case((cs.c.stage.in_(AT_RISK), 1), else_=0))
    buyers = cs.c.n_orders > 0

    def rows(key: Any, q: sa.Select) -> list[dict[str, Any]]:
        out = []
        for k, n, ch, r, clv in conn.execute(q):
            n = int(n)
            out.append(
                {
                    "key": "—" if k is None else str(k),
                    "customers": n,
                    "churned": int(ch or 0) / n if n else math.nan,
                    "at_risk": int(r or 0) / n if n else math.nan,
                    "clv_at_risk": float(clv or 0),
                }
            )
        return sorted(out, key=lambda d: -d["customers"])

    clv_risk = sa.func.sum(sa.case((cs.c.stage.in_(AT_RISK), cs.c.clv_12m), else_=0))
    out = {
        "rfm_segment": rows(
            cs.c.rfm_segment,
            sa.select(cs.c.rfm_segment, sa.func.count(), churned, risk, clv_risk)
            .where(buyers)
            .group_by(cs.c.rfm_segment),
        ),
    }
    for col in ("locale", "country"):
        out[col] = rows(c.c[col], sa.select(c.c[col], sa.func.count(), churned, risk, clv_risk)
                        .join(c, c.c.id == cs.c.customer_id).where(buyers).group_by(c.c[col]))[:15]
    # first-order value: the amount of the order at the customer's first purchase time. The
    # stage comes back as a small code and the amount as a float, read into numpy directly:
    # a row object and a Decimal per customer were most of this section's time at a million.
    code = sa.case((cs.c.stage.in_(CHURNED), 1), (cs.c.stage.in_(AT_RISK), 2), else_=0)
    first = (
        sa.select(code, sa.cast(sa.func.max(o.c.amount), sa.Float))
        .join(
            o, sa.and_(o.c.customer_id == cs.c.customer_id, o.c.ordered_at == cs.c.first_order_at)
        )
        .where(buyers, purchases_filter(o.c.status))
        .group_by(cs.c.customer_id, cs.c.stage)
    )
    fetched = conn.execute(first).all()
    if fetched:
        codes, amounts = (np.array(col) for col in zip(*fetched))
        amount = pd.Series(amounts.astype(float))
        edges = np.unique(np.quantile(amount, [0, 0.2, 0.4, 0.6, 0.8, 1.0]))
        band = pd.cut(amount, edges, include_lowest=True, duplicates="drop")
        flags = pd.DataFrame({"churned": codes == 1, "at_risk": codes == 2})
        out["first_order_value"] = [
            {"key": f"{max(interval.left, 0):,.0f}–{interval.right:,.0f}", "customers": int(n),
             "churned": float(ch), "at_risk": float(r), "clv_at_risk": math.nan}
            for interval, n, ch, r in flags.groupby(band, observed=True).agg(
                n=("churned", "size"), churned=("churned", "mean"), at_risk=("at_risk", "mean")
            ).itertuples()
        ]
    return out


def _at_risk(conn: Connection) -> dict[str, Any]:
    cs = t.customer_scores
    n, clv = conn.execute(sa.select(sa.func.count(), sa.func.sum(cs.c.clv_12m))
                          .where(cs.c.stage.in_(AT_RISK))).one()
    return {"customers": int(n), "clv": float(clv or 0)}


def _journeys_at_risk(conn: Connection, since: datetime | None) -> list[dict[str, Any]]:
    """Journeys that reached customers now at risk or churned, and what followed."""
    a, cs = t.attributions, t.customer_scores
    q = (
        sa.select(
            a.c.journey,
            a.c.is_control,
            sa.func.count(),
            sa.func.sum(sa.case((a.c.goal.is_not(None), 1), else_=0)),
            sa.func.sum(a.c.revenue),
        )
        .join(cs, cs.c.customer_id == a.c.customer_id)
        .where(cs.c.stage.in_(AT_RISK + CHURNED), a.c.window_complete)
        .group_by(a.c.journey, a.c.is_control)
    )
    if since is not None:
        q = q.where(a.c.entered_at >= since)
    out: dict[str, dict[str, Any]] = {}
    for j, ctl, n, k, rev in conn.execute(q):
        g = "control" if ctl else "treated"
        d = out.setdefault(j, {"journey": j})
        d[f"{g}_customers"] = int(n)
        d[f"{g}_converted"] = int(k or 0) / int(n) if n else math.nan
        d[f"{g}_revenue"] = float(rev or 0) / int(n) if n else math.nan
    return sorted(out.values(), key=lambda d: d["journey"])


def _funnels(conn: Connection, since: datetime | None) -> list[dict[str, Any]]:
    """Treated enrollments: entered, sent, delivered, opened, clicked, converted (each counts
    enrollments with at least one)."""
    a = t.attributions

    def some(col: Any) -> Any:
        return sa.func.sum(sa.case((col > 0, 1), else_=0))

    q = (sa.select(a.c.journey, sa.func.count(), some(a.c.messages_sent), some(a.c.delivered),
                   some(a.c.opened), some(a.c.clicked),
                   sa.func.sum(sa.case((a.c.goal.is_not(None), 1), else_=0)),
                   sa.func.sum(a.c.coupons_redeemed), sa.func.sum(a.c.coupon_cost))
         .where(sa.not_(a.c.is_control)).group_by(a.c.journey).order_by(a.c.journey))
    if since is not None:
        q = q.where(a.c.entered_at >= since)
    keys = ("journey", "entered", "sent", "delivered", "opened", "clicked", "converted",
            "coupons_redeemed", "coupon_cost")
    return [
        dict(zip(keys, (r[0], *(int(x or 0) for x in r[1:8]), float(r[8] or 0))))
        for r in conn.execute(q)
    ]


def _last_touch(conn: Connection, since: datetime | None) -> list[dict[str, Any]]:
    """Treated conversions credited to the last message before the first order (secondary)."""
    a = t.attributions
    q = (sa.select(a.c.journey, a.c.last_touch_step, a.c.last_touch_channel, sa.func.count(),
                   sa.func.sum(a.c.revenue))
         .where(sa.not_(a.c.is_control), a.c.goal.is_not(None), a.c.last_touch_step.is_not(None))
         .group_by(a.c.journey, a.c.last_touch_step, a.c.last_touch_channel)
         .order_by(a.c.journey, a.c.last_touch_step))
    if since is not None:
        q = q.where(a.c.entered_at >= since)
    return [{"journey": j, "step": s, "channel": c, "conversions": int(n), "revenue": float(r or 0)}
            for j, s, c, n, r in conn.execute(q)]


def _model_check(conn: Connection) -> dict[str, Any] | None:
    mf = t.model_fits
    for row in conn.execute(
        sa.select(mf).where(mf.c.model != "gamma_gamma").order_by(mf.c.id.desc())
    ):
        table = (row.diagnostics or {}).get("calibration_holdout")
        if table:
            return {"fit_id": row.id, "model": row.model, "window_end": row.window_end,
                    "holdout_end": row.holdout_end, "rows": table}
    return None


def _deliverability(conn: Connection, since: datetime | None) -> list[dict[str, Any]]:
    m, ev, sp = t.messages, t.events, t.suppressions
    q = sa.select(m.c.channel, sa.func.count()).where(m.c.status == "sent").group_by(m.c.channel)
    if since is not None:
        q = q.where(m.c.sent_at >= since)
    sent: dict[str, int] = {str(c): int(n) for c, n in conn.execute(q)}
    channel = sa.func.coalesce(ev.c.properties["channel"].as_string(), "email")
    eq = sa.select(channel, ev.c.event_type, sa.func.count()).where(
        ev.c.event_type.in_(BOUNCE_EVENTS + COMPLAINT_EVENTS)).group_by(channel, ev.c.event_type)
    if since is not None:
        eq = eq.where(ev.c.occurred_at >= since)
    events: dict[tuple[str, str], int] = {}
    for ch, kind, n in conn.execute(eq):
        key = "bounced" if kind in BOUNCE_EVENTS else "complained"
        events[(ch, key)] = events.get((ch, key), 0) + int(n)
    failed: dict[str, int] = {str(c): int(n) for c, n in conn.execute(sa.select(
        m.c.channel, sa.func.count()).where(m.c.status == "failed").group_by(m.c.channel))}
    uq = (
        sa.select(sp.c.channel, sa.func.count())
        .where(sp.c.reason.in_(UNSUBSCRIBE_REASONS))
        .group_by(sp.c.channel)
    )
    if since is not None:
        uq = uq.where(sp.c.created_at >= since)
    unsub: dict[str, int] = {str(c): int(n) for c, n in conn.execute(uq)}
    out = []
    for ch in sorted(set(sent) | set(failed) | set(unsub) | {c for c, _ in events}):
        n = int(sent.get(ch, 0))
        counts = {"sent": n, "failed": failed.get(ch, 0), "bounced": events.get((ch, "bounced"), 0),
                  "complained": events.get((ch, "complained"), 0), "unsubscribed": unsub.get(ch, 0)}
        row: dict[str, Any] = {"channel": ch, **counts}
        for k in ("bounced", "complained", "unsubscribed"):
            row[f"{k}_rate"] = counts[k] / n if n else math.nan
        out.append(row)
    return out


def collect(engine: Engine, since: datetime | None = None,
            journeys: Sequence[CompiledJourney] = ()) -> ReportData:
    """Every figure of the report (reads only)."""
    status = summarize(engine, since)
    report_lift = lift(engine, None, since)
    with engine.connect() as conn:
        cs = t.customer_scores
        as_of = conn.execute(sa.select(sa.func.max(cs.c.as_of))).scalar()
        customers = int(
            conn.execute(sa.select(sa.func.count()).select_from(t.customers)).scalar() or 0
        )
        hist, share, total = _clv(conn)
        shapes = {j.name: structure(j, journey_counts(conn, j.name)) for j in journeys}
        data = ReportData(
            since=since,
            as_of=pd.Timestamp(as_of).date() if as_of else None,
            customers=customers,
            stages=status.stages,
            stages_over_time=_stages_over_time(conn, status.stages),
            transitions=status.transitions,
            by_stage=_by_stage(conn),
            clv_hist=hist,
            clv_share=share,
            clv_total=total,
            rfm_grid=_rfm_grid(conn),
            retention=_retention(conn),
            churn_by=_churn_by(conn),
            at_risk=_at_risk(conn),
            journeys_at_risk=_journeys_at_risk(conn, since),
            lift=report_lift,
            funnels=_funnels(conn, since),
            graphs={name: mermaid_text(d) for name, d in shapes.items()},
            diagrams={name: svg(d) for name, d in shapes.items()},
            model_check=_model_check(conn),
            deliverability=_deliverability(conn, since),
            last_touch=_last_touch(conn, since),
        )
    return data
