"""The CDNOW purchase data (Fader & Hardie) that ships inside the lifetimes package.

Real purchase histories of 23,570 customers who first bought in Q1 1997, followed to
1998-06-30. The data has no contacts, order ids or products: contacts come from
``clm_core.ingest.people`` (clearly fake), order ids from (customer, date, n-th order that day),
and order lines from a fixed fake catalogue, all deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.ingest.people import fake_contacts
from clm_core.lifecycle.aggregates import following_orders

PREFIX = "cdnow"
GENRES = ["Rock", "Pop", "Jazz", "Classical", "Hip-Hop", "Country", "Electronic", "Folk"]
ALBUMS_PER_GENRE = 30


def read_cdnow(sample: bool = False) -> pd.DataFrame:
    """Transactions: customer (int), date (datetime), quantity (int), amount (float)."""
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    # lifetimes.datasets imports pkg_resources, gone from recent setuptools: read the file itself.
    path = resources.files("lifetimes").joinpath("datasets", name)
    with path.open("r") as fh:
        if sample:
            raw = pd.read_csv(fh, sep=r"\s+", header=None,
                              names=["customer", "sample_id", "date", "quantity", "amount"],
                              dtype={"date": str})
        else:
            raw = pd.read_csv(fh, sep=r"\s+", header=0,
                              names=["customer", "date", "quantity", "amount"], dtype={"date": str})
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    return raw[["customer", "date", "quantity", "amount"]]


def catalogue() -> pd.DataFrame:
    skus = [f"CD-{g[:3].upper()}-{k:03d}" for g in GENRES for k in range(1, ALBUMS_PER_GENRE + 1)]
    names = [f"{g} Album No. {k}" for g in GENRES for k in range(1, ALBUMS_PER_GENRE + 1)]
    return pd.DataFrame({"sku": skus, "product_name": names,
                         "genre": np.repeat(np.arange(len(GENRES)), ALBUMS_PER_GENRE)})


def order_lines(
    orders: pd.DataFrame, customer_numbers: np.ndarray, seed: int = 1997
) -> pd.DataFrame:
    """Up to three lines per order, leaning to each customer's favourite genre (Zipf within it)."""
    rng = np.random.default_rng(seed)
    cat = catalogue()
    qty = orders["quantity"].clip(lower=1).to_numpy()
    n_lines = np.minimum(qty, 3)
    order_idx = np.repeat(np.arange(len(orders)), n_lines)
    line_no = (
        np.concatenate([np.arange(1, k + 1) for k in n_lines]) if len(n_lines) else np.array([])
    )
    fav = (customer_numbers[order_idx] * 2654435761 % 2**32) % len(GENRES)
    genre = np.where(
        rng.random(len(order_idx)) < 0.7, fav, rng.integers(0, len(GENRES), len(order_idx))
    )
    rank = np.minimum(rng.zipf(1.6, len(order_idx)), ALBUMS_PER_GENRE) - 1
    product = genre * ALBUMS_PER_GENRE + rank
    base, extra = qty[order_idx] // n_lines[order_idx], qty[order_idx] % n_lines[order_idx]
    line_qty = base + (line_no <= extra)
    unit = np.round(orders["amount"].to_numpy()[order_idx] / qty[order_idx], 2)
    return pd.DataFrame({"order_row": order_idx, "line_no": line_no.astype(int),
                         "sku": cat["sku"].to_numpy()[product],
                         "product_name": cat["product_name"].to_numpy()[product],
                         "quantity": line_qty.astype(int), "unit_price": unit})


@dataclass
class CdnowReport:
    customers: int
    orders: int
    items: int
    prospects: int
    inserted: dict[str, int]


def import_cdnow(engine: Engine, sample: bool = False, prospects: int = 0) -> CdnowReport:
    """Load CDNOW as customers, orders and order items; re-running changes nothing."""
    tx = read_cdnow(sample).sort_values(["customer", "date"], kind="stable").reset_index(drop=True)
    tx["n"] = tx.groupby(["customer", "date"]).cumcount() + 1
    first = tx.groupby("customer")["date"].min()
    people = fake_contacts(
        first.index.to_numpy(), PREFIX, signed_up_at=first.reset_index(drop=True)
    )
    if prospects:
        # Newsletter sign-ups who never bought: the data has none, and journeys need them.
        pn = np.arange(1, prospects + 1)
        days = pd.to_timedelta((pn * 7919) % 540, unit="D")
        extra = fake_contacts(
            pn + 900_000, PREFIX, signed_up_at=pd.Series(pd.Timestamp("1997-01-01") + days)
        )
        extra["external_id"] = [f"{PREFIX}-p{k:05d}" for k in pn]
        extra["email"] = [f"{PREFIX}.p{k:05d}@example.com" for k in pn]
        extra["attributes"] = [{"synthetic_contact": True, "source": "newsletter"}] * len(pn)
        people = pd.concat([people, extra], ignore_index=True)
    for ch in ("email", "sms"):
        people[f"consent_{ch}_at"] = people["signed_up_at"].where(people[f"consent_{ch}"])
    orders = pd.DataFrame({
        "external_id": [f"{PREFIX}-{c:05d}-{d:%Y%m%d}-{k}" for c, d, k in
                        zip(tx["customer"], tx["date"], tx["n"])],
        "customer_ext": [f"{PREFIX}-{c:05d}" for c in tx["customer"]],
        "ordered_at": tx["date"].astype("datetime64[us]"), "amount": tx["amount"].round(2),
        "currency": "USD", "quantity": tx["quantity"].astype(int), "status": "completed"})
    lines = order_lines(tx, tx["customer"].to_numpy())
    inserted: dict[str, int] = {}
    with engine.begin() as conn:
        inserted["customers"] = write_frame(
            conn,
            t.customers,
            people,
            keys=["external_id"],
            update=[c for c in people.columns if c != "external_id"],
            touch="updated_at",
        )
        ids = _ids(conn, t.customers, f"{PREFIX}-%")
        orders.insert(1, "customer_id", orders.pop("customer_ext").map(ids).astype("int64"))
        with following_orders(conn, orders):
            inserted["orders"] = write_frame(
                conn, t.orders, orders, keys=["external_id"],
                update=["customer_id", "ordered_at", "amount", "quantity"])
        order_ids = _ids(conn, t.orders, f"{PREFIX}-%")
        lines.insert(
            0, "order_id", orders["external_id"].map(order_ids).to_numpy()[lines.pop("order_row")]
        )
        inserted["order_items"] = write_frame(
            conn,
            t.order_items,
            lines,
            keys=["order_id", "line_no"],
            update=["sku", "product_name", "quantity", "unit_price"],
        )
    return CdnowReport(len(people) - prospects, len(orders), len(lines), prospects, inserted)


def _ids(conn: sa.Connection, table: sa.Table, pattern: str) -> pd.Series:
    rows = pd.read_sql(sa.select(table.c.id, table.c.external_id)
                       .where(table.c.external_id.like(pattern)), conn)
    return pd.Series(rows["id"].to_numpy(), index=rows["external_id"].to_numpy())
