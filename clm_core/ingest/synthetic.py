"""Synthetic stores for scale tests: customers whose purchases follow the BG/NBD story.

Each buyer has a purchase rate ``lambda ~ Gamma(r, scale 1/alpha)`` per day and a dropout
probability ``p ~ Beta(a, b)``. The first purchase happens at a birth time spread uniformly
over the window; while alive, purchases arrive as a Poisson process, and after each purchase
the customer drops out with probability ``p``. Everything after the observation end is cut.
Order values follow the Gamma-Gamma model: ``nu ~ Gamma(q, scale 1/gamma)`` per customer and
``value ~ Gamma(p, scale 1/nu)`` per order. A share of customers are prospects with no order.

Times are continuous (seconds), not collapsed to whole days, so a BG/NBD fit on the output
recovers the generating parameters without discretisation bias. Everything is vectorised:
the number of repeat purchases is ``min(J, N)`` with ``J`` geometric (purchases survived) and
``N ~ Poisson(lambda T)`` (arrivals before the end); given ``N``, arrivals are uniform order
statistics, and the first ``k`` of ``N`` come from normalised exponential spacings without
drawing the other ``N - k``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.ingest.people import fake_contacts, numbered
from clm_core.lifecycle.aggregates import following_orders, rebuild

PREFIX = "syn"


@dataclass(frozen=True)
class SyntheticParams:
    """Generating parameters; BG/NBD rates are per day. The defaults give about five orders
    per customer (prospects included) over two years, averaging about $50 an order."""

    r: float = 0.8
    alpha: float = 40.0
    a: float = 0.6
    b: float = 5.0
    spend_p: float = 6.0
    spend_q: float = 3.5
    spend_gamma: float = 20.0
    days: float = 730.0
    end: datetime = datetime(2026, 6, 30)
    prospect_share: float = 0.08


def simulate_purchases(n_buyers: int, params: SyntheticParams,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(buyer index per purchase, day of purchase in the window, value), sorted by buyer and
    time; the first purchase of each buyer is its birth."""
    lam = rng.gamma(params.r, 1.0 / params.alpha, n_buyers)
    p = rng.beta(params.a, params.b, n_buyers)
    birth = rng.random(n_buyers) * params.days
    T = params.days - birth
    # BG/NBD: dropout can follow any repeat purchase, not the first one (that is the MBG/NBD).
    survived = rng.geometric(np.clip(p, 1e-12, 1.0))  # repeat purchases until dropout
    arrivals = rng.poisson(lam * T)
    k = np.minimum(survived, arrivals)  # repeat purchases observed

    owner_rep = np.repeat(np.arange(n_buyers), k)
    gaps = rng.standard_exponential(len(owner_rep))
    sums = np.bincount(owner_rep, weights=gaps, minlength=n_buyers)
    spacing = np.cumsum(gaps) - (np.cumsum(sums) - sums)[owner_rep]
    # The first k of N uniform order statistics: S_i / S_{N+1}, with S_{N+1} = S_k + Gamma(N+1-k).
    total = sums + rng.gamma(arrivals - k + 1.0)
    repeat_day = birth[owner_rep] + T[owner_rep] * spacing / total[owner_rep]

    counts = k + 1
    owner = np.repeat(np.arange(n_buyers), counts)
    first = np.cumsum(counts) - counts
    day = np.empty(len(owner))
    is_first = np.zeros(len(owner), dtype=bool)
    is_first[first] = True
    day[is_first] = birth
    day[~is_first] = repeat_day

    nu = rng.gamma(params.spend_q, 1.0 / params.spend_gamma, n_buyers)
    value = rng.gamma(params.spend_p, 1.0 / nu[owner])
    return owner, day, value


SLICE = 1_000_000  # customers generated and written at a time


