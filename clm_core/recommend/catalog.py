"""Products and baskets for simulated stores, with the structure real stores have.

The story of one simulated store:

- ``products`` products in ``categories`` categories; base popularity falls off as a power law
  of the product's rank (a few best sellers, a long tail).
- every customer belongs to a segment; a segment prefers some categories (its category weights
  are Dirichlet(``taste``): small ``taste``, strong preferences), so a product's popularity
  differs by segment.
- every product has a complement, a product from another category bought together with it:
  in the same basket (``p_together``) or as the main item of the customer's next order
  (``p_follow``, the accessory bought after the device).
- a share of products are consumables (``consumable_share``); a customer whose first main item
  is one buys it again as the main item of a later order with probability ``p_repeat``.

An order's main item is, in that order of precedence: the complement of the previous order's
main item (``p_follow``), the customer's favourite again (``p_repeat``, consumables only), or a
draw from the segment's popularity. ``extra_items`` more items (Poisson mean) come from the
segment's popularity. So a customer's later baskets depend on their earlier ones and on their
segment, which is what a recommender can learn and the most-popular list cannot.

``CatalogParams.unstructured()`` turns all of it off: every item is drawn from one global
popularity, the store on which no recommender can beat the most popular items.

Everything is drawn up front from one ``numpy`` Generator in a fixed order, so a seed gives the
same rows; the only loop is over an order's rank within its customer (the chain of main items),
each step vectorised over all customers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.errors import InputError
from clm_core.ingest.people import numbered
from clm_core.ingest.synthetic import SyntheticParams, generate_frames, load_synthetic

ADJECTIVES = ("Classic", "Organic", "Deluxe", "Everyday", "Compact", "Premium", "Travel",
              "Family", "Mini", "Pro")
CATEGORY_NAMES = ("Coffee", "Tea", "Snacks", "Kitchen", "Garden", "Books", "Music", "Toys",
                  "Beauty", "Sports", "Pets", "Office", "Baby", "Bath", "Wine", "Bakery",
                  "Outdoor", "Audio", "Games", "Crafts")


@dataclass(frozen=True)
class CatalogParams:
    """The store's products and how customers choose them (see the module docstring)."""

    products: int = 400
    categories: int = 20
    segments: int = 4
    zipf: float = 0.9  # base popularity of the product of rank r: r ** -zipf
    taste: float = 0.3  # Dirichlet concentration of a segment's category weights
    p_together: float = 0.4
    p_follow: float = 0.3
    p_repeat: float = 0.3
    consumable_share: float = 0.25
    extra_items: float = 0.8
    extra_quantity: float = 0.3  # quantity is 1 + Poisson(extra_quantity)

    @classmethod
    def unstructured(cls, **changes: Any) -> CatalogParams:
        """Items from one global popularity: no segments, complements or repeats."""
        return replace(cls(taste=np.inf, p_together=0.0, p_follow=0.0, p_repeat=0.0), **changes)


@dataclass(frozen=True)
class Catalog:
    """The products (columns of ``weights``) and each segment's popularity over them."""

    skus: np.ndarray
    names: np.ndarray
    category: np.ndarray
    price: np.ndarray
    complement: np.ndarray  # product index bought together with each product
    consumable: np.ndarray  # bool
    weights: np.ndarray  # (segments, products), rows sum to 1

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sku": self.skus, "product_name": self.names,
                             "category": [CATEGORY_NAMES[c % len(CATEGORY_NAMES)]
                                          for c in self.category],
                             "unit_price": self.price, "consumable": self.consumable})


def make_catalog(rng: np.random.Generator, params: CatalogParams) -> Catalog:
    """Products, prices, complements and the segments' popularity."""
    n, c = params.products, params.categories
    category = rng.integers(0, c, n)
    base = np.arange(1, n + 1, dtype=np.float64) ** -params.zipf
    if np.isinf(params.taste):
        tastes = np.ones((params.segments, c))
    else:
        tastes = rng.dirichlet(np.full(c, params.taste), params.segments)
    weights = base[None, :] * tastes[:, category]
    weights /= weights.sum(axis=1, keepdims=True)
    # A complement from another category (shift the category by 1..c-1 and pick a product in it).
    target = (category + rng.integers(1, max(c, 2), n)) % c
    order = np.argsort(category, kind="stable")
    starts = np.searchsorted(category[order], np.arange(c))
    sizes = np.bincount(category, minlength=c)
    pick = rng.random(n)
    has = sizes[target] > 0
    complement = np.where(has, order[np.minimum(starts[target] + (pick * sizes[target]).astype(int),
                                                n - 1)], (np.arange(n) + 1) % n)
    consumable = rng.random(n) < params.consumable_share
    price = np.round(np.exp(rng.normal(2.8, 0.7, n)), 2)
    skus = np.array([f"P{i:05d}" for i in range(1, n + 1)])
    adjective = rng.integers(0, len(ADJECTIVES), n)
    names = np.array([f"{ADJECTIVES[a]} {CATEGORY_NAMES[k % len(CATEGORY_NAMES)]} {i}"
                      for i, (a, k) in enumerate(zip(adjective, category, strict=True), start=1)])
    return Catalog(skus, names, category, price, complement, consumable, weights)


