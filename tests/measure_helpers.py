"""A small store with one measured journey, written straight into the tables.

Treated and control enrollments, orders inside and outside the conversion window (some not
purchases), sent messages, coupons and a redemption, engagement events: everything attribution
and lift read, with known answers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame

ENTERED = datetime(2024, 3, 1, 10, 0)
NOW = datetime(2024, 6, 1)
JOURNEY_SOURCE = """
name: offer
status: active
entry:
  stage: {to: at_risk}
goals:
  - id: bought
    order: {min_amount: 5}
holdout: {percent: 50}
conversion_window: 14d
steps:
  - id: pick
    split:
      - {variant: a, weight: 50, goto: mail}
      - {variant: b, weight: 50, goto: mail}
  - id: mail
    send:
      channel: email
      template: winback_offer
      coupon: {kind: percent, value: 20}
  - id: done
    exit: {}
"""


def build_store(engine: sa.Engine, n_treated: int, n_control: int, p_treated: float,
                p_control: float, seed: int = 1, journey: str = "offer") -> dict[str, int]:
    """Customers 1..n: the first ``n_treated`` treated, then ``n_control`` control; each
    converts with the given probability (one order in the window, amount from a gamma draw).
    Adds traps: a cancelled order and an order after the window for everyone who converts,
    and an order before entry for every third customer. Returns a few counts."""
    rng = np.random.default_rng(seed)
    n = n_treated + n_control
    ids = np.arange(1, n + 1)
    control = ids > n_treated
    conv = np.where(control, rng.random(n) < p_control, rng.random(n) < p_treated)
    with engine.begin() as conn:
        start = int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.customers.c.id), 0))).scalar()
        )
        ids = ids + start
        write_frame(
            conn,
            t.customers,
            pd.DataFrame(
                {
                    "id": ids,
                    "external_id": [f"m{i}" for i in ids],
                    "email": [f"m{i}@example.com" for i in ids],
                    "consent_email": True,
                    "created_at": ENTERED,
                    "updated_at": ENTERED,
                }
            ),
        )
        if not conn.execute(sa.select(t.journey_versions.c.id).where(
                t.journey_versions.c.journey == journey)).first():
            write_frame(conn, t.journey_versions, pd.DataFrame([{
                "journey": journey, "version": 1, "content_hash": "x", "status": "active",
                "definition": {"source": JOURNEY_SOURCE.replace("name: offer", f"name: {journey}"),
                               "file": f"{journey}.yaml"},
                "created_at": ENTERED}]))
        write_frame(
            conn,
            t.journey_enrollments,
            pd.DataFrame(
                {
                    "id": ids,
                    "journey": journey,
                    "journey_version": 1,
                    "customer_id": ids,
                    "entry_seq": 1,
                    "status": "completed",
                    "is_control": control,
                    "variant": np.where(ids % 2 == 0, "a", "b"),
                    "entered_at": ENTERED,
                }
            ),
        )
        msg = pd.DataFrame(
            {
                "id": ids,
                "idempotency_key": [f"{journey}/mail/{i}" for i in ids],
                "enrollment_id": ids,
                "customer_id": ids,
                "journey": journey,
                "journey_version": 1,
                "step_id": "mail",
                "channel": "email",
                "status": np.where(control, "skipped", "sent"),
                "reason": np.where(control, "control_group", None),
                "send_after": ENTERED,
                "created_at": ENTERED,
                "updated_at": ENTERED,
                "sent_at": np.where(control, pd.NaT, pd.Timestamp(ENTERED + timedelta(minutes=5))),
            }
        )
        msg["send_after"] = ENTERED + timedelta(minutes=5)
        msg["sent_at"] = pd.to_datetime(msg["sent_at"])
        # what the provider's callback records: the treated messages were delivered
        msg["delivery_status"] = np.where(control, None, "delivered")
        write_frame(conn, t.messages, msg)
        treated_ids = ids[~control]
        write_frame(
            conn,
            t.coupons,
            pd.DataFrame(
                {
                    "code": [f"C{i}" for i in treated_ids],
                    "idempotency_key": [f"c/{i}" for i in treated_ids],
                    "customer_id": treated_ids,
                    "message_id": treated_ids,
                    "provider": "sandbox",
                    "kind": "percent",
                    "value": 20,
                    "status": "issued",
                    "created_at": ENTERED,
                }
            ),
        )
        amount = np.round(rng.gamma(2.0, 20.0, n) + 5, 2)
        days = rng.integers(1, 14, n)
        rows = []
        for i, cid in enumerate(ids):
            if conv[i]:
                at = ENTERED + timedelta(days=int(days[i]), hours=1)
                code = f"C{cid}" if (not control[i] and cid % 3 == 0) else None
                rows.append((f"o{cid}", cid, at, amount[i], "completed", code))
                rows.append((f"x{cid}", cid, at + timedelta(hours=1), 999.0, "cancelled", None))
                rows.append(
                    (f"late{cid}", cid, ENTERED + timedelta(days=20), 50.0, "completed", None)
                )
            if cid % 3 == 0:
                rows.append(
                    (f"pre{cid}", cid, ENTERED - timedelta(days=3), 30.0, "completed", None)
                )
        write_frame(conn, t.orders, pd.DataFrame(rows, columns=[
            "external_id", "customer_id", "ordered_at", "amount", "status", "coupon_code"]))
        # engagement as callbacks and tracked clicks record it (naming the message), an open of
        # a message outside every journey (never counted), and an imported click naming none
        # (counted for the enrollment whose window holds it)
        opened = ENTERED + timedelta(hours=2)
        ev = [(cid, "opened", opened, {"message_id": int(cid)})
              for cid in treated_ids if cid % 2 == 0]
        ev += [(cid, "opened", opened, {"message_id": 10**6})
               for cid in treated_ids if cid % 5 == 0]
        ev += [(cid, "clicked", opened, None) for cid in treated_ids if cid % 7 == 0]
        write_frame(conn, t.events, pd.DataFrame(
            ev, columns=["customer_id", "event_type", "occurred_at", "properties"]))
    return {
        "converted_treated": int(conv[~control].sum()),
        "converted_control": int(conv[control].sum()),
    }