def generate_frames(n_customers: int, seed: int = 0, params: SyntheticParams | None = None,
                    first_customer: int = 1, first_order: int = 1,
                    rng: np.random.Generator | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(customers, orders). Customers have the ``customers`` table columns (external ids
    ``syn-00001``...); orders have ``external_id``, ``customer_external_id``, ``ordered_at``
    (naive UTC), ``amount``, ``currency``, ``quantity``, ``status``. Same seed, same data.

    ``first_customer`` and ``first_order`` number the customers and orders from there, and ``rng``
    replaces the seed's generator: one slice of a store too big to make at once (``slices``)."""
    params = params or SyntheticParams()
    rng = rng or np.random.default_rng(seed)
    numbers = np.arange(first_customer, first_customer + n_customers)
    prospect = rng.random(n_customers) < params.prospect_share
    buyers = numbers[~prospect]
    owner, day, value = simulate_purchases(len(buyers), params, rng)

    start = np.datetime64(params.end, "us") - np.timedelta64(int(params.days * 86400), "s")
    to_time = lambda d: start + (d * 86400).astype("timedelta64[s]")  # noqa: E731
    signed_up = np.empty(n_customers, dtype="datetime64[us]")
    signed_up[prospect] = to_time(rng.random(int(prospect.sum())) * params.days)
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    signed_up[~prospect] = to_time(day[first])
    customers = contacts(numbers, PREFIX, signed_up, prospect)

    ext = customers["external_id"].to_numpy()
    orders = pd.DataFrame({
        "external_id": numbered(f"{PREFIX}-o", np.arange(first_order, first_order + len(owner)),
                                8),
        "customer_external_id": ext[buyers[owner] - first_customer],
        "ordered_at": to_time(day),
        "amount": np.round(value, 2),
        "currency": "USD",
        "quantity": 1 + rng.poisson(0.6, len(owner)),
        "status": "completed",
    })
    return customers, orders


def contacts(numbers: np.ndarray, prefix: str, signed_up: np.ndarray,
             prospect: np.ndarray) -> pd.DataFrame:
    """Customer rows (fake contacts ``prefix-N``) who consented when they signed up."""
    customers = fake_contacts(numbers, prefix, signed_up_at=pd.Series(signed_up))
    for ch in ("email", "sms"):
        customers[f"consent_{ch}_at"] = customers["signed_up_at"].where(customers[f"consent_{ch}"])
    customers["attributes"] = _attributes(prospect)
    return customers


def _attributes(prospect: np.ndarray) -> list[dict[str, bool]]:
    # Two shared dicts: building a million distinct ones costs seconds and nothing reads them apart.
    kinds = ({"synthetic_contact": True, "prospect": False},
             {"synthetic_contact": True, "prospect": True})
    return [kinds[1] if x else kinds[0] for x in prospect.tolist()]


@dataclass
class SyntheticReport:
    customers: int
    prospects: int
    orders: int
    revenue: float
    first_order: datetime | None
    last_order: datetime | None
    written: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.customers:,} customers ({self.prospects:,} prospects), {self.orders:,} "
               f"orders ({self.orders / max(self.customers, 1):.2f} per customer), revenue "
               f"{self.revenue:,.2f}"]
        if self.first_order is not None:
            out.append(f"  orders from {self.first_order:%Y-%m-%d} to {self.last_order:%Y-%m-%d}")
        if self.written:
            out.append("  new or changed rows: "
                       + ", ".join(f"{k} {v:,}" for k, v in self.written.items()))
        out.append(f"  in {self.seconds:.1f}s")
        return out


def _report(customers: pd.DataFrame, orders: pd.DataFrame) -> SyntheticReport:
    has = not orders.empty
    return SyntheticReport(
        customers=len(customers),
        prospects=len(customers) - orders["customer_external_id"].nunique(),
        orders=len(orders), revenue=float(orders["amount"].sum()),
        first_order=orders["ordered_at"].min().to_pydatetime() if has else None,
        last_order=orders["ordered_at"].max().to_pydatetime() if has else None)


def write_csv(directory: str | Path, n_customers: int, seed: int = 0,
              params: SyntheticParams | None = None) -> SyntheticReport:
    """``customers.csv`` and ``orders.csv`` in ``directory``, ready for ``clm import``.
    Times carry an explicit UTC offset, so any ``--timezone`` imports them the same."""
    started = time.perf_counter()
    parts = []
    for k, (customers, orders) in enumerate(slices(n_customers, seed, params)):
        save_csv(directory, customers, orders, append=k > 0)  # a slice at a time
        parts.append(_report(customers, orders))
    report = _combined(parts)
    report.seconds = time.perf_counter() - started
    return report


