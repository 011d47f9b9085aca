"""The report for a project: attribution brought up to date when needed, the HTML written, and
the key figures as markdown (the Prefect artifact the flows publish)."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.journeys.loader import load_journey
from clm_core.journeys.store import journey_files, project_policy
from clm_core.measure.attribution import rebuild
from clm_core.measure.html import write_report
from clm_core.settings import Settings


def ensure_attribution(engine: Engine, settings: Settings) -> None:
    """Build the attribution table once when enrollments exist and it was never built."""
    with engine.connect() as conn:
        built = conn.execute(sa.select(sa.func.count()).select_from(t.attributions)).scalar()
        entered = conn.execute(
            sa.select(sa.func.count()).select_from(t.journey_enrollments)
        ).scalar()
    if entered and not built:
        rebuild(engine, policy=project_policy(settings.section("journeys")))


def build_report(engine: Engine, settings: Settings, out: str | Path, since: datetime | None = None,
                 locale: str = "en") -> tuple[Path, dict[str, Any]]:
    """Write the project's report (journey diagrams from its journeys directory)."""
    ensure_attribution(engine, settings)
    policy = project_policy(settings.section("journeys"))
    journeys = [load_journey(p, policy) for p in journey_files(settings.journeys_dir)]
    return write_report(engine, out, since, locale, journeys)


def summary_markdown(path: Path, summary: dict[str, Any]) -> str:
    """Key figures and the report's path, for the Prefect UI."""
    def money(x: Any) -> str:
        return (
            "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:,.2f}"
        )

    share = summary.get("clv_top10_share")
    top10 = f"{share:.0%}" if share is not None and math.isfinite(share) else "n/a"
    lines = [f"# Store report as of {summary.get('as_of') or '?'}", "",
             f"HTML report: `{path}`", "",
             f"- customers: {summary['customers']:,}",
             "- stages: " + ", ".join(f"{k} {v:,}" for k, v in summary["stages"].items()),
             f"- 12-month CLV total: {money(summary['clv_total'])}; top 10% hold {top10}",
             (f"- revenue at risk: {money(summary['revenue_at_risk'])} "
              f"({summary['customers_at_risk']:,} customers at risk)"), "",
             ("| journey | treated | control | conversion lift (pts) | 95% interval "
              "| net incremental revenue | verdict |"),
             "|---|---:|---:|---:|---|---:|---|"]
    for j in summary["journeys"]:
        lo, hi = j["conversion_lift_ci"]
        ok = all(isinstance(x, float) and math.isfinite(x) for x in (j["conversion_lift"], lo, hi))
        lines.append(f"| {j['comparison']} | {j['treated']:,} | {j['control']:,} | "
                     + (f"{j['conversion_lift'] * 100:+.1f} | [{lo * 100:+.1f}, {hi * 100:+.1f}]"
                        if ok else "n/a | n/a")
                     + f" | {money(j['net_incremental_revenue'])} | {j['verdict']} |")
    return "\n".join(lines) + "\n"
