"""``first_order_in_stage_at``, the first purchase after a customer's stored stage began, is
answered from the customer's first and last purchase where they settle it and by an index
lookup otherwise: against a direct computation over random histories, every case lands on the
same instant (no purchase after, all after, some before and some after, a purchase at the very
instant the stage began, cancelled orders either side, no stage), from the orders and from the
maintained aggregates alike."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.lifecycle import aggregates
from clm_core.lifecycle.aggregates import NOT_PURCHASES
from clm_core.lifecycle.features import customer_features, day_end

AS_OF = date(2024, 6, 30)
START = datetime(2024, 1, 1)


def _store(engine: sa.Engine, seed: int = 7) -> dict[int, datetime | None]:
    """Random customers, orders and stored stages; each customer's expected answer."""
    rng = random.Random(seed)
    expected: dict[int, datetime | None] = {}
    with engine.begin() as conn:
        conn.execute(sa.insert(t.customers),
                     [{"external_id": f"c{i}", "signed_up_at": START} for i in range(80)])
        ids = [r[0] for r in conn.execute(sa.select(t.customers.c.id).order_by(t.customers.c.id))]
        orders, scores = [], []
        for cid in ids:
            times = sorted(START + timedelta(hours=rng.randrange(0, 180 * 24))
                           for _ in range(rng.randrange(0, 6)))
            since: datetime | None = START + timedelta(hours=rng.randrange(0, 180 * 24))
            if times and rng.random() < 0.3:
                since = rng.choice(times)  # a purchase at the very instant the stage began
            if rng.random() < 0.1:
                since = None
            statuses = [rng.choice(["completed", "completed", rng.choice(NOT_PURCHASES)])
                        for _ in times]
            orders += [{"external_id": f"{cid}-{k}", "customer_id": cid, "ordered_at": at,
                        "amount": 10.0 + k, "status": status}
                       for k, (at, status) in enumerate(zip(times, statuses))]
            scores.append({"customer_id": cid, "as_of": AS_OF - timedelta(days=1),
                           "stage": "active", "stage_since": since, "recorded_at": START})
            after = [at for at, status in zip(times, statuses)
                     if status not in NOT_PURCHASES and since is not None and at > since
                     and at < day_end(AS_OF)]
            expected[cid] = min(after) if after else None
        conn.execute(sa.insert(t.orders), orders)
        conn.execute(sa.insert(t.customer_scores), scores)
        aggregates.rebuild(conn)
    return expected


def test_first_purchase_in_stage_matches_a_direct_computation(engine: sa.Engine) -> None:
    expected = _store(engine)
    cases = {"none after": 0, "all after": 0, "before and after": 0}
    with engine.connect() as conn:
        for source in ("orders", "aggregates"):
            f = customer_features(conn, AS_OF, customer_columns=["first_order_in_stage_at"],
                                  source=source).frame.set_index("customer_id")
            got = {cid: (None if v is None or v != v else v.to_pydatetime())
                   for cid, v in f["first_order_in_stage_at"].items()}
            assert got == expected, source
        rows = conn.execute(sa.text(
            "SELECT a.first_order_at, a.last_order_at, s.stage_since "
            "FROM customer_purchase_aggregates a JOIN customer_scores s USING (customer_id) "
            "WHERE s.stage_since IS NOT NULL")).all()
    for first, last, since in rows:
        first, last, since = (v if isinstance(v, datetime) else datetime.fromisoformat(v)
                              for v in (first, last, since))
        key = ("none after" if last <= since else "all after" if first > since
               else "before and after")
        cases[key] += 1
    assert min(cases.values()) >= 5, cases  # every branch of the query is exercised
