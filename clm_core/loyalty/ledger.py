"""The points ledger, computed: what rows an evaluation as of ``now`` must append, and the
balances and tiers that follow. Pure functions over DataFrames; ``clm_core.loyalty.store``
reads and writes the database.

The ledger is append-only. Every row has a key that names why it exists, so an evaluation that
runs twice (or again after a crash) finds its rows already there and appends nothing:

=============================  ================================================================
key                            row
=============================  ================================================================
``earn:{order}``               base points of a completed order, at the multiplier of the tier
                               the customer holds when the order is first evaluated (0 points
                               when it rounds to nothing: the order has been evaluated)
``bonus:{rule}:{order}``       a bonus rule that matched the order
``reverse:{order}``            the order was cancelled or refunded after it earned: minus what
                               it earned (the balance may go below zero; nothing is clawed back
                               from rewards already issued)
``redeem:{order}``             points the customer spent on that order (imported with it)
``expire:{lot}``               what is left of an earning lot when it expires (oldest points
                               are spent first)
``reward:{reward}:{cust}:{n}`` the customer's n-th reward: its points debited
``adjust:{id}``                an operator's adjustment, with a reason
=============================  ================================================================

Time follows the run's clock: an earning row carries its order's time, an expiry the lot's
expiry time, a reversal and a reward the evaluation's ``now``. Nothing after ``now`` is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from clm_core.loyalty.spec import Programme

# Orders in these states never earn; one that earned and moves here is reversed.
REVERSED = ("cancelled", "canceled", "refunded", "failed")
WAITING = ("pending",)  # earns once completed
EARNING_KINDS = ("earn", "bonus")
LEDGER_COLUMNS = ["key", "customer_id", "kind", "points", "order_id", "occurred_at",
                  "expires_at", "reason"]
# Kinds as a categorical column (alphabetical, the order of their keys): the evaluation picks
# rows by kind a dozen times over millions of rows, and comparing strings costs ten times what
# comparing small codes does.
KIND = pd.CategoricalDtype(["adjust", "bonus", "earn", "expire", "redeem", "reverse", "reward"])
STATUS_COLUMNS = ["customer_id", "points_balance", "points_expiring_30d", "tier", "tier_since",
                  "tier_grace_until", "points_to_next_tier", "qualifying", "next_expiry_at",
                  "expiring_review_at", "tier_review_at", "as_of"]


@dataclass
class Inputs:
    """What one evaluation reads. Frames may cover all customers or only the affected ones.

    orders: id, customer_id, ordered_at, amount, currency, status, points_redeemed
    skus: order_id, sku (only needed for sku_prefix bonuses)
    customers: customer_id, birthday (month 1-12 or NaN)
    ledger: LEDGER_COLUMNS (existing rows of these customers)
    status: STATUS_COLUMNS (stored status of these customers)
    """

    orders: pd.DataFrame
    skus: pd.DataFrame
    customers: pd.DataFrame
    ledger: pd.DataFrame
    status: pd.DataFrame


@dataclass
class Evaluation:
    rows: pd.DataFrame  # new ledger rows
    status: pd.DataFrame  # status of every evaluated member
    transitions: pd.DataFrame  # customer_id, from_tier, to_tier, transitioned_at
    rewards: pd.DataFrame  # customer_id, key, reward, occurred_at (one per reward issued)


def empty_ledger() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LEDGER_COLUMNS, [
        object, "int64", KIND, "int64", "float64", "datetime64[ns]", "datetime64[ns]",
        object])})


def typed(rows: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows with one dtype per column (concatenated parts can mix NaT, None, floats)."""
    out = rows[LEDGER_COLUMNS].copy(deep=False)  # columns are replaced, not written into
    for col in ("occurred_at", "expires_at"):
        out[col] = pd.to_datetime(out[col]).astype("datetime64[ns]")
    out["order_id"] = pd.to_numeric(out["order_id"]).astype(float)
    out["points"] = out["points"].astype("int64")
    out["customer_id"] = out["customer_id"].astype("int64")
    out["kind"] = out["kind"].astype(KIND)
    out["reason"] = out["reason"].astype(object).where(out["reason"].notna(), None)
    return out


