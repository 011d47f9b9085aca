"""How fast the journey engine plans: 1,000,000 scored customers against the sample journeys.

    ./run.sh bench bench_plan [--customers 1000000] [--naive 200] [--database URL]

Scored customers are generated directly (stages, scores, zones, consent, recent stage
transitions), so the figure is the engine alone: enrollment, holdout draws, steps, contact
policy (consent, caps, quiet hours in local time) and the outbox rows. Two evaluations are timed:
the first (everyone who triggers enters and gets their first message) and one three days later
(waits end, branches, second messages, caps against the first ones). The baseline is the same
engine called once per customer on a slice — what a per-customer loop costs — extrapolated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clm_core.journeys.engine import ENROLLMENT_COLUMNS, Snapshot, plan  # noqa: E402
from clm_core.journeys.model import ProjectPolicy  # noqa: E402
from clm_core.journeys.store import load_journeys  # noqa: E402

STAGES = ["prospect", "new", "active", "loyal", "at_risk", "churned"]
SHARES = [0.10, 0.15, 0.30, 0.10, 0.15, 0.20]
ZONES = ["America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/London",
         "Europe/Berlin", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "UTC"]
NOW = pd.Timestamp("2026-11-24 06:00")


def scored_customers(n: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    stage = rng.choice(STAGES, size=n, p=SHARES)
    n_orders = np.where(stage == "prospect", 0, np.where(stage == "new", 1, rng.integers(2, 12, n)))
    dsl = np.where(stage == "prospect", np.nan, rng.uniform(1, 400, n)).round(1)
    customers = pd.DataFrame({
        "stage": stage, "stage_since": NOW - pd.to_timedelta(rng.uniform(0, 30, n), unit="D"),
        "n_orders": n_orders, "purchase_days": n_orders, "days_since_last_order": dsl,
        "clv_12m": rng.gamma(2.0, 60.0, n).round(2), "p_alive": rng.random(n).round(3),
        "rfm_segment": "regular", "timezone": rng.choice(ZONES, size=n),
        "consent_email": rng.random(n) < 0.85, "consent_sms": rng.random(n) < 0.6,
        "email": "someone@example.com", "phone": "+12025550123", "locale": "en-US",
    }, index=pd.Index(np.arange(1, n + 1), name="customer_id"))
    moved = (stage != "prospect") & (stage != "active") & (rng.random(n) < 0.3)
    ids = customers.index[moved]
    transitions = pd.DataFrame({
        "customer_id": ids.to_numpy(), "from_stage": "active", "to_stage": stage[moved],
        "transitioned_at": (NOW - pd.to_timedelta(rng.uniform(0, 3, len(ids)), unit="D"))
        .astype("datetime64[ns]")})
    return customers, transitions


def follow_up(first, customers: pd.DataFrame, transitions: pd.DataFrame) -> Snapshot:
    """The state after writing the first plan: enrollments with ids, the outbox as the ledger."""
    e = first.enrollments.copy()
    e["id"] = -e["id"]
    m = first.messages
    live = m[m["status"] != "skipped"]
    ledger = pd.DataFrame({"customer_id": live["customer_id"], "channel": live["channel"],
                           "tags": live["tags"], "at": live["send_after"]})
    return Snapshot(customers, enrollments=e[ENROLLMENT_COLUMNS], transitions=transitions,
                    ledger=ledger)


def database_run(url: str, customers: pd.DataFrame, transitions: pd.DataFrame, journeys,
                 policy: ProjectPolicy) -> None:
    """The same evaluation through the database: load the snapshot, plan, write the plan."""
    import sqlalchemy as sa

    from clm_core.db import tables as t
    from clm_core.db.bulk import write_frame
    from clm_core.db.migrate import open_database
    from clm_core.journeys.store import load_snapshot, sync_versions, write_plan

    db = open_database(url)
    n = len(customers)
    t0 = time.perf_counter()
    with db.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame({
            "id": customers.index.to_numpy(), "external_id": [f"b-{i}" for i in customers.index],
            **{c: customers[c].to_numpy() for c in ("email", "phone", "locale", "timezone",
                                                    "consent_email", "consent_sms")}}))
        scores = customers[["stage", "stage_since", "n_orders", "purchase_days",
                            "days_since_last_order", "clv_12m", "p_alive", "rfm_segment"]].copy()
        scores.insert(0, "customer_id", customers.index.to_numpy())
        scores["as_of"], scores["recorded_at"] = NOW.normalize(), NOW
        write_frame(conn, t.customer_scores, scores)
        tr = transitions.copy()
        tr["as_of"] = NOW.normalize()
        write_frame(conn, t.stage_transitions, tr)
    print(
        f"database: {n:,} customers stored in {time.perf_counter() - t0:.1f}s ({db.dialect.name})"
    )
    with db.begin() as conn:
        t0 = time.perf_counter()
        sync_versions(conn, journeys, NOW.to_pydatetime())
        snap = load_snapshot(conn, journeys, NOW.to_pydatetime(), policy)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = plan(journeys, snap, NOW, policy)
        t_plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        written = write_plan(conn, result)
        t_write = time.perf_counter() - t0
    print(f"evaluation through the database: load {t_load:.1f}s + plan {t_plan:.1f}s + write "
          f"{t_write:.1f}s = {t_load + t_plan + t_write:.1f}s ({written.enrollments_created:,} "
          f"enrollments, {written.messages_created:,} messages written)")
    with db.connect() as conn:
        assert (
            conn.scalar(sa.select(sa.func.count()).select_from(t.messages))
            == written.messages_created
        )
    db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--naive", type=int, default=200, help="customers in the per-customer baseline")
    ap.add_argument("--database", metavar="URL", help="also evaluate through this (empty) "
                    "database: load, plan and write")
    args = ap.parse_args()
    policy = ProjectPolicy()
    journeys = [j for j in load_journeys(ROOT / "journeys", policy) if j.spec.status == "active"]
    for j in journeys:
        j.version = 1
    t0 = time.perf_counter()
    customers, transitions = scored_customers(args.customers)
    print(f"generated {len(customers):,} scored customers, {len(transitions):,} recent transitions "
          f"in {time.perf_counter() - t0:.1f}s; journeys: {', '.join(j.name for j in journeys)}")

    t0 = time.perf_counter()
    first = plan(journeys, Snapshot(customers, transitions=transitions), NOW, policy)
    t_first = time.perf_counter() - t0
    m = first.messages
    print(
        f"evaluation 1: {t_first:.1f}s  entered {int(first.enrollments['is_new'].sum()):,}, "
        f"messages {len(m):,} ({', '.join(f'{k} {v:,}' for k, v in m['status'].value_counts().items())})"  # noqa: E501  (prose or a URL: clearer whole)
    )

    later = NOW + pd.Timedelta(days=3, hours=6)
    snap = follow_up(first, customers, transitions)
    t0 = time.perf_counter()
    second = plan(journeys, snap, later, policy)
    t_second = time.perf_counter() - t0
    m2 = second.messages
    print(
        f"evaluation 2 (+3d6h): {t_second:.1f}s  enrollments changed {len(second.enrollments):,}, "
        f"messages {len(m2):,} ({', '.join(f'{k} {v:,}' for k, v in m2['status'].value_counts().items())})"  # noqa: E501  (prose or a URL: clearer whole)
    )

    # baseline: the same engine once per customer (what a per-customer loop would cost)
    rng = np.random.default_rng(1)
    sample = rng.choice(customers.index.to_numpy(), size=args.naive, replace=False)
    t0 = time.perf_counter()
    for cid in sample:
        one = customers.loc[[cid]]
        plan(journeys, Snapshot(one, transitions=transitions[transitions["customer_id"] == cid]),
             NOW, policy)
    per = (time.perf_counter() - t0) / args.naive
    naive_total = per * args.customers
    print(f"per-customer loop: {per * 1000:.1f} ms/customer on {args.naive} customers -> "
          f"{naive_total / 3600:.1f} h for {args.customers:,} (extrapolated)")
    print(f"speed-up of the vectorised engine (evaluation 1): {naive_total / t_first:,.0f}x")
    if args.database:
        database_run(args.database, customers, transitions, journeys, policy)
    verdict = "PASS" if t_first < 30 and t_second < 30 else "FAIL"
    print(f"{verdict}: {args.customers:,} customers planned in {t_first:.1f}s and {t_second:.1f}s "
          f"(target < 30 s each)")


if __name__ == "__main__":
    main()
