"""The points ledger on a hand-computed store: every row, balance and tier worked out by hand
in the comments, checked exactly; then idempotence (a rerun appends nothing)."""

from __future__ import annotations

import pandas as pd
import pytest

from clm_core.errors import SpecError
from clm_core.loyalty.ledger import Inputs, empty_ledger, evaluate
from clm_core.loyalty.spec import parse_programme

PROGRAMME = """
name: members
earning: {points_per_unit: 1, rounding: down}
bonuses:
  - {id: bday, multiplier: 2, birthday_month: true}
  - {id: big, points: 50, min_amount: 100}
  - {id: vinyl, multiplier: 3, sku_prefix: "VNL-"}
expiry: {after: 365d}
tiers:
  qualify_on: spend
  window: 365d
  grace: 30d
  levels:
    - {name: member, min: 0}
    - {name: silver, min: 200, multiplier: 1.25}
    - {name: gold, min: 500, multiplier: 1.5}
rewards:
  - {id: voucher, points: 500}
"""

T = pd.Timestamp


def orders(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["id", "customer_id", "ordered_at", "amount", "status",
                                     "points_redeemed"])
    df["ordered_at"] = pd.to_datetime(df["ordered_at"])
    df["currency"] = "USD"
    return df


def inputs(o: pd.DataFrame, ledger: pd.DataFrame | None = None,
           status: pd.DataFrame | None = None, birthdays: dict[int, int] | None = None) -> Inputs:
    cust = pd.DataFrame({"customer_id": list((birthdays or {}).keys()),
                         "birthday_month": [float(m) for m in (birthdays or {}).values()]})
    skus = pd.DataFrame({"order_id": pd.Series(dtype="int64"), "sku": pd.Series(dtype=object)})
    st = status if status is not None else pd.DataFrame(
        columns=["customer_id", "tier", "tier_since", "tier_grace_until"])
    return Inputs(o, skus, cust, empty_ledger() if ledger is None else ledger, st)


def test_hand_computed_rows_balances_and_tiers() -> None:
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    o = orders([
        # customer 1: 120.70 -> 120 points, +50 (>= 100); 30 in March, her birthday month:
        # 30 + 30 bonus. Balance 230, spend 150.70: member.
        (1, 1, "2025-01-10", 120.70, "completed", None),
        (2, 1, "2025-03-05", 30.00, "completed", None),
        # customer 2: 600 -> 600 + 50; then a 90 order refunded: no points. Spend 600 -> gold.
        # 650 points buy one 500-point reward: balance 150.
        (3, 2, "2025-02-01", 600.00, "completed", None),
        (4, 2, "2025-02-02", 90.00, "refunded", None),
        # customer 3: 80 earned in 2024-01 expires 2025-01-01 (365 days later); 40 of it was
        # spent on a later order: 40 expire. Balance 0 + 10 (second order) = 10.
        (5, 3, "2024-01-02", 80.00, "completed", None),
        (6, 3, "2024-06-01", 10.00, "completed", 40),
        # customer 4: pending order earns nothing yet and makes no member.
        (7, 4, "2025-03-01", 70.00, "pending", None),
    ])
    now = T("2025-03-31 23:00")
    ev = evaluate(prog, inputs(o, birthdays={1: 3}), now)
    got = {r.key: r.points for r in ev.rows.itertuples()}
    assert got == {
        "earn:1": 120, "bonus:big:1": 50, "earn:2": 30, "bonus:bday:2": 30,
        "earn:3": 600, "bonus:big:3": 50,
        "earn:5": 80, "earn:6": 10, "redeem:6": -40, "expire:earn:5": -40,
        "reward:voucher:2:1": -500,
    }
    st = ev.status.set_index("customer_id")
    assert st["points_balance"].to_dict() == {1: 230, 2: 150, 3: 0 + 10}
    assert st["tier"].to_dict() == {1: "member", 2: "gold", 3: "member"}
    # customer 1 needs 200 - 150.70 more spend for silver; gold has no next tier
    assert st.loc[1, "points_to_next_tier"] == pytest.approx(49.30)
    assert pd.isna(st.loc[2, "points_to_next_tier"])
    # customer 3's 10 points from 2024-06-01 expire 2025-06-01: not within 30 days of now
    assert st["points_expiring_30d"].to_dict() == {1: 0, 2: 0, 3: 0}
    assert set(ev.transitions["to_tier"]) == {"member", "gold"}
    assert list(ev.rewards["key"]) == ["reward:voucher:2:1"]