def scaled_points(cents: np.ndarray, ratio: Fraction, mode: str) -> np.ndarray:
    """Whole points for amounts in cents times an exact rate, rounded as the programme says.

    Integer arithmetic throughout: float rounding would give 0.29 * 100 = 28.999... and lose a
    point at every x.5 boundary; Python decimals would be exact but a hundred times slower."""
    num = cents.astype("int64") * ratio.numerator
    den = ratio.denominator
    if mode == "down":
        return num // den
    if mode == "up":
        return -((-num) // den)
    return (2 * num + den) // (2 * den)  # nearest, halves up


def _orders_of(ledger: pd.DataFrame, kind: str) -> np.ndarray:
    """Order ids of the ledger's rows of ``kind`` (earn, reverse, redeem: keyed by order)."""
    return ledger.loc[ledger["kind"] == kind, "order_id"].dropna().to_numpy("int64")


def _has_row(ids: pd.Series, kind: str, ledger: pd.DataFrame) -> np.ndarray:
    """Whether each order id (NaN: none) already has a ledger row of ``kind``. A direct
    lookup table over the id range: pandas' ``isin`` switches to sorting above a million
    values, which costs seconds on a whole history."""
    among = _orders_of(ledger, kind)
    if not len(among) or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    values = ids.fillna(-1).to_numpy("int64")
    return np.isin(values, among, kind="table") & (values >= 0)


def text_order(ids: np.ndarray) -> np.ndarray:
    """Positions of non-negative integer ids in the order of their decimal text ("1" < "10" <
    "2"), the order of keys such as ``earn:{order}`` in the unique key index: an id scaled to
    the widest id's digits, then the shorter text first. Integer sorts: sorting the key
    strings themselves costs ten times as much on millions of rows."""
    ids = np.asarray(ids, dtype="int64")
    if not len(ids):
        return np.zeros(0, dtype="int64")
    digits = np.ones(len(ids), dtype="int64")
    bound = 10
    while bound <= ids.max():
        digits += ids >= bound
        bound *= 10
    scaled = ids * np.power(10, digits.max() - digits)
    return np.lexsort((digits, scaled))


def _keys(prefix: str, ids: pd.Series) -> pd.Series:
    """``prefix`` + each id, as ledger keys (a list comprehension beats pandas' string concat
    on millions of rows)."""
    return pd.Series([f"{prefix}{i}" for i in ids.astype("int64").tolist()], index=ids.index,
                     dtype=object)


def _distinct(*ids: np.ndarray) -> np.ndarray:
    """The distinct customer ids of all ``ids``, sorted: marks in a table over the id range
    (ids are dense), linear where ``np.unique`` hashes or sorts millions of ledger rows."""
    every = np.concatenate(ids)
    if not len(every):
        return every
    seen = np.zeros(int(every.max()) + 1, dtype=bool)
    seen[every] = True
    return np.flatnonzero(seen)


def _rows(df: pd.DataFrame, **cols: object) -> pd.DataFrame:
    out = pd.DataFrame({"customer_id": df["customer_id"].astype("int64").to_numpy()})
    for name, value in cols.items():
        if name == "kind":  # one kind: its code on every row
            out[name] = pd.Categorical.from_codes(
                np.full(len(out), KIND.categories.get_loc(value), dtype="int8"), dtype=KIND)
            continue
        out[name] = value.to_numpy() if isinstance(value, pd.Series) else value
    for c in LEDGER_COLUMNS:
        if c not in out:
            out[c] = None
    return out[LEDGER_COLUMNS]


def _tier_levels(prog: Programme, tiers: pd.Series) -> np.ndarray:
    """Each tier's position among the programme's levels; the entry tier (0) for customers
    without one, or with a tier the programme no longer has."""
    rank = {t.name: i for i, t in enumerate(prog.tiers.levels)}
    return tiers.map(rank).fillna(0).to_numpy("int64")


def _birthday_month(orders: pd.DataFrame, customers: pd.DataFrame) -> pd.Series:
    month = orders["customer_id"].map(customers.set_index("customer_id")["birthday_month"])
    return month.eq(orders["ordered_at"].dt.month)


def earning_rows(prog: Programme, inp: Inputs, now: pd.Timestamp) -> pd.DataFrame:
    """earn and bonus rows for completed orders up to ``now`` that have none yet."""
    o = inp.orders
    earns = o[~o["status"].isin(REVERSED + WAITING) & (o["ordered_at"] <= now)]
    if prog.earning.currencies:
        earns = earns[earns["currency"].isna() | earns["currency"].isin(prog.earning.currencies)]
    # An order has earned when it has its earn:{order} row; compared by order id (numbers), as
    # building millions of key strings only to find them absent costs seconds.
    earns = earns[~_has_row(earns["id"], "earn", inp.ledger)]
    if earns.empty:
        return empty_ledger()
    # In key order (earn:{order}, and bonus:{rule}:{order} for the orders a rule picks): the
    # write then extends the unique key index at its end.
    earns = earns.iloc[text_order(earns["id"].to_numpy())]
    # Without stored statuses (a first evaluation) everyone earns at the entry tier's rate:
    # no map of millions of customer ids to nothing.
    level = _tier_levels(prog, earns["customer_id"].map(
        inp.status.set_index("customer_id")["tier"])) if not inp.status.empty \
        else np.zeros(len(earns), dtype="int64")
    cents = np.rint(earns["amount"].to_numpy(float) * 100).astype("int64")
    rate = Fraction(prog.earning.points_per_unit) / 100
    mode = prog.earning.rounding

    def points_at(extra: Fraction, rows: np.ndarray) -> np.ndarray:
        """Points of ``rows`` at their tier multiplier times ``extra``, exactly rounded."""
        out = np.zeros(int(rows.sum()), dtype="int64")
        sub_level, sub_cents = level[rows], cents[rows]
        for i, t in enumerate(prog.tiers.levels):
            at = sub_level == i
            if at.any():
                out[at] = scaled_points(sub_cents[at], rate * Fraction(t.multiplier) * extra,
                                        mode)
        return out

    every = np.ones(len(earns), dtype=bool)
    base = pd.Series(points_at(Fraction(1), every), index=earns.index)
    expires = earns["ordered_at"] + prog.expiry.after if prog.expiry else pd.NaT
    out = [_rows(earns, key=_keys("earn:", earns["id"]), kind="earn", points=base,
                 order_id=earns["id"].astype(float), occurred_at=earns["ordered_at"],
                 expires_at=expires)]
    # bonus:{rule}:... before earn:..., rule by rule in the order of their keys
    for b in sorted(prog.bonuses, key=lambda b: f"{b.id}:", reverse=True):
        if b.birthday_month:
            hit = _birthday_month(earns, inp.customers)
        elif b.sku_prefix:
            sk = inp.skus[inp.skus["sku"].astype(str).str.startswith(b.sku_prefix)]
            hit = earns["id"].isin(sk["order_id"])
        else:
            hit = pd.Series(cents >= int((b.min_amount or 0) * 100), index=earns.index)
        hit = hit.fillna(False).astype(bool)
        if not hit.any():
            continue
        sel = earns[hit]
        pts = (pd.Series(points_at(Fraction(b.multiplier - 1), hit.to_numpy()), index=sel.index)
               if b.multiplier is not None else pd.Series(b.points, index=sel.index))
        ex = expires[hit] if isinstance(expires, pd.Series) else expires
        out.append(_rows(sel, key=_keys(f"bonus:{b.id}:", sel["id"]), kind="bonus",
                         points=pts, order_id=sel["id"].astype(float),
                         occurred_at=sel["ordered_at"], expires_at=ex, reason=b.id))
    rows = pd.concat(out[::-1], ignore_index=True)
    # An order that earns nothing (an amount under one point at its tier) keeps its earn row,
    # with 0 points: the row says the order was evaluated, so a later evaluation at a higher
    # tier does not earn it again at that tier's rate (and incremental runs, which may not
    # look at the customer again, agree with a full one). Bonuses of nothing are left out.
    return rows[(rows["points"] != 0) | (rows["kind"] == "earn")]


def reversal_rows(inp: Inputs, earned: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """reverse rows for cancelled/refunded orders whose earnings are not reversed yet."""
    gone = inp.orders.loc[inp.orders["status"].isin(REVERSED), "id"].to_numpy("int64")
    if not len(gone):
        return empty_ledger()
    of_gone = np.isin(earned["order_id"].fillna(-1).to_numpy("int64"), gone, kind="table")
    led = earned[earned["kind"].isin(EARNING_KINDS).to_numpy() & of_gone]
    if led.empty:
        return empty_ledger()
    per = led.groupby("order_id").agg(customer_id=("customer_id", "first"),
                                      points=("points", "sum")).reset_index()
    per = per[~_has_row(per["order_id"], "reverse", earned) & (per["points"] != 0)]
    per = per.iloc[text_order(per["order_id"].to_numpy())]  # in key order
    return _rows(per, key=_keys("reverse:", per["order_id"]),
                 kind="reverse", points=-per["points"], order_id=per["order_id"],
                 occurred_at=now, reason="order " + per["order_id"].astype("int64").astype(str)
                 + " cancelled or refunded")


def redemption_rows(inp: Inputs, now: pd.Timestamp) -> pd.DataFrame:
    """redeem rows for points spent on orders (imported with the order), once per order."""
    o = inp.orders
    if "points_redeemed" not in o:
        return empty_ledger()
    spent = o[(o["points_redeemed"].fillna(0) > 0) & (o["ordered_at"] <= now)]
    spent = spent[~_has_row(spent["id"], "redeem", inp.ledger)]
    spent = spent.iloc[text_order(spent["id"].to_numpy())]  # in key order
    return _rows(spent, key=_keys("redeem:", spent["id"]), kind="redeem",
                 points=-spent["points_redeemed"].astype("int64"),
                 order_id=spent["id"].astype(float), occurred_at=spent["ordered_at"])


def lots(ledger: pd.DataFrame) -> pd.DataFrame:
    """Earning lots (earn and bonus rows net of their order's reversal), oldest first, with
    what remains of each after every debit so far is taken from the oldest lots first."""
    return spend_lots(lot_frame(ledger), ledger)


def _debits(ledger: pd.DataFrame) -> pd.Series:
    return ~ledger["kind"].isin(EARNING_KINDS + ("reverse",))


def lot_frame(ledger: pd.DataFrame) -> pd.DataFrame:
    """The earning lots of ``lots``, sorted, with each customer's running total (``cum``) but
    not yet what debits took: expiries and rewards are debits, so an evaluation sorts its lots
    once and only re-spends them after each step."""
    earned = ledger[ledger["kind"].isin(EARNING_KINDS)]
    earned = earned[~_has_row(earned["order_id"], "reverse", ledger)]
    # Positive adjustments are lots that never expire; negative ones are debits.
    adds = ledger[_debits(ledger) & (ledger["points"] > 0)]
    earned = pd.concat([earned, adds], ignore_index=True) if len(adds) else earned
    # Oldest first; ties (the earn and bonus lots of one order) by order, then earn, then the
    # bonuses in the order of their keys (as the rows were written, whichever way they were
    # read): in one integer, a key fewer for the sort of millions of lots.
    rule = _rule_rank(earned)
    tie = earned["order_id"].fillna(-1).to_numpy().astype("int64") * (rule.max(initial=0) + 1) \
        + rule
    order = np.lexsort((tie, earned["occurred_at"].to_numpy(),
                        earned["customer_id"].to_numpy()))
    earned = earned.iloc[order].reset_index(drop=True)
    earned["cum"] = earned.groupby("customer_id")["points"].cumsum()
    return earned


def _rule_rank(lots: pd.DataFrame) -> np.ndarray:
    """0 for an earn lot; for a bonus lot 1 + the place of its rule among the rules' keys."""
    bonus = lots["kind"].eq("bonus").to_numpy()
    code, rules = pd.factorize(lots["reason"].astype(object).where(bonus, None))
    keyed = [f"{r}:" for r in rules]
    rank = np.empty(len(rules), dtype="int64")
    rank[sorted(range(len(keyed)), key=keyed.__getitem__)] = np.arange(len(keyed))
    return np.where(code < 0, 0, 1 + rank[np.maximum(code, 0)] if len(rank) else 0)


def spend_lots(lot: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """``lot`` with what ``remaining`` of each after the ledger's debits, oldest first."""
    debit = ledger[_debits(ledger) & (ledger["points"] < 0)]
    used = -debit.groupby("customer_id")["points"].sum()
    taken = lot["customer_id"].map(used).fillna(0)
    # Remaining of lot i: its points, less the part of the debits that reaches it.
    out = lot.copy(deep=False)  # a new column on the same data (copy on write)
    out["remaining"] = np.clip(lot["cum"] - taken, 0, lot["points"]).astype("int64")
    return out


def expiry_rows(prog: Programme, ledger: pd.DataFrame, now: pd.Timestamp,
                lot: pd.DataFrame | None = None) -> pd.DataFrame:
    """expire rows for lots past their expiry with points left (``lot``: ``lot_frame`` of
    this ledger, when the caller has it)."""
    if prog.expiry is None:
        return empty_ledger()
    lot = spend_lots(lot_frame(ledger) if lot is None else lot, ledger)
    due = lot[(lot["expires_at"] <= now) & (lot["remaining"] > 0)]
    keys = pd.Series([f"expire:{k}" for k in due["key"].tolist()], index=due.index, dtype=object)
    due = due[~keys.isin(ledger.loc[ledger["kind"] == "expire", "key"])]
    # In key order (lots come by customer): expire:{lot key} by the lot's kind, bonus rule and
    # order id as text, so a large write extends the unique key index at its end.
    due = due.iloc[_lot_key_order(due)]
    return _rows(due, key=keys.loc[due.index], kind="expire", points=-due["remaining"],
                 occurred_at=due["expires_at"], reason="expired")


def _lot_key_order(lot: pd.DataFrame) -> np.ndarray:
    """Positions of lots in the order of their keys (``{kind}:[{rule}:]{order}``), up to lots
    without an order (adjustments), which come last: integer sorts over codes."""
    def codes(values: pd.Series) -> np.ndarray:
        code, _ = pd.factorize(values, sort=True)
        return np.where(code < 0, len(code), code)

    order_id = lot["order_id"].to_numpy(dtype=float)
    has = ~np.isnan(order_id)
    rank = np.zeros(len(lot), dtype="int64")
    with_order = np.flatnonzero(has)
    rank[with_order[text_order(order_id[has].astype("int64"))]] = np.arange(len(with_order))
    without = np.flatnonzero(~has)  # adjustments (few): by their keys
    keys = lot["key"].to_numpy(dtype=object)[without].tolist()
    rank[without[sorted(range(len(keys)), key=keys.__getitem__)]] = np.arange(len(without))
    return np.lexsort((rank, _rule_rank(lot), codes(lot["kind"].astype(object))))


def reward_rows(prog: Programme, ledger: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """As many rewards as each balance buys; numbered after those already issued."""
    if not prog.rewards or prog.status != "active":
        return empty_ledger()
    reward = prog.rewards[0]
    bal = ledger.groupby("customer_id")["points"].sum()
    n = (bal // reward.points).clip(lower=0).astype("int64")
    n = n[n > 0]
    if n.empty:
        return empty_ledger()
    issued = ledger[ledger["kind"] == "reward"]
    prior = issued[issued["key"].str.startswith(f"reward:{reward.id}:")] \
        .groupby("customer_id").size()
    cust = n.index.repeat(n.to_numpy())
    frame = pd.DataFrame({"customer_id": cust})
    frame["k"] = frame.groupby("customer_id").cumcount() + 1 \
        + frame["customer_id"].map(prior).fillna(0).astype("int64")
    keys = [f"reward:{reward.id}:{c}:{k}" for c, k in zip(frame["customer_id"].tolist(),
                                                           frame["k"].tolist())]
    order = sorted(range(len(keys)), key=keys.__getitem__)  # in key order
    return _rows(frame.iloc[order], key=pd.Series([keys[i] for i in order], dtype=object),
                 kind="reward", points=-reward.points, occurred_at=now, reason=reward.id)


def qualifying(prog: Programme, orders: pd.DataFrame, ledger: pd.DataFrame,
               now: pd.Timestamp, lot: pd.DataFrame | None = None) -> tuple[pd.Series, pd.Series]:
    """Spend or points earned over the tier window ending ``now``, per customer, and when the
    oldest of it leaves the window (the first moment the amount can fall)."""
    start = now - prog.tiers.window
    if prog.tiers.qualify_on == "spend":
        o = orders[~orders["status"].isin(REVERSED + WAITING)
                   & (orders["ordered_at"] > start) & (orders["ordered_at"] <= now)]
        # Added in whole cents, as orders earn: a sum of floats depends on the order of its
        # terms, and a full read (the whole table) and an incremental one (by customer) bring
        # them in different orders, so a spend of exactly a tier's minimum could fall a hair
        # below it one way and not the other.
        cents = pd.Series(np.rint(o["amount"].to_numpy(float) * 100).astype("int64"),
                          index=o.index)
        by = o.groupby("customer_id")
        spend = cents.groupby(o["customer_id"]).sum() / 100
        return spend.astype(float), by["ordered_at"].min() + prog.tiers.window
    led = lots(ledger) if lot is None else lot
    led = led[(led["occurred_at"] > start) & (led["occurred_at"] <= now)
              & led["kind"].isin(EARNING_KINDS)]
    by = led.groupby("customer_id")
    return by["points"].sum().astype(float), by["occurred_at"].min() + prog.tiers.window


def tiers(prog: Programme, members: pd.Index, qual: pd.Series, stored: pd.DataFrame,
          now: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tier per member: up at once, down only after the grace period has run out.

    Returns (status columns tier, tier_since, tier_grace_until, points_to_next_tier,
    qualifying; transitions)."""
    levels = prog.tiers.levels
    mins = np.array([float(t.min) for t in levels])
    names = np.array([t.name for t in levels], dtype=object)
    q = qual.reindex(members).fillna(0.0)
    rank_q = np.searchsorted(mins, q.to_numpy(), side="right") - 1
    prev = stored.set_index("customer_id").reindex(members) if not stored.empty else \
        pd.DataFrame(index=members, columns=["tier", "tier_since", "tier_grace_until"])
    rank_of = {n: i for i, n in enumerate(names)}
    rank_prev = prev["tier"].map(rank_of).to_numpy(dtype=float)  # NaN for new members
    grace = pd.to_datetime(prev["tier_grace_until"]).to_numpy()
    new = np.isnan(rank_prev)
    up = ~new & (rank_q >= rank_prev)
    below = ~new & (rank_q < rank_prev)
    grace_over = below & ~pd.isna(grace) & (grace <= now.to_datetime64())
    rank = np.where(new | up | grace_over, rank_q, rank_prev).astype(int)
    grace_until = np.where(below & ~grace_over,
                           np.where(pd.isna(grace), (now + prog.tiers.grace).to_datetime64(),
                                    grace), np.datetime64("NaT"))
    changed = new | (rank != np.nan_to_num(rank_prev, nan=-1))
    since = np.where(changed, now.to_datetime64(),
                     pd.to_datetime(prev["tier_since"]).to_numpy())
    nxt = np.minimum(rank + 1, len(mins) - 1)
    to_next = np.where(rank + 1 < len(mins), np.maximum(mins[nxt] - q.to_numpy(), 0), np.nan)
    out = pd.DataFrame({"customer_id": members, "tier": names[rank], "tier_since": since,
                        "tier_grace_until": pd.to_datetime(grace_until),
                        "points_to_next_tier": to_next, "qualifying": q.to_numpy()})
    moved = out[changed].copy()
    moved["from_tier"] = prev["tier"].reindex(moved["customer_id"]).to_numpy()
    transitions = pd.DataFrame({"customer_id": moved["customer_id"].to_numpy(),
                                "from_tier": moved["from_tier"].to_numpy(),
                                "to_tier": moved["tier"].to_numpy(), "transitioned_at": now})
    return out.reset_index(drop=True), transitions


def evaluate(prog: Programme, inp: Inputs, now: pd.Timestamp) -> Evaluation:
    """Every row this evaluation appends, and the resulting status of each member."""
    earned = earnings(prog, inp, now)
    ev = settle(prog, inp, now, earned)
    if not earned.empty:
        ev.rows = pd.concat([earned, ev.rows], ignore_index=True) if not ev.rows.empty \
            else earned.reset_index(drop=True)
    return ev


def earnings(prog: Programme, inp: Inputs, now: pd.Timestamp) -> pd.DataFrame:
    """The evaluation's first new rows (earn and bonus), typed and in key order. On a first
    evaluation they are most of its rows: a caller can write them while ``settle`` works out
    the rest (their keys sort before every later row's)."""
    return typed(earning_rows(prog, inp, now)).reset_index(drop=True)


def settle(prog: Programme, inp: Inputs, now: pd.Timestamp, earned: pd.DataFrame) -> Evaluation:
    """The rest of the evaluation after ``earnings`` gave ``earned``: its ``rows`` are the new
    rows that follow those (reversals, redemptions, expiries, rewards), in key order."""
    ledger = inp.ledger
    new_parts: dict[int, pd.DataFrame] = {}
    if not earned.empty:
        new_parts[0] = earned

    def append(rows: pd.DataFrame, place: int) -> pd.DataFrame:
        """The ledger with ``rows`` added: each step sees the rows of the steps before it.
        Each step's rows come in key order, and its ``place`` is the order of its kinds'
        keys (bonus, earn < expire < redeem < reverse < reward), so that the new rows are
        in key order as a whole: a large write then needs no sort."""
        part = typed(rows)
        if part.empty:
            return ledger
        new_parts[place] = part
        return pd.concat([inp.ledger, *(new_parts[k] for k in sorted(new_parts))],
                         ignore_index=True)

    if not earned.empty:
        ledger = pd.concat([inp.ledger, earned], ignore_index=True) if not inp.ledger.empty \
            else earned
    ledger = append(reversal_rows(inp, ledger, now), 3)
    ledger = append(redemption_rows(inp, now), 2)
    # The lots are final from here (expiries and rewards only debit them): sorted once.
    lot = lot_frame(ledger)
    ledger = append(expiry_rows(prog, ledger, now, lot), 1)
    ledger = append(reward_rows(prog, ledger, now), 4)
    after = [new_parts[k] for k in sorted(new_parts) if k > 0]
    new = pd.concat(after, ignore_index=True) if after else empty_ledger()
    lot = spend_lots(lot, ledger)

    o = inp.orders
    buyers = o.loc[~o["status"].isin(REVERSED + WAITING) & (o["ordered_at"] <= now),
                   "customer_id"]
    members = pd.Index(_distinct(buyers.to_numpy("int64"), ledger["customer_id"].to_numpy("int64"),
                                 inp.status["customer_id"].to_numpy("int64")),
                       name="customer_id", dtype="int64")
    qual, leaves = qualifying(prog, inp.orders, ledger, now, lot)
    status, transitions = tiers(prog, members, qual, inp.status, now)
    # Only a member above the entry tier can fall, and only when the window loses an order.
    above = status["tier"] != prog.tiers.levels[0].name
    review = leaves.astype("datetime64[ns]").reindex(status["customer_id"]).to_numpy()
    status["tier_review_at"] = np.where(above.to_numpy(), review, np.datetime64("NaT"))
    live = lot[(lot["remaining"] > 0) & lot["expires_at"].notna()]
    soon = live[(live["expires_at"] > now) & (live["expires_at"] <= now + pd.Timedelta(days=30))]
    status["points_balance"] = status["customer_id"].map(
        ledger.groupby("customer_id")["points"].sum()).fillna(0).astype("int64")
    status["points_expiring_30d"] = status["customer_id"].map(
        soon.groupby("customer_id")["remaining"].sum()).fillna(0).astype("int64")
    # The next time a lot enters the window (its expiry less 30 days, after now): the daily
    # evaluation comes back then, or points_expiring_30d would stay what it was.
    later = live[live["expires_at"] > now + pd.Timedelta(days=30)]
    entering = later.groupby("customer_id")["expires_at"].min() - pd.Timedelta(days=30)
    status["expiring_review_at"] = entering.astype("datetime64[ns]").reindex(
        status["customer_id"]).to_numpy()
    nxt = live[live["expires_at"] > now].groupby("customer_id")["expires_at"].min()
    status["next_expiry_at"] = nxt.astype("datetime64[ns]").reindex(status["customer_id"]) \
        .to_numpy()
    status["as_of"] = now
    rewards = new[new["kind"] == "reward"][["customer_id", "key", "reason", "occurred_at"]] \
        .rename(columns={"reason": "reward"})
    return Evaluation(new.reset_index(drop=True), status[STATUS_COLUMNS], transitions,
                      rewards.reset_index(drop=True))


def whole_points(value: float) -> int:
    """Points as a whole number for operators' adjustments (``+100``, ``-20``)."""
    if not math.isfinite(value) or value != int(value):
        raise ValueError("points are whole numbers")
    return int(value)
