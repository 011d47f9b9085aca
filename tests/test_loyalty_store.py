"""The loyalty evaluation on a real database (SQLite and PostgreSQL): the hand-computed store
end to end through ``clm loyalty``, reruns and a kill -9 that change nothing, operators'
adjustments, and tier triggers entering a journey."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from tests.test_loyalty_ledger import PROGRAMME, orders

REPO = Path(__file__).resolve().parent.parent


def project(tmp_path: Path, db_url: str) -> Path:
    root = tmp_path / "shop"
    (root / "journeys").mkdir(parents=True)
    (root / "clm.toml").write_text(f'[clm]\ndatabase_url = "{db_url}"\n', encoding="utf-8")
    (root / "journeys" / "loyalty.yaml").write_text(PROGRAMME, encoding="utf-8")
    return root


# The hand-computed store. Programme (tests/test_loyalty_ledger.PROGRAMME): 1 point per unit,
# rounded down; bonuses bday (x2 in the birthday month), big (+50 on orders of 100 or more),
# vinyl (x3 on orders with a VNL- item); points expire 365 days after they are earned; tiers on
# spend over 365 days with 30 days' grace: member 0, silver 200 (x1.25), gold 500 (x1.5); a
# 500-point voucher. The first four customers are the small store of test_loyalty_ledger.
BIRTHDAYS = {1: "1990-03-14", 9: "1985-04-22"}
HAND_ORDERS = [  # id, customer, ordered_at, amount, status, points_redeemed
    (1, 1, "2025-01-10", 120.70, "completed", None),
    (2, 1, "2025-03-05", 30.00, "completed", None),
    (3, 2, "2025-02-01", 600.00, "completed", None),
    (4, 2, "2025-02-02", 90.00, "refunded", None),
    (5, 3, "2024-01-02", 80.00, "completed", None),
    (6, 3, "2024-06-01", 10.00, "completed", 40),
    (7, 4, "2025-03-01", 70.00, "pending", None),
    (8, 5, "2024-11-15", 250.00, "completed", None),
    (9, 6, "2024-05-10", 520.00, "completed", None),
    (10, 7, "2025-02-14", 45.50, "completed", None),
    (11, 7, "2025-03-10", 20.00, "completed", None),
    (12, 8, "2024-12-01", 210.40, "completed", None),
    (13, 9, "2025-03-20", 800.00, "completed", None),
    (14, 10, "2025-03-15", 50.00, "cancelled", None),
]
# Orders that arrive between the first and the second evaluation.
LATER_ORDERS = [
    (15, 6, "2025-05-20", 250.00, "completed", None),
    (16, 8, "2025-04-20", 40.00, "completed", None),
    (17, 9, "2025-04-05", 100.00, "completed", None),
]
SKUS = {10: "VNL-001", 11: "CD-009", 16: "VNL-7"}  # order -> its one item


def write_orders(engine: sa.Engine, rows: list[tuple]) -> None:
    df = orders(rows)
    df["external_id"] = "o" + df["id"].astype(str)
    df["points_redeemed"] = df["points_redeemed"].astype("Int64")
    items = pd.DataFrame([{"order_id": o, "line_no": 1, "sku": s} for o, s in SKUS.items()
                          if o in set(df["id"])])
    with engine.begin() as conn:
        write_frame(conn, t.orders, df)
        if not items.empty:
            write_frame(conn, t.order_items, items)


def seed(engine: sa.Engine, n_extra: int = 0, hand: int = 4) -> None:
    """The first ``hand`` customers of the hand-computed store with their orders, plus
    ``n_extra`` plain customers with five orders each."""
    customers = [{"id": i, "external_id": f"c{i}",
                  "attributes": {"birthday": BIRTHDAYS[i]} if i in BIRTHDAYS else None}
                 for i in range(1, hand + 1)]
    rows = [o for o in HAND_ORDERS if o[1] <= hand]
    for k in range(n_extra):
        cid = hand + 1 + k
        customers.append({"id": cid, "external_id": f"c{cid}", "attributes": None})
        for m in range(5):
            rows.append((100 + 5 * k + m, cid, f"2024-{1 + (k + m) % 12:02d}-{1 + m * 5:02d}",
                         float(20 + (k * 7 + m * 13) % 180), "completed", None))
    with engine.begin() as conn:
        write_frame(conn, t.customers, pd.DataFrame(customers))
    write_orders(engine, rows)


def ledger(engine: sa.Engine) -> list[tuple]:
    lg = t.points_ledger
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(lg.c.key, lg.c.customer_id, lg.c.kind, lg.c.points, lg.c.occurred_at,
                      lg.c.expires_at).order_by(lg.c.key))]


def status(engine: sa.Engine) -> dict[int, tuple]:
    st = t.loyalty_status
    with engine.connect() as conn:
        return {r.customer_id: (r.points_balance, r.tier) for r in conn.execute(sa.select(st))}


def expiring(engine: sa.Engine) -> dict[int, tuple]:
    """What the expiry journey reads: points expiring in 30 days and the next expiry."""
    st = t.loyalty_status
    with engine.connect() as conn:
        return {r.customer_id: (r.points_expiring_30d, r.next_expiry_at)
                for r in conn.execute(sa.select(st))}


def run(root: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--project", str(root), *args])
    assert result.exit_code == 0, result.output
    return result.output


E1, E2, E3 = "2025-03-31 23:00", "2025-05-31 23:00", "2025-07-15 23:00"
# key: (customer, kind, points, occurred_at, expires_at), worked out by hand.
FIRST_ROWS = {
    # customer 1, birthday in March: 120.70 -> 120 (rounded down), +50 (an order of 100 or
    # more); 30.00 on 5 March -> 30, and 30 more in her birthday month.
    "earn:1": (1, "earn", 120, "2025-01-10", "2026-01-10"),
    "bonus:big:1": (1, "bonus", 50, "2025-01-10", "2026-01-10"),
    "earn:2": (1, "earn", 30, "2025-03-05", "2026-03-05"),
    "bonus:bday:2": (1, "bonus", 30, "2025-03-05", "2026-03-05"),
    # customer 2: 600 + 50; the refunded 90 never earned. 650 buys one voucher: 150 left.
    "earn:3": (2, "earn", 600, "2025-02-01", "2026-02-01"),
    "bonus:big:3": (2, "bonus", 50, "2025-02-01", "2026-02-01"),
    "reward:voucher:2:1": (2, "reward", -500, E1, None),
    # customer 3: 80 earned 2024-01-02 expire 365 days later, 2025-01-01 (2024 is a leap
    # year); 40 were spent on the June order first (oldest points go first): 40 expire.
    "earn:5": (3, "earn", 80, "2024-01-02", "2025-01-01"),
    "earn:6": (3, "earn", 10, "2024-06-01", "2025-06-01"),
    "redeem:6": (3, "redeem", -40, "2024-06-01", None),
    "expire:earn:5": (3, "expire", -40, "2025-01-01", None),
    # customer 4: the order is pending: nothing yet. Customer 5: 250 + 50.
    "earn:8": (5, "earn", 250, "2024-11-15", "2025-11-15"),
    "bonus:big:8": (5, "bonus", 50, "2024-11-15", "2025-11-15"),
    # customer 6: 520 + 50 = 570 buys a voucher: 70 left.
    "earn:9": (6, "earn", 520, "2024-05-10", "2025-05-10"),
    "bonus:big:9": (6, "bonus", 50, "2024-05-10", "2025-05-10"),
    "reward:voucher:6:1": (6, "reward", -500, E1, None),
    # customer 7: 45.50 with a VNL- item -> 45, and (3 - 1) x 45.50 = 91 vinyl bonus; the CD
    # order earns its 20 only.
    "earn:10": (7, "earn", 45, "2025-02-14", "2026-02-14"),
    "bonus:vinyl:10": (7, "bonus", 91, "2025-02-14", "2026-02-14"),
    "earn:11": (7, "earn", 20, "2025-03-10", "2026-03-10"),
    # customer 8: 210.40 -> 210 + 50. Customer 9: 800 + 50 = 850, a voucher: 350 left.
    "earn:12": (8, "earn", 210, "2024-12-01", "2025-12-01"),
    "bonus:big:12": (8, "bonus", 50, "2024-12-01", "2025-12-01"),
    "earn:13": (9, "earn", 800, "2025-03-20", "2026-03-20"),
    "bonus:big:13": (9, "bonus", 50, "2025-03-20", "2026-03-20"),
    "reward:voucher:9:1": (9, "reward", -500, E1, None),
    # customer 10: the only order was cancelled: nothing, and not a member.
}
SECOND_ROWS = {
    # customer 4's order completed: 70 at the entry tier's rate (she held no tier).
    "earn:7": (4, "earn", 70, "2025-03-01", "2026-03-01"),
    # customer 5's order was refunded after it earned: minus 250 + 50, at the evaluation's time.
    "reverse:8": (5, "reverse", -300, E2, None),
    # customer 6 is gold: 250 x 1.5 = 375, +50 flat. Her 2024-05-10 lots expired on
    # 2025-05-10; the voucher took 500 of earn:9's 520 first: 20 of it and all 50 of the bonus.
    "earn:15": (6, "earn", 375, "2025-05-20", "2026-05-20"),
    "bonus:big:15": (6, "bonus", 50, "2025-05-20", "2026-05-20"),
    "expire:earn:9": (6, "expire", -20, "2025-05-10", None),
    "expire:bonus:big:9": (6, "expire", -50, "2025-05-10", None),
    # customer 8 is silver: 40 x 1.25 = 50, and the vinyl bonus (3 - 1) x 50 = 100.
    "earn:16": (8, "earn", 50, "2025-04-20", "2026-04-20"),
    "bonus:vinyl:16": (8, "bonus", 100, "2025-04-20", "2026-04-20"),
    # customer 9 is gold and it is April, her birthday month: 100 x 1.5 = 150, the birthday
    # bonus (2 - 1) x 150 = 150, +50 flat; 350 + 350 = 700 buys her second voucher: 200 left.
    "earn:17": (9, "earn", 150, "2025-04-05", "2026-04-05"),
    "bonus:bday:17": (9, "bonus", 150, "2025-04-05", "2026-04-05"),
    "bonus:big:17": (9, "bonus", 50, "2025-04-05", "2026-04-05"),
    "reward:voucher:9:2": (9, "reward", -500, E2, None),
}
THIRD_ROWS = {
    # customer 3's remaining 10 points (from 2024-06-01) expired on 2025-06-01.
    "expire:earn:6": (3, "expire", -10, "2025-06-01", None),
}


def expected(*parts: dict[str, tuple]) -> dict[str, tuple]:
    return {k: (c, kind, p, pd.Timestamp(at), None if exp is None else pd.Timestamp(exp))
            for part in parts for k, (c, kind, p, at, exp) in part.items()}


def as_dict(rows: list[tuple]) -> dict[str, tuple]:
    return {k: (c, kind, p, pd.Timestamp(at), None if exp is None else pd.Timestamp(exp))
            for k, c, kind, p, at, exp in rows}


def tier_moves(engine: sa.Engine) -> list[tuple]:
    tt = t.tier_transitions
    with engine.connect() as conn:
        return [(r.customer_id, r.from_tier, r.to_tier, pd.Timestamp(r.transitioned_at))
                for r in conn.execute(sa.select(tt).order_by(tt.c.transitioned_at,
                                                             tt.c.customer_id))]


def test_hand_computed_store_through_the_command(tmp_path: Path, db_url: str,
                                                  engine: sa.Engine) -> None:
    """Ten customers over three evaluations: every tier, a refund before and after earning, a
    redemption, expiries, rewards, birthday and SKU bonuses, tier multipliers, and downgrades
    after the grace period (one by a refund, one by an order leaving the window)."""
    root = project(tmp_path, db_url)
    seed(engine, hand=10)
    out = run(root, "loyalty", "--now", E1)
    assert "8 members (member 3, silver 2, gold 3)" in out
    first = ledger(engine)
    assert as_dict(first) == expected(FIRST_ROWS)
    # spend over the year to 2025-03-31 23:00: 1 150.70, 2 600, 3 10 (the 2024-01 order is
    # out of the window), 5 250, 6 520, 7 65.50, 8 210.40, 9 800
    assert status(engine) == {1: (230, "member"), 2: (150, "gold"), 3: (10, "member"),
                              5: (300, "silver"), 6: (70, "gold"), 7: (156, "member"),
                              8: (260, "silver"), 9: (350, "gold")}
    # a second evaluation at the same time adds nothing
    assert "nothing new" in run(root, "loyalty", "--now", E1)
    assert ledger(engine) == first

    # order 7 completes, order 8 is refunded after it earned, three new orders arrive
    with engine.begin() as conn:
        conn.execute(sa.update(t.orders).where(t.orders.c.id == 7).values(status="completed"))
        conn.execute(sa.update(t.orders).where(t.orders.c.id == 8).values(status="refunded"))
    write_orders(engine, LATER_ORDERS)
    run(root, "loyalty", "--now", E2)
    assert as_dict(ledger(engine)) == expected(FIRST_ROWS, SECOND_ROWS)
    # customer 5 spent nothing over the window (refund) and customer 6 only 250 (her May 2024
    # order left it): both below their tier, which they keep for 30 days' grace
    assert status(engine) == {1: (230, "member"), 2: (150, "gold"), 3: (10, "member"),
                              4: (70, "member"), 5: (0, "silver"), 6: (425, "gold"),
                              7: (156, "member"), 8: (410, "silver"), 9: (200, "gold")}
    st = t.loyalty_status
    with engine.connect() as conn:
        grace = dict(conn.execute(sa.select(st.c.customer_id, st.c.tier_grace_until)
                                  .where(st.c.tier_grace_until.is_not(None))).all())
        to_next = dict(conn.execute(sa.select(st.c.customer_id, st.c.points_to_next_tier)).all())
    assert {c: pd.Timestamp(g) for c, g in grace.items()} == {
        5: pd.Timestamp("2025-06-30 23:00"), 6: pd.Timestamp("2025-06-30 23:00")}
    assert to_next[8] == pytest.approx(500 - 250.40) and to_next[2] is None
    assert "nothing new" in run(root, "loyalty", "--now", E2)

    # the grace periods are over: 5 falls to member (spend 0), 6 to silver (spend 250)
    run(root, "loyalty", "--now", E3)
    final = ledger(engine)
    assert as_dict(final) == expected(FIRST_ROWS, SECOND_ROWS, THIRD_ROWS)
    assert status(engine) == {1: (230, "member"), 2: (150, "gold"), 3: (0, "member"),
                              4: (70, "member"), 5: (0, "member"), 6: (425, "silver"),
                              7: (156, "member"), 8: (410, "silver"), 9: (200, "gold")}
    when = [pd.Timestamp(x) for x in (E1, E2, E3)]
    assert tier_moves(engine) == [
        (1, None, "member", when[0]), (2, None, "gold", when[0]), (3, None, "member", when[0]),
        (5, None, "silver", when[0]), (6, None, "gold", when[0]), (7, None, "member", when[0]),
        (8, None, "silver", when[0]), (9, None, "gold", when[0]),
        (4, None, "member", when[1]),
        (5, "silver", "member", when[2]), (6, "gold", "silver", when[2])]
    # each reward is an event a journey can enter on, recorded once
    with engine.connect() as conn:
        events = conn.execute(sa.select(t.events.c.external_id, t.events.c.customer_id)
                              .where(t.events.c.event_type == "loyalty_reward")
                              .order_by(t.events.c.external_id)).all()
    assert [tuple(e) for e in events] == [
        ("loyalty:reward:voucher:2:1", 2), ("loyalty:reward:voucher:6:1", 6),
        ("loyalty:reward:voucher:9:1", 9), ("loyalty:reward:voucher:9:2", 9)]
    # evaluating again, incrementally or every member from the whole history, adds nothing
    assert "nothing new" in run(root, "loyalty", "--now", E3)
    from clm_core.loyalty.spec import parse_programme
    from clm_core.loyalty.store import run_loyalty

    again = run_loyalty(engine, parse_programme(PROGRAMME, "loyalty.yaml"),
                        pd.Timestamp(E3).to_pydatetime(), full=True)
    assert again.rows == {} and again.tier_changes == 0 and again.rewards == 0
    assert ledger(engine) == final
    # the operator adds 100 with a reason; the same reference twice adds once
    assert "+100 points added" in run(root, "points", "adjust", "c1", "+100", "--reason",
                                      "goodwill", "--id", "T-1", "--now", E3)
    assert "already recorded" in run(root, "points", "adjust", "c1", "+100", "--reason",
                                     "goodwill", "--id", "T-1", "--now", E3)
    assert status(engine)[1] == (330, "member")
    shown = run(root, "points", "show", "c1")
    assert "goodwill" in shown and shown.strip().splitlines()[-1].split()[4] == "330"


def test_errors_are_one_line(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    root = project(tmp_path, db_url)
    seed(engine)
    result = CliRunner().invoke(cli, ["--project", str(root), "points", "adjust", "nobody",
                                      "5", "--reason", "x", "--now", "2025-01-01"])
    assert result.exit_code == 1 and "no customer 'nobody'" in result.output
    result = CliRunner().invoke(cli, ["--project", str(root), "points", "adjust", "c1",
                                      "1.5", "--reason", "x", "--now", "2025-01-01"])
    assert result.exit_code == 1 and "whole numbers" in result.output
    (root / "journeys" / "loyalty.yaml").write_text("name: m\nearning: {points_per_unit: 1}\n")
    result = CliRunner().invoke(cli, ["--project", str(root), "loyalty", "--now", "2025-01-01"])
    assert result.exit_code == 1 and "loyalty.yaml" in result.output
    assert "Traceback" not in result.output


def test_kill_minus_nine_leaves_the_same_ledger(tmp_path: Path, db_url: str,
                                                engine: sa.Engine, db_factories) -> None:
    """Kill the evaluation at growing delays until one finishes; then run once more. The
    ledger equals one clean evaluation's, row for row: nothing lost, nothing twice."""
    seed(engine, n_extra=3000, hand=10)
    root = project(tmp_path, db_url)
    args = [sys.executable, "-m", "clm", "--project", str(root), "loyalty", "--now",
            "2025-03-31 23:00"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = 0
    for delay in (0.8, 1.2, 1.6, 2.0, 2.5, 3.0, 4.0, 6.0):
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(delay)
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        got = ledger(engine)
        assert got == [] or len(got) > 15000, "a killed evaluation left part of its rows"
    final = subprocess.run(args, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()
    assert kills >= 1, "the evaluation finished before the first kill: nothing was tested"

    clean_url = db_factories[engine.dialect.name if engine.dialect.name != "postgresql"
                             else "postgresql"].create()
    from clm_core.db.engine import make_engine

    clean = make_engine(clean_url)
    try:
        seed(clean, n_extra=3000, hand=10)
        root2 = project(tmp_path / "clean", clean_url)
        run(root2, "loyalty", "--now", "2025-03-31 23:00")
        assert ledger(engine) == ledger(clean)
        assert status(engine) == status(clean)
    finally:
        clean.dispose()


def test_tier_transitions_enter_journeys(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    """New members enter the welcome journey; only a move from member or silver to gold enters
    the upgrade journey; the reward event enters the reward journey."""
    root = project(tmp_path, db_url)
    for name in ("programme_welcome", "tier_upgrade", "reward_ready"):
        (root / "journeys" / f"{name}.yaml").write_text(
            (REPO / "journeys" / f"{name}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    seed(engine)
    with engine.begin() as conn:
        conn.execute(sa.update(t.customers).values(consent_email=True,
                                                   email=sa.literal("x@example.com")))
        write_frame(conn, t.customer_scores, pd.DataFrame(
            [{"customer_id": i, "as_of": pd.Timestamp("2025-03-31").date(), "stage": "active",
              "recorded_at": pd.Timestamp("2025-03-31")} for i in range(1, 5)]))
    run(root, "loyalty", "--now", "2025-03-31 23:00")
    out = run(root, "plan", "--at", "2025-04-01 10:00")
    blocks = {b.split()[0]: b for b in out.split("\n\n")[1:]}
    assert "enter     3 " in blocks["programme_welcome"]  # customers 1, 2, 3 (4 is pending)
    assert "enter     0 " in blocks["tier_upgrade"]  # customer 2 became gold from no tier
    assert "enter     1 " in blocks["reward_ready"]  # customer 2's voucher
    # customer 1 climbs to gold from member a month later: the upgrade journey takes her
    with engine.begin() as conn:
        write_frame(conn, t.orders, pd.DataFrame([{
            "id": 50, "external_id": "o50", "customer_id": 1,
            "ordered_at": pd.Timestamp("2025-04-20"), "amount": 400.0, "status": "completed"}]))
    run(root, "loyalty", "--now", "2025-04-30 23:00")
    out = run(root, "plan", "--at", "2025-05-01 10:00")
    blocks = {b.split()[0]: b for b in out.split("\n\n")[1:]}
    assert "enter     1 " in blocks["tier_upgrade"]


def test_incremental_equals_full_after_random_days(tmp_path: Path, db_url: str,
                                                   engine: sa.Engine, db_factories) -> None:
    """Day by day, random new orders (some backdated), cancellations of earned orders, pending
    orders completing and adjustments; after each day the incremental evaluation's ledger and
    statuses equal a full evaluation's on a copy that saw the same history."""
    import numpy as np

    from clm_core.db.engine import make_engine
    from clm_core.loyalty.spec import parse_programme
    from clm_core.loyalty.store import adjust, run_loyalty

    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    other_url = db_factories[engine.dialect.name].create()
    other = make_engine(other_url)
    rng = np.random.default_rng(7)
    try:
        for eng in (engine, other):
            seed(eng, n_extra=60)
        next_id = 10_000
        day = pd.Timestamp("2025-01-01 23:00")
        for step in range(12):
            day += pd.Timedelta(days=int(rng.integers(3, 40)))
            new = []
            for _ in range(int(rng.integers(0, 12))):
                next_id += 1
                back = pd.Timedelta(days=int(rng.integers(0, 20)))  # late-arriving orders
                new.append({"id": next_id, "external_id": f"n{next_id}",
                            "customer_id": int(rng.integers(1, 65)), "ordered_at": day - back,
                            "amount": float(rng.integers(5, 400)),
                            "status": str(rng.choice(["completed", "completed", "pending"]))})
            with engine.connect() as conn:
                ids = [r[0] for r in conn.execute(sa.select(t.orders.c.id)
                                                  .where(t.orders.c.status == "completed"))]
            cancel = [int(i) for i in rng.choice(ids, size=2, replace=False)]
            with engine.connect() as conn:
                pend = [r[0] for r in conn.execute(sa.select(t.orders.c.id)
                                                   .where(t.orders.c.status == "pending"))]
            for eng in (engine, other):
                with eng.begin() as conn:
                    if new:
                        write_frame(conn, t.orders, pd.DataFrame(new))
                    conn.execute(sa.update(t.orders).where(t.orders.c.id.in_(cancel))
                                 .values(status="refunded"))
                    conn.execute(sa.update(t.orders).where(t.orders.c.id.in_(pend[:1]))
                                 .values(status="completed"))
                if step % 4 == 1:
                    adjust(eng, "c7", 300, "goodwill", day.to_pydatetime(), f"T-{step}")
            inc = run_loyalty(engine, prog, day.to_pydatetime())
            run_loyalty(other, prog, day.to_pydatetime(), full=True)
            assert ledger(engine) == ledger(other), f"day {day}"
            assert status(engine) == status(other), f"day {day}"
            # points that entered the 30-day window since the last run count as expiring,
            # though nothing else happened to their owner
            assert expiring(engine) == expiring(other), f"day {day}"
            assert inc.evaluated <= inc.members
        assert len(ledger(engine)) > 400
    finally:
        other.dispose()


def test_report_figures_of_the_hand_computed_store(tmp_path: Path, db_url: str,
                                                   engine: sa.Engine) -> None:
    import json

    root = project(tmp_path, db_url)
    seed(engine)
    run(root, "loyalty", "--now", "2025-03-31 23:00")
    figures = json.loads(run(root, "loyalty", "--report", "--json"))
    assert figures["members"] == 3 and figures["tiers"] == {"member": 2, "gold": 1}
    assert figures["points_outstanding"] == 230 + 150 + 10
    assert figures["liability"] == pytest.approx(3.90)  # 390 points at 0.01
    assert figures["earned"] == 120 + 50 + 30 + 30 + 600 + 50 + 80 + 10
    assert figures["used"] == 40 + 500 and figures["expired"] == 40
    assert figures["redemption_rate"] == pytest.approx(540 / 970)
    assert figures["tiers_over_time"] == [["2025-03", {"member": 2, "gold": 1}]]
    assert figures["expiry_lift"] is None  # no attribution yet: said, not invented


def run_with_a_failing_write(engine: sa.Engine,
                             patch: Callable[[object, str, object], None]) -> None:
    """A first evaluation whose write fails (as on a full disk): it raises. ``patch`` sets
    an attribute (``monkeypatch.setattr`` in a test, ``setattr`` in a fresh interpreter)."""
    from clm_core.loyalty import store
    from clm_core.loyalty.spec import parse_programme

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    patch(store, "write_evaluation", broken)
    with pytest.raises(RuntimeError):
        store.run_loyalty(engine, parse_programme(PROGRAMME, "loyalty.yaml"),
                          pd.Timestamp(E1).to_pydatetime())


def assert_same_stored(engine: sa.Engine, other: sa.Engine) -> None:
    """Both stores hold the same evaluation: ledger (a large one), statuses, expiring points,
    tier moves and reward events."""
    assert ledger(engine) == ledger(other) and len(ledger(engine)) > 2000
    assert status(engine) == status(other)
    assert expiring(engine) == expiring(other)
    assert tier_moves(engine) == tier_moves(other)
    with engine.connect() as a, other.connect() as b:
        ev = sa.select(t.events.c.external_id, t.events.c.customer_id,
                       t.events.c.occurred_at).order_by(t.events.c.external_id)
        assert a.execute(ev).all() == b.execute(ev).all()


def test_bulk_write_gives_the_rows_of_the_row_by_row_write(db_url: str, engine: sa.Engine,
                                                          db_factories, monkeypatch) -> None:
    """The path of a first evaluation of a large store (orders read in chunks, rows in key
    order, indexes rebuilt, no conflict checks into an empty ledger; on SQLite no foreign key
    lookups and shared values as literals) leaves the same ledger, statuses, transitions and
    reward events as the row-by-row path of a small one, on a first evaluation and on the
    next one."""
    from clm_core.db.engine import make_engine
    from clm_core.loyalty import store
    from clm_core.loyalty.spec import parse_programme

    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    other = make_engine(db_factories[engine.dialect.name].create())
    try:
        for eng in (engine, other):
            seed(eng, n_extra=400, hand=10)
        for now, later in ((E1, []), (E2, LATER_ORDERS)):
            if later:
                for eng in (engine, other):
                    write_orders(eng, later)
            monkeypatch.setattr(store, "BULK_ROWS", 0)  # every write in bulk
            monkeypatch.setattr(store, "READ_CHUNK_ROWS", 7)  # orders read in many chunks
            bulk = store.run_loyalty(engine, prog, pd.Timestamp(now).to_pydatetime())
            monkeypatch.setattr(store, "BULK_ROWS", 10**9)  # every write row by row
            monkeypatch.setattr(store, "READ_CHUNK_ROWS", 10**9)  # in one
            small = store.run_loyalty(other, prog, pd.Timestamp(now).to_pydatetime())
            assert bulk == small
            assert_same_stored(engine, other)
        if engine.dialect.name == "sqlite":  # the checks are back on for the next user
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        other.dispose()


def test_sqlite_foreign_keys_are_on_again_after_a_failed_evaluation(
        db_url: str, engine: sa.Engine, monkeypatch) -> None:

    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's foreign key pragma")
    seed(engine)

    run_with_a_failing_write(engine, monkeypatch.setattr)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(t.points_ledger)).scalar() == 0


def test_only_the_programme_currencies_earn(db_url: str, engine: sa.Engine) -> None:
    """With ``currencies`` the evaluation reads each order's currency: EUR and unknown earn,
    USD does not; without it every order earns."""
    from clm_core.loyalty.spec import parse_programme
    from clm_core.loyalty.store import run_loyalty

    seed(engine, hand=2)
    with engine.begin() as conn:
        conn.execute(sa.update(t.orders).where(t.orders.c.id == 1).values(currency="EUR"))
        conn.execute(sa.update(t.orders).where(t.orders.c.id == 2).values(currency=None))
    text = PROGRAMME.replace("earning: {points_per_unit: 1, rounding: down}",
                             "earning: {points_per_unit: 1, rounding: down, currencies: [EUR]}")
    assert "currencies" in text
    run_loyalty(engine, parse_programme(text, "loyalty.yaml"), pd.Timestamp(E1).to_pydatetime())
    earned = {k for k, _, kind, *_ in ledger(engine) if kind == "earn"}
    assert earned == {"earn:1", "earn:2"}  # order 3 (customer 2) is in USD


def test_the_ledger_write_sorts_keys_only_when_they_are_not_in_order() -> None:
    from clm_core.loyalty.store import _key_order

    assert _key_order(pd.Series(["bonus:b:7", "earn:1", "earn:10", "earn:2", "expire:x"])) \
        is None
    assert _key_order(pd.Series(["earn:2", "earn:10", "bonus:b:7"])) == [2, 1, 0]


def _in_a_fresh_interpreter(scenario: Callable[..., None], *args: object) -> None:
    """Run ``scenario(*args)`` in a newly spawned interpreter and require it to succeed.

    A first evaluation forks only when its process has no other thread (``ahead.usable``: a
    fork copies other threads' locks), and a test worker may have some left by earlier tests
    (Prefect's log and event workers). A spawned interpreter has none, so the forks these
    tests are about really happen there; its assertion errors print to the test's output."""
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=scenario, args=args)
    proc.start()
    proc.join(600)
    if proc.is_alive():
        proc.kill()
        proc.join()
    assert proc.exitcode == 0, f"the scenario failed in its interpreter (exit {proc.exitcode})"


def _second_processes_scenario(urls: list[str], sqlite: bool) -> None:
    from clm_core.db.engine import make_engine
    from clm_core.loyalty import ahead, store
    from clm_core.loyalty.spec import parse_programme

    assert ahead.usable()
    engine, dying, inline = (make_engine(u) for u in urls)
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    outcomes: list[str | None] = []
    real, run = ahead.Ahead.result, ahead._run

    def watched(self: ahead.Ahead) -> object:
        value = real(self)
        outcomes.append(self.failed)
        return value

    ahead.Ahead.result = watched  # type: ignore[method-assign]
    for eng in (engine, dying, inline):
        seed(eng, n_extra=400, hand=10)
    for now, later in ((E1, []), (E2, LATER_ORDERS)):
        for eng in (engine, dying, inline):
            if later:
                write_orders(eng, later)
        # the full read of the first evaluation is shared on SQLite; the second one reads
        # only the customers it evaluates
        forks = 1 + (sqlite and not later)
        ahead.MIN_ROWS, store.SPLIT_READ_IDS = 0, 0
        outcomes.clear()
        forked = store.run_loyalty(engine, prog, pd.Timestamp(now).to_pydatetime())
        assert outcomes == [None] * forks
        outcomes.clear()
        ahead._run = lambda *args: os._exit(1)  # type: ignore[assignment]
        try:
            died = store.run_loyalty(dying, prog, pd.Timestamp(now).to_pydatetime())
        finally:
            ahead._run = run
        assert len(outcomes) == forks
        assert all("ended without a result" in str(o) for o in outcomes)
        ahead.MIN_ROWS, store.SPLIT_READ_IDS = 10**9, 10**9
        outcomes.clear()
        here = store.run_loyalty(inline, prog, pd.Timestamp(now).to_pydatetime())
        assert outcomes == []
        assert forked == died == here
        for eng in (dying, inline):
            assert_same_stored(engine, eng)


def test_second_processes_give_the_same_evaluation(engine: sa.Engine, db_url: str,
                                                   db_factories) -> None:
    """A first evaluation whose upper half of the orders (SQLite) is read by a second process
    and whose rest (reversals, expiries, rewards, statuses) is computed by one while the
    earning rows are written; one whose second processes die at once (the first process then
    does their part); one all in one process: the same ledger, statuses, transitions and
    reward events, on the first evaluation and on the next (incremental) one."""
    urls = [db_url, *(db_factories[engine.dialect.name].create() for _ in range(2))]
    _in_a_fresh_interpreter(_second_processes_scenario, urls, engine.dialect.name == "sqlite")


def _failed_write_scenario(url: str) -> None:
    from clm_core.db.engine import make_engine
    from clm_core.loyalty import ahead

    assert ahead.usable()
    engine = make_engine(url)
    seed(engine, n_extra=400, hand=10)
    ahead.MIN_ROWS = 0
    started: list[ahead.Ahead] = []
    init = ahead.Ahead.__init__

    def counted(self: ahead.Ahead, *args: object) -> None:
        init(self, *args)  # type: ignore[arg-type]
        started.append(self)

    ahead.Ahead.__init__ = counted  # type: ignore[method-assign]
    run_with_a_failing_write(engine, setattr)
    assert started  # a second process was at work when the write failed ...
    assert mp.active_children() == []  # ... and it was ended


def test_a_failed_write_leaves_no_second_process(engine: sa.Engine, db_url: str) -> None:
    """The write fails while the second process still has the rest of the evaluation to hand
    over: the evaluation ends it rather than leave it waiting to send."""
    _in_a_fresh_interpreter(_failed_write_scenario, db_url)