def save_csv(directory: str | Path, customers: pd.DataFrame, orders: pd.DataFrame,
             append: bool = False) -> None:
    """Frames from ``generate_frames`` as ``customers.csv`` and ``orders.csv`` (``append``:
    added to the files a first slice began)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    how: dict = {"index": False, "date_format": "%Y-%m-%dT%H:%M:%SZ",
                 "mode": "a" if append else "w", "header": not append}
    customers.drop(columns=["attributes"]).to_csv(out / "customers.csv", **how)
    orders.rename(columns={"customer_external_id": "customer_id"}).to_csv(
        out / "orders.csv", **how)


def slices(n_customers: int, seed: int = 0, params: SyntheticParams | None = None,
           ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """The store of ``generate_frames(n_customers, seed)`` as (customers, orders) slices of
    ``SLICE`` customers, each made when asked for, so memory follows the slice, not the
    store (ten million customers at once took 17.7 GB). The first slice is the seed's own
    generator, so a store of up to ``SLICE`` customers is ``generate_frames``' exactly; each
    later one draws from a generator of its own (seed, slice)."""
    orders_so_far = 0
    for k, first in enumerate(range(1, n_customers + 1, SLICE)):
        rng = np.random.default_rng(seed if k == 0 else [seed, k])
        customers, orders = generate_frames(min(SLICE, n_customers - first + 1), seed, params,
                                            first_customer=first, first_order=orders_so_far + 1,
                                            rng=rng)
        orders_so_far += len(orders)
        yield customers, orders


def load_synthetic(engine: Engine, n_customers: int, seed: int = 0,
                   params: SyntheticParams | None = None) -> SyntheticReport:
    """Generate and write customers and orders in one transaction, a slice at a time when
    there are several (``_write_slices``); re-running with the same arguments changes
    nothing."""
    started = time.perf_counter()
    with engine.begin() as conn:
        if n_customers > SLICE:
            report = _write_slices(conn, n_customers, seed, params)
        else:
            customers, orders = generate_frames(n_customers, seed, params)
            report = _report(customers, orders)
            report.written = write_store(conn, customers, orders, PREFIX)
    report.seconds = time.perf_counter() - started
    return report


def _write_slices(conn: Connection, n_customers: int, seed: int,
                  params: SyntheticParams | None) -> SyntheticReport:
    """Every slice's customers in one bulk write, then every slice's orders in another (the
    slices made twice, a few seconds each), then the purchase aggregates rebuilt once. Into
    an empty store each write goes straight in by ``COPY`` and the table's indexes are built
    once after it: written slice by slice, a table already holding tens of millions of orders
    kept its indexes up row by row, and ten million customers had not loaded after an hour."""
    parts: list[SyntheticReport] = []

    def people() -> Iterator[pd.DataFrame]:
        for customers, orders in slices(n_customers, seed, params):
            parts.append(_report(customers, orders))
            yield customers

    def purchases() -> Iterator[pd.DataFrame]:
        for _, orders in slices(n_customers, seed, params):
            yield _order_rows(conn, orders, PREFIX)

    written = {table.name: _upsert(conn, table, next(frames), then=frames)
               for table, frames in ((t.customers, people()), (t.orders, purchases()))}
    rebuild(conn)
    report = _combined(parts)
    report.written = written
    return report


def _combined(parts: list[SyntheticReport]) -> SyntheticReport:
    """The report of a store made in slices (a customer's orders are all in their slice);
    what was written is the caller's to add."""
    firsts = [p.first_order for p in parts if p.first_order is not None]
    lasts = [p.last_order for p in parts if p.last_order is not None]
    return SyntheticReport(
        customers=sum(p.customers for p in parts), prospects=sum(p.prospects for p in parts),
        orders=sum(p.orders for p in parts), revenue=sum(p.revenue for p in parts),
        first_order=min(firsts, default=None), last_order=max(lasts, default=None))


ORDER_UPDATES = ("customer_id", "ordered_at", "amount", "currency", "quantity", "coupon_code")


def write_store(conn: Connection, customers: pd.DataFrame, orders: pd.DataFrame,
                prefix: str) -> dict[str, int]:
    """Upsert generated customers (by external id), then their orders (``orders`` names
    customers by ``customer_external_id``, any customer whose id starts ``prefix-``), with the
    bulk writer the importer uses, the purchase aggregates kept in step; new or changed rows
    per table."""
    written = {}
    if len(customers):
        written["customers"] = _upsert(conn, t.customers, customers)
    if len(orders):
        frame = _order_rows(conn, orders, prefix)
        with following_orders(conn, frame):  # the purchase aggregates, in this transaction
            written["orders"] = _upsert(conn, t.orders, frame)
    return written


def _upsert(conn: Connection, table: sa.Table, frame: pd.DataFrame,
            then: Iterator[pd.DataFrame] | tuple[()] = ()) -> int:
    """Generated customers or orders (and ``then`` more of them, in the same bulk write) upserted
    by external id: a customer's every column, an order's ``ORDER_UPDATES``."""
    customers = table is t.customers
    update = [c for c in frame.columns
              if c != "external_id" and (customers or c in ORDER_UPDATES)]
    return write_frame(conn, table, frame, keys=["external_id"], update=update,
                       touch="updated_at" if customers else None, bulk=True, then=then)


def _order_rows(conn: Connection, orders: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Generated orders as ``orders`` rows: their customers' database ids for external ones."""
    ids = _customer_ids(conn, prefix, orders["customer_external_id"])
    frame = orders.drop(columns=["customer_external_id"])
    frame.insert(1, "customer_id", ids.reindex(orders["customer_external_id"]).to_numpy())
    return frame


def _customer_ids(conn: Connection, prefix: str, external: pd.Series) -> pd.Series:
    """Database ids of the ``prefix-`` customers, by external id. Numbered ids of one length
    (as ``numbered`` makes those of one slice) are read as one range of the external id's
    index, not every customer of the prefix again for each slice; digits after one prefix
    sort alike bytewise and in any collation the database may use."""
    c = t.customers
    query = sa.select(c.c.id, c.c.external_id).where(c.c.external_id.like(f"{prefix}-%"))
    lengths = external.str.len()
    if lengths.nunique() == 1 and external.str.fullmatch(re.escape(prefix) + r"-\d+").all():
        query = query.where(c.c.external_id.between(external.min(), external.max()),
                            sa.func.length(c.c.external_id) == int(lengths.iloc[0]))
    rows = pd.read_sql(query, conn)
    return pd.Series(rows["id"].to_numpy(), index=rows["external_id"].to_numpy())
