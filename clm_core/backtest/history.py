"""The store's history, read once from the live tables (never written): the copy a replay runs
on.

Everything a replay step may see is filtered by that step's clock here, so no step can look
ahead: orders up to the as-of day, events, suppressions and consent changes up to ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from clm_core.db import tables as t
from clm_core.journeys.store import read_frame
from clm_core.lifecycle.features import CUSTOMER_COLUMNS, NOT_PURCHASES

# Customer columns journeys may read besides the scores (contact fields included).
CONTACT_COLUMNS = ("email", "phone", "locale", "timezone", "city", "country", "name",
                   "consent_email", "consent_sms", "signed_up_at")


def _ns(s: pd.Series) -> np.ndarray:
    return pd.to_datetime(s).to_numpy("datetime64[ns]")


@dataclass
class History:
    """Customers (index customer_id, in id order), purchases sorted by (customer, time), events,
    suppressions and channel-wide consent changes."""

    customers: pd.DataFrame
    order_customer: np.ndarray  # position of the customer in ``customers`` (int64)
    order_at: np.ndarray  # datetime64[ns]
    order_amount: np.ndarray  # float64
    events: pd.DataFrame  # customer_id, event_type, occurred_at
    suppressions: pd.DataFrame  # channel, address, created_at
    consent: pd.DataFrame  # customer_id, channel, action, occurred_at
    _since: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False)

    @property
    def first_day(self) -> pd.Timestamp | None:
        return pd.Timestamp(self.order_at.min()).normalize() if len(self.order_at) else None

    @property
    def last_day(self) -> pd.Timestamp | None:
        return pd.Timestamp(self.order_at.max()).normalize() if len(self.order_at) else None

    def orders_between(self, start: np.datetime64, end: np.datetime64) -> pd.DataFrame:
        """Purchases with start < ordered_at <= end (for journey goals), as the engine wants."""
        hit = (self.order_at > start) & (self.order_at <= end)
        ids = self.customers.index.to_numpy()
        return pd.DataFrame({"customer_id": ids[self.order_customer[hit]],
                             "ordered_at": self.order_at[hit],
                             "amount": self.order_amount[hit]})

    def consent_at(self, now: pd.Timestamp) -> pd.DataFrame:
        """consent_email / consent_sms as they stood at ``now``: the latest channel-wide change
        up to ``now``; before a customer's first recorded change, the opposite of that change;
        without any change, what the customers table holds."""
        out = self.customers[["consent_email", "consent_sms"]].copy()
        if self.consent.empty:
            return out
        for ch in ("email", "sms"):
            led = self.consent[self.consent["channel"] == ch]
            if led.empty:
                continue
            col = f"consent_{ch}"
            first = led.groupby("customer_id")["action"].first()
            out.loc[first.index, col] = (first != "granted").to_numpy()
            upto = led[led["occurred_at"] <= now]
            last = upto.groupby("customer_id")["action"].last()
            out.loc[last.index, col] = (last == "granted").to_numpy()
        return out

    def suppressed_at(self, now: pd.Timestamp) -> pd.DataFrame:
        """suppressed_email / suppressed_sms: addresses suppressed at or before ``now``."""
        at = np.datetime64(pd.Timestamp(now), "ns")
        return pd.DataFrame({f"suppressed_{ch}": since <= at
                             for ch, since in self._suppressed_since().items()},
                            index=self.customers.index)

    def _suppressed_since(self) -> dict[str, np.ndarray]:
        """Per channel, when each customer's address was first suppressed (NaT: never),
        matched once: a replay asks at every step, and matching every address each time cost
        more than the rest of the question."""
        if self._since is None:
            c, sup = self.customers, self.suppressions
            self._since = {}
            for ch, column in (("email", "email"), ("sms", "phone")):
                first = sup[sup["channel"] == ch].groupby("address")["created_at"].min()
                pos = first.index.get_indexer(c[column])  # -1: never suppressed
                since = np.append(first.to_numpy("datetime64[ns]"), np.datetime64("NaT", "ns"))
                self._since[ch] = since[pos]
        return self._since


def load_history(conn: Connection, event_types: set[str] | None = None) -> History:
    """Read what a replay needs in a few queries (purchases only: the statuses the features
    count)."""
    c = t.customers
    wanted = [n for n in dict.fromkeys((*CONTACT_COLUMNS, *CUSTOMER_COLUMNS)) if n in c.c]
    customers = read_frame(conn, sa.select(c.c.id.label("customer_id"), *[c.c[n] for n in wanted])
                           .order_by(c.c.id)).set_index("customer_id")
    for ch in ("consent_email", "consent_sms"):
        customers[ch] = customers[ch].fillna(False).astype(bool)
    customers["signed_up_at"] = pd.to_datetime(customers["signed_up_at"])
    o = t.orders
    orders = read_frame(conn, sa.select(o.c.customer_id, o.c.ordered_at, o.c.amount)
                        .where(o.c.status.not_in(NOT_PURCHASES)))
    pos = customers.index.get_indexer(orders["customer_id"])
    at = _ns(orders["ordered_at"])
    order = np.lexsort((at, pos))
    ev = t.events
    query = sa.select(ev.c.customer_id, ev.c.event_type, ev.c.occurred_at)
    if event_types is not None:
        query = query.where(ev.c.event_type.in_(sorted(event_types)))
    events = read_frame(conn, query.order_by(ev.c.occurred_at))
    events["occurred_at"] = pd.to_datetime(events["occurred_at"]).astype("datetime64[ns]")
    s = t.suppressions
    sup = read_frame(conn, sa.select(s.c.channel, s.c.address, s.c.created_at))
    sup["created_at"] = pd.to_datetime(sup["created_at"]).astype("datetime64[ns]")
    cl = t.consent_ledger
    consent = read_frame(conn, sa.select(cl.c.customer_id, cl.c.channel, cl.c.action,
                                         cl.c.occurred_at)
                         .where(cl.c.topic.is_(None), cl.c.customer_id.is_not(None))
                         .order_by(cl.c.occurred_at, cl.c.id))
    consent["occurred_at"] = pd.to_datetime(consent["occurred_at"]).astype("datetime64[ns]")
    return History(customers, pos[order].astype(np.int64), at[order],
                   orders["amount"].astype(float).to_numpy()[order], events, sup, consent)