def test_rerun_appends_nothing_and_refund_reverses_later() -> None:
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    o = orders([(1, 1, "2025-01-10", 300.00, "completed", None)])
    now = T("2025-01-31")
    first = evaluate(prog, inputs(o), now)
    ledger = first.rows
    again = evaluate(prog, inputs(o, ledger, first.status), now)
    assert again.rows.empty and again.transitions.empty
    # silver from 300 spend; the order is refunded later: points reversed once, and the tier
    # is kept through the 30-day grace, then lost
    assert first.status["tier"].tolist() == ["silver"]
    o.loc[0, "status"] = "refunded"
    later = T("2025-02-10")
    rev = evaluate(prog, inputs(o, ledger, first.status), later)
    assert rev.rows[["key", "points"]].values.tolist() == [["reverse:1", -350]]
    assert rev.status["points_balance"].tolist() == [0]
    assert rev.status["tier"].tolist() == ["silver"]
    assert rev.status["tier_grace_until"].tolist() == [later + pd.Timedelta(days=30)]
    ledger2 = pd.concat([ledger, rev.rows], ignore_index=True)
    same = evaluate(prog, inputs(o, ledger2, rev.status), later + pd.Timedelta(days=5))
    assert same.rows.empty and same.status["tier"].tolist() == ["silver"]
    after = evaluate(prog, inputs(o, ledger2, same.status), later + pd.Timedelta(days=31))
    assert after.status["tier"].tolist() == ["member"]
    assert after.transitions[["from_tier", "to_tier"]].values.tolist() == [["silver", "member"]]


def test_an_order_that_earns_nothing_is_not_earned_again_at_a_higher_tier() -> None:
    """0.80 earns 0 points at the entry rate (rounded down); its earn row of 0 records that it
    was evaluated, so after a 600 order makes her gold it does not earn 0.80 x 1.5 = 1."""
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    o = orders([(1, 1, "2025-01-10", 0.80, "completed", None)])
    first = evaluate(prog, inputs(o), T("2025-01-11"))
    assert first.rows[["key", "points"]].values.tolist() == [["earn:1", 0]]
    o2 = pd.concat([o, orders([(2, 1, "2025-01-20", 600.00, "completed", None)])])
    nxt = evaluate(prog, inputs(o2, first.rows, first.status), T("2025-01-21"))
    assert {r.key: r.points for r in nxt.rows.itertuples()} == {"earn:2": 600, "bonus:big:2": 50,
                                                               "reward:voucher:1:1": -500}
    later = evaluate(prog, inputs(o2, pd.concat([first.rows, nxt.rows]), nxt.status),
                     T("2025-01-22"))
    assert later.rows.empty and later.status["tier"].tolist() == ["gold"]


def test_tier_multiplier_applies_to_orders_after_the_upgrade() -> None:
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    o = orders([(1, 1, "2025-01-10", 600.00, "completed", None)])
    first = evaluate(prog, inputs(o), T("2025-01-11"))
    assert first.status["tier"].tolist() == ["gold"]
    o2 = pd.concat([o, orders([(2, 1, "2025-01-20", 20.00, "completed", None)])])
    nxt = evaluate(prog, inputs(o2, first.rows, first.status), T("2025-01-21"))
    assert {r.key: r.points for r in nxt.rows.itertuples()} == {"earn:2": 30}  # 20 x 1.5


