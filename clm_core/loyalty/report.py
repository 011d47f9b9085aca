"""The programme's figures for a store owner: members per tier over time, the points liability,
the redemption rate, and whether the points-expiry reminder earns more than it costs (its lift
against its holdout, from the attribution table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.loyalty.spec import Programme

EXPIRY_JOURNEY = "points_expiring"  # the sample reminder whose lift the report shows
DEBITS = ("redeem", "reward")  # points the members used (expired points were not used)


@dataclass
class LoyaltyReport:
    as_of: datetime | None
    members: int
    tiers: dict[str, int]
    tiers_over_time: list[tuple[str, dict[str, int]]]  # month -> tier -> members at its end
    points_outstanding: int
    liability: float  # outstanding points x point_value (negative balances count as 0)
    earned: int
    used: int
    expired: int
    redemption_rate: float | None  # used / earned (net of reversals)
    expiry_lift: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        tiers = ", ".join(f"{k} {v:,}" for k, v in self.tiers.items()) or "none"
        rate = f"{self.redemption_rate:.1%}" if self.redemption_rate is not None else "n/a"
        out = [f"members {self.members:,} ({tiers})",
               f"points outstanding {self.points_outstanding:,}; liability {self.liability:,.2f}",
               f"points earned {self.earned:,}, used {self.used:,} (redemption rate {rate}), "
               f"expired {self.expired:,}"]
        if self.tiers_over_time:
            out.append("members per tier at each month's end:")
            out += [f"  {month}  " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                    for month, counts in self.tiers_over_time]
        lift = self.expiry_lift
        if lift:
            lo, hi = lift["conversion_lift_ci"]
            out.append(f"{EXPIRY_JOURNEY}: treated {lift['treated']:,} vs control "
                       f"{lift['control']:,}; conversion lift {lift['conversion_lift']:+.1%} "
                       f"(95% CI {lo:+.1%} to {hi:+.1%}, {lift['method']}); {lift['verdict']}")
        out += self.notes
        return out


def tiers_over_time(
    transitions: pd.DataFrame, order: list[str]
) -> list[tuple[str, dict[str, int]]]:
    """Each member's tier at the end of every month, from the tier transitions (the last
    transition of a customer up to a month's end is the tier they held then)."""
    if transitions.empty:
        return []
    tr = transitions.sort_values(["transitioned_at", "id"])
    months = pd.period_range(tr["transitioned_at"].min().to_period("M"),
                             tr["transitioned_at"].max().to_period("M"), freq="M")
    out = []
    for month in months:
        end = month.end_time
        held = tr[tr["transitioned_at"] <= end].groupby("customer_id")["to_tier"].last()
        counts = held.value_counts()
        out.append((str(month), {k: int(counts[k]) for k in order if k in counts.index}))
    return out


def loyalty_report(engine: Engine, prog: Programme) -> LoyaltyReport:
    lg, st, tt = t.points_ledger, t.loyalty_status, t.tier_transitions
    order = prog.tier_names()
    with engine.connect() as conn:
        as_of = conn.execute(sa.select(sa.func.max(st.c.as_of))).scalar()
        tiers: dict[str, int] = dict(
            conn.execute(sa.select(st.c.tier, sa.func.count()).group_by(st.c.tier)).all()
        )
        outstanding = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(
            sa.case((st.c.points_balance > 0, st.c.points_balance), else_=0)), 0))).scalar()
        kinds = dict(conn.execute(sa.select(lg.c.kind, sa.func.sum(lg.c.points))
                                  .group_by(lg.c.kind)).all())
        transitions = pd.DataFrame(conn.execute(sa.select(tt.c.id, tt.c.customer_id, tt.c.to_tier,
                                                          tt.c.transitioned_at)).all(),
                                   columns=["id", "customer_id", "to_tier", "transitioned_at"])
    transitions["transitioned_at"] = pd.to_datetime(transitions["transitioned_at"])
    earned = int(sum(kinds.get(k, 0) or 0 for k in ("earn", "bonus", "reverse")))
    used = -int(sum(kinds.get(k, 0) or 0 for k in DEBITS))
    expired = -int(kinds.get("expire", 0) or 0)
    report = LoyaltyReport(
        as_of=pd.Timestamp(as_of).to_pydatetime() if as_of else None,
        members=int(sum(tiers.values())), tiers={k: int(tiers[k]) for k in order if k in tiers},
        tiers_over_time=tiers_over_time(transitions, order),
        points_outstanding=int(outstanding or 0),
        liability=float(outstanding or 0) * float(prog.point_value), earned=earned, used=used,
        expired=expired, redemption_rate=used / earned if earned > 0 else None)
    report.expiry_lift = _expiry_lift(engine, report)
    return report


def _expiry_lift(engine: Engine, report: LoyaltyReport) -> dict[str, Any] | None:
    """The reminder's lift from the stored attribution (``clm attribute`` or the daily flow)."""
    from clm_core.measure.lift import lift

    found = [c for c in lift(engine, EXPIRY_JOURNEY).comparisons if c.scope == "journey"]
    if not found:
        report.notes.append(f"{EXPIRY_JOURNEY}: no completed conversion windows yet, so no lift "
                            "(it needs entries, its holdout and `clm attribute`)")
        return None
    c = found[0]
    return {"treated": c.treated, "control": c.control, "conversion_lift": c.conversion.diff,
            "conversion_lift_ci": list(c.conversion.diff_ci),
            "method": c.conversion.method,
            "net_incremental_revenue": c.net_incremental_revenue, "verdict": c.verdict.text}