def draw_segments(rng: np.random.Generator, customers: int, params: CatalogParams) -> np.ndarray:
    """A segment per customer, uniformly."""
    return rng.integers(0, params.segments, customers)


def _from_segments(rng: np.random.Generator, weights: np.ndarray, segment: np.ndarray
                   ) -> np.ndarray:
    """One product per entry of ``segment`` from that segment's popularity (inverse CDF)."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(segment))
    out = np.empty(len(segment), dtype=np.int64)
    for s in range(weights.shape[0]):
        at = segment == s
        out[at] = np.minimum(np.searchsorted(cdf[s], u[at]), weights.shape[1] - 1)
    return out


@dataclass
class ItemChain:
    """Where each customer's chain of main items stands after the orders generated so far
    (customer_id -> product index): a store generated day by day (``clm simulate``) passes
    the same chain to every day's ``order_items``, so a customer's next order follows their
    previous one across days as it does within one call."""

    last: pd.Series = field(default_factory=lambda: pd.Series(dtype=np.int64))
    favourite: pd.Series = field(default_factory=lambda: pd.Series(dtype=np.int64))

    def update(self, customers: np.ndarray, last: np.ndarray, favourite: np.ndarray) -> None:
        new_last = pd.Series(last, index=customers)
        new_fav = pd.Series(favourite, index=customers)
        self.last = new_last.combine_first(self.last).astype(np.int64)
        self.favourite = new_fav.combine_first(self.favourite).astype(np.int64)


def order_items(rng: np.random.Generator, orders: pd.DataFrame, segments: pd.Series,
                params: CatalogParams | None = None, catalog: Catalog | None = None,
                chain: ItemChain | None = None) -> pd.DataFrame:
    """``order_items`` rows for ``orders`` (order_id, customer_id, ordered_at): order_id,
    line_no (from 1), sku, product_name, quantity, unit_price. ``segments`` maps customer_id to
    a segment in ``range(params.segments)``. The catalogue is drawn from ``rng`` first unless
    given. Same generator state, same rows. With ``chain``, a customer's first order here
    follows their last one before (and ``chain`` moves on to these orders)."""
    params = params or CatalogParams()
    catalog = catalog or make_catalog(rng, params)
    o = orders.sort_values(["customer_id", "ordered_at", "order_id"], kind="stable")
    n = len(o)
    cust = o["customer_id"].to_numpy()
    seg = segments.reindex(cust).to_numpy()
    if n and (pd.isna(seg).any() or seg.min() < 0 or seg.max() >= catalog.weights.shape[0]):
        raise InputError("segments: every customer of the orders needs a segment in "
                         f"0..{catalog.weights.shape[0] - 1}")
    seg = seg.astype(np.int64)
    first = np.r_[True, cust[1:] != cust[:-1]] if n else np.zeros(0, dtype=bool)
    rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))

    # Every random number up front, in a fixed order (determinism does not depend on the chain).
    drawn = _from_segments(rng, catalog.weights, seg)
    u_main = rng.random(n)
    together = rng.random(n) < params.p_together
    extras = rng.poisson(params.extra_items, n)
    extra_items = _from_segments(rng, catalog.weights, np.repeat(seg, extras))
    quantity = 1 + rng.poisson(params.extra_quantity, n + int(together.sum()) + len(extra_items))

    # The chain of main items, one rank at a time across all customers.
    main = drawn.copy()
    favourite = np.empty(n, dtype=np.int64)
    favourite[first] = drawn[first]
    follows = u_main < params.p_follow
    repeats = (u_main >= params.p_follow) & (u_main < params.p_follow + params.p_repeat)
    if chain is not None and len(chain.last) and n:
        # A customer seen before: the first order here continues their chain.
        at = np.flatnonzero(first)
        prev = chain.last.reindex(cust[at]).to_numpy()
        fav = chain.favourite.reindex(cust[at]).to_numpy()
        seen = ~np.isnan(prev.astype(float))
        at, prev, fav = at[seen], prev[seen].astype(np.int64), fav[seen].astype(np.int64)
        favourite[at] = fav
        main[at] = np.where(follows[at], catalog.complement[prev],
                            np.where(repeats[at] & catalog.consumable[fav], fav, drawn[at]))
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2 if n else 1))
    for r in range(1, len(bounds) - 1):
        at = by_rank[bounds[r]:bounds[r + 1]]
        prev = main[at - 1]
        fav = favourite[at - 1]
        favourite[at] = fav
        pick = np.where(follows[at], catalog.complement[prev],
                        np.where(repeats[at] & catalog.consumable[fav], fav, drawn[at]))
        main[at] = pick

    if chain is not None and n:
        last = np.r_[cust[1:] != cust[:-1], True]
        chain.update(cust[last], main[last], favourite[last])
    position = np.concatenate([np.arange(n), np.flatnonzero(together),
                               np.repeat(np.arange(n), extras)])
    product = np.concatenate([main, catalog.complement[main[together]], extra_items])
    lines = pd.DataFrame({"pos": position, "product": product, "quantity": quantity})
    lines = lines.drop_duplicates(["pos", "product"]).sort_values("pos", kind="stable")
    pos, prod = lines["pos"].to_numpy(), lines["product"].to_numpy()
    return pd.DataFrame({
        "order_id": o["order_id"].to_numpy()[pos],
        "line_no": lines.groupby("pos").cumcount().to_numpy() + 1,
        "sku": catalog.skus[prod],
        "product_name": catalog.names[prod],
        "quantity": lines["quantity"].to_numpy(),
        "unit_price": catalog.price[prod],
    })


def simulated_catalog(seed: int = 0, params: CatalogParams | None = None) -> Catalog:
    """The catalogue ``simulated_lines`` uses for ``seed``."""
    return make_catalog(np.random.default_rng([seed, 2]), params or CatalogParams())


def simulated_lines(customers: int, seed: int = 0, params: CatalogParams | None = None,
                    synthetic: SyntheticParams | None = None) -> pd.DataFrame:
    """Order lines of a whole simulated store, in memory: the synthetic store's orders
    (``ingest.synthetic``, customers numbered from 1) with this module's items. Columns:
    customer_id, order_id, ordered_at, segment, and the ``order_items`` columns."""
    params = params or CatalogParams()
    _, orders = generate_frames(customers, seed, synthetic)
    frame = pd.DataFrame({
        "order_id": np.arange(1, len(orders) + 1),
        "customer_id": orders["customer_external_id"].str.rsplit("-", n=1).str[1].astype(int),
        "ordered_at": orders["ordered_at"].to_numpy()})
    rng = np.random.default_rng([seed, 1])
    segments = pd.Series(draw_segments(rng, customers, params), index=np.arange(1, customers + 1))
    items = order_items(rng, frame, segments, params, simulated_catalog(seed, params))
    lines = items.merge(frame, on="order_id")
    lines["segment"] = segments.reindex(lines["customer_id"]).to_numpy()
    return lines


def load_simulated(engine: Engine, customers: int, seed: int = 0,
                   params: CatalogParams | None = None) -> int:
    """The synthetic store (``ingest.synthetic.load_synthetic``) with this module's items
    written to ``order_items`` (replacing the items of its orders); the lines written."""
    load_synthetic(engine, customers, seed=seed)
    lines = simulated_lines(customers, seed, params)
    with engine.begin() as conn:
        ids = pd.read_sql(sa.select(t.orders.c.id, t.orders.c.external_id)
                          .where(t.orders.c.external_id.like("syn-o%")), conn)
        order_id = pd.Series(ids["id"].to_numpy(), index=ids["external_id"].to_numpy())
        # simulated_lines numbers the orders from 1 in the synthetic store's order (syn-o...).
        wanted = numbered("syn-o", lines["order_id"].to_numpy(), 8)
        items = lines[["line_no", "sku", "product_name", "quantity", "unit_price"]]
        items.insert(0, "order_id", order_id.reindex(wanted).to_numpy())
        conn.execute(t.order_items.delete().where(t.order_items.c.order_id.in_(
            sa.select(t.orders.c.id).where(t.orders.c.external_id.like("syn-o%")))))
        write_frame(conn, t.order_items, items, bulk=True)
    return len(items)