@pytest.mark.parametrize("text, where, says", [
    ("name: m\nearning: {points_per_unit: 1}\ntiers:\n  levels:\n    - {name: a, min: 5}\n",
     "loyalty.yaml:4:", "entry tier"),
    ("name: m\nearning: {points_per_unit: 1, roundng: up}\ntiers: {levels: [{name: a, min: 0}]}\n",
     "loyalty.yaml:2:", "did you mean 'rounding'"),
    ("name: m\nearning: {points_per_unit: 0}\ntiers: {levels: [{name: a, min: 0}]}\n",
     "loyalty.yaml:2:", "greater than 0"),
    ("name: m\nearning: {points_per_unit: 1}\nexpiry: {after: 12 months}\n"
     "tiers: {levels: [{name: a, min: 0}]}\n", "loyalty.yaml:3:", "duration"),
    ("name: m\nearning: {points_per_unit: 1}\ntiers: {levels: [{name: a, min: 0}]}\n"
     "bonuses:\n  - {id: b, multiplier: 2}\n", "loyalty.yaml:5:", "exactly one condition"),
    ("name: m\nearning: {points_per_unit: 1}\ntiers: {levels: [{name: a, min: 0},\n",
     "loyalty.yaml:", "YAML syntax"),
    ("name: m\nearning: {points_per_unit: 1}\n", "loyalty.yaml:", "missing required key 'tiers'"),
    ("name: m\nearning: {points_per_unit: 1}\ntiers: {levels: [{name: a, min: 0}, "
     "{name: b, min: 0}]}\n", "loyalty.yaml:3:", "lowest to highest"),
])
def test_malformed_files_are_located(text: str, where: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_programme(text, "loyalty.yaml")
    shown = "\n".join(str(p) for p in err.value.problems)
    assert where in shown and says in shown, shown


def test_every_customer_gets_their_own_rewards() -> None:
    """Two members each buy two rewards: four rows, keys unique per customer."""
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    o = orders([(1, 1, "2025-01-10", 1000.00, "completed", None),
                (2, 2, "2025-01-11", 1100.00, "completed", None)])
    ev = evaluate(prog, inputs(o), T("2025-01-31"))
    rewards = ev.rows[ev.rows["kind"] == "reward"]
    assert sorted(rewards["key"]) == ["reward:voucher:1:1", "reward:voucher:1:2",
                                      "reward:voucher:2:1", "reward:voucher:2:2"]
    assert not ev.rows["key"].duplicated().any()
    assert ev.status.set_index("customer_id")["points_balance"].to_dict() == {1: 50, 2: 150}


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [1, 0, 3, 2], [1, 3, 0, 2]])
def test_a_spend_of_exactly_the_minimum_reaches_the_tier_in_any_row_order(order) -> None:
    """60.15 + 28.70 + 51.48 + 59.67 is 200.00, silver's minimum; added as floats it is
    199.99999999999997 in some orders. A full evaluation (orders as the table holds them) and
    an incremental one (by customer) read rows in different orders: both must say silver."""
    amounts = [60.15, 28.70, 51.48, 59.67]
    rows = [(i + 1, 1, f"2025-0{i + 1}-10", amounts[i], "completed", None) for i in order]
    ev = evaluate(parse_programme(PROGRAMME, "loyalty.yaml"), inputs(orders(rows)),
                  T("2025-06-30 23:00"))
    got = ev.status.set_index("customer_id")
    assert got.loc[1, "tier"] == "silver" and got.loc[1, "qualifying"] == 200.0


def test_new_rows_come_in_key_order() -> None:
    """Every kind of row, and ids of different lengths: the new rows are in the order of their
    keys (a large write then goes in without a sort, extending the key index at its end), on
    a first evaluation and on the next, which reverses, redeems, expires and rewards."""
    prog = parse_programme(PROGRAMME, "loyalty.yaml")
    rows = [(i, 1 + i % 7, f"2024-{1 + i % 12:02d}-{1 + i % 27:02d}", 40.0 + 37 * (i % 9),
             "completed", 30 if i % 11 == 0 else None) for i in (1, 2, 9, 10, 11, 99, 100, 101,
                                                                   1000, 1001, 20, 3)]
    rows += [(2000, 8, "2024-05-05", 700.0, "completed", None)]  # 750 points: a reward
    o = orders(rows)
    first = evaluate(prog, inputs(o, birthdays={1: 3, 2: 6}), T("2024-12-31 23:00"))
    keys = first.rows["key"].tolist()
    assert keys == sorted(keys) and {k.split(":")[0] for k in keys} >= {"earn", "bonus",
                                                                           "redeem", "reward"}
    o.loc[o["id"].isin([10, 100]), "status"] = "refunded"
    later = evaluate(prog, inputs(o, first.rows, first.status, birthdays={1: 3, 2: 6}),
                     T("2025-12-31 23:00"))
    keys = later.rows["key"].tolist()
    assert keys == sorted(keys) and {k.split(":")[0] for k in keys} >= {"reverse", "expire"}
