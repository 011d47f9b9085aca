"""How recommendations are scored: from counts to a top k per customer.

The question a recommendation answers is "what will this customer buy in their next order?".
The counts that answer it, each over the orders a model is fitted on:

- ``popular``: per SKU, the orders that contain it (``n``); ``n / orders`` is the chance that
  an order contains it, the most-popular baseline's score.
- ``pairs``: per pair (x, y), how often y is in a customer's *next* order after an order that
  contains x (consecutive orders of one customer); ``anchors``: per x, the orders containing x
  that have a next order. ``pairs / anchors`` estimates P(y in the next order | x in this one).

Raw co-purchase counts degenerate to popularity (popular items co-occur with everything);
conditioning on the anchor (dividing by its count) and on the *next* order instead of the same
basket is what carries the signal: segment tastes persist from order to order, and items that
complement what was bought follow it. Each conditional is shrunk towards popularity by ``m``
pseudo-orders, ``(pairs + m * p) / (anchors + m)``, with ``m`` estimated from the counts
(empirical Bayes, ``estimate_shrink``): a rarely bought anchor says little, and a store without
structure scores like the baseline instead of chasing noise.

A customer's score for y is the weighted mean of these conditionals over the SKUs they bought,
each weighted by the recency of its latest order (``decay`` per order back, the latest order
weighing 1): the next order resembles the latest one most. What a customer owns is not
recommended, unless the orders show the SKU is bought again (``ItemModel.repeats``: coffee
yes, a CD no); the baseline shares that rule in the evaluation. Customers without history get
the popular items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_SHRINK = 1e6  # no evidence of structure: popularity throughout
REPEAT_ODDS = 2.0  # odds ratio of rebuying over buying at which a SKU is offered again
MIN_SHRINK = 1.0  # at least one pseudo-order, however strong the spread looks on little data
DECAY = 0.5  # weight of an item bought one order further back


@dataclass(frozen=True)
class ItemModel:
    """Item vocabulary (most popular first), popularity and next-order conditionals."""

    skus: np.ndarray
    names: np.ndarray
    popularity: np.ndarray  # P(an order contains the SKU)
    follow: np.ndarray  # (n, n) float32: P(column in the next order | row in this one)
    shrink: float = 0.0  # the pseudo-orders of popularity used

    @property
    def repeats(self) -> np.ndarray:
        """SKUs the orders show are bought again: the odds that a buyer's next order holds it
        are more than ``REPEAT_ODDS`` times the odds for an order at large (the rate shrunk like
        every conditional, so a handful of repeats is not enough; odds, not rates, so a best
        seller bought by most orders can qualify)."""
        again = np.diagonal(self.follow).astype(np.float64)
        p = self.popularity.astype(np.float64)
        # Strictly: a SKU in every order (p = 1) says nothing about rebuying.
        return again * (1 - p) > REPEAT_ODDS * p * (1 - again)

    def excluded(self, rows: pd.Index, owned: pd.DataFrame, repeats: bool = True) -> np.ndarray:
        """The rule the recommender and the baseline share: what a customer owns is not
        offered, unless it is one of the ``repeats`` (and ``repeats`` is on)."""
        mask = self.matrix(rows, owned, None) > 0
        return mask & ~self.repeats[None, :] if repeats else mask

    @property
    def index(self) -> pd.Index:
        return pd.Index(self.skus)

    @classmethod
    def from_counts(cls, popular: pd.DataFrame, pairs: pd.DataFrame, anchors: pd.DataFrame,
                    orders: int, shrink: float | None = None) -> ItemModel:
        """``popular`` (sku, name, n) most popular first; ``pairs`` (x, y, n); ``anchors``
        (sku, n); ``orders`` the number of orders the counts come from. ``shrink``: the
        pseudo-orders of popularity behind each conditional (default: estimated from the
        counts, ``estimate_shrink``)."""
        skus = popular["sku"].astype(str).to_numpy()
        names = popular["name"].fillna(popular["sku"]).astype(str).to_numpy()
        index = pd.Index(skus)
        p = (popular["n"].to_numpy(dtype=np.float64) / max(orders, 1)).astype(np.float32)
        counts = np.zeros((len(skus), len(skus)), dtype=np.float32)
        if len(pairs):
            x = index.get_indexer(pairs["x"].astype(str))
            y = index.get_indexer(pairs["y"].astype(str))
            ok = (x >= 0) & (y >= 0)
            counts[x[ok], y[ok]] = pairs["n"].to_numpy(dtype=np.float32)[ok]
        base = np.zeros(len(skus), dtype=np.float32)
        if len(anchors):
            a = index.get_indexer(anchors["sku"].astype(str))
            base[a[a >= 0]] = anchors["n"].to_numpy(dtype=np.float32)[a >= 0]
        m = estimate_shrink(counts, base, p) if shrink is None else shrink
        follow = (counts + m * p[None, :]) / (base[:, None] + m)
        return cls(skus, names, p, follow.astype(np.float32), m)

    def top(self, customers: Sequence[int], history: pd.DataFrame, k: int,
            owned: pd.DataFrame | None = None, repeats: bool = True) -> np.ndarray:
        """(len(customers), k) column indices into ``skus``, best first; -1 where fewer than k
        SKUs are left. ``history`` (customer_id, sku, weight) weighs what each bought;
        ``owned`` (customer_id, sku) is excluded unless a repeat (default: the SKUs in
        ``history``; see ``excluded``; ``repeats=False``: never what they own)."""
        rows = pd.Index(customers)
        weights = self.matrix(rows, history, "weight")
        total = weights.sum(axis=1, keepdims=True)
        score = np.where(total > 0, (weights @ self.follow) / np.maximum(total, 1e-12),
                         self.popularity[None, :])
        return best(score, self.excluded(rows, history if owned is None else owned, repeats), k)

    def matrix(self, rows: pd.Index, frame: pd.DataFrame, column: str | None) -> np.ndarray:
        out = np.zeros((len(rows), len(self.skus)), dtype=np.float32)
        if len(frame):
            r = rows.get_indexer(frame["customer_id"])
            c = self.index.get_indexer(frame["sku"].astype(str))
            ok = (r >= 0) & (c >= 0)
            values = 1.0 if column is None else frame[column].to_numpy(dtype=np.float32)[ok]
            np.maximum.at(out, (r[ok], c[ok]), values)
        return out


def estimate_shrink(counts: np.ndarray, anchors: np.ndarray, p: np.ndarray) -> float:
    """The shrinkage the counts call for, by empirical Bayes (method of moments).

    Model: an anchor x followed by ``N_x`` next orders, of which ``c_xy`` contain y, with
    ``c_xy ~ Binomial(N_x, q_xy)`` and ``q_xy ~ Beta`` of mean ``p_y`` and concentration ``m``.
    Then ``(c_xy + m p_y) / (N_x + m)`` is the posterior mean of ``q_xy``, and
    ``E[(c/N - p)^2 N / (p (1 - p))] = 1 + (N - 1) / (m + 1)``: the spread of the observed
    conditionals beyond binomial noise says how far they really differ from popularity. Pooled
    over every pair, ``1 / (m + 1)`` is the excess spread per extra next order. Where the
    conditionals spread no more than noise (a store without structure, or too few orders to
    tell) ``m`` is ``MAX_SHRINK`` and every score is popularity: the recommender then ties the
    baseline instead of chasing noise.
    """
    n = anchors[:, None].astype(np.float64)
    q = p[None, :].astype(np.float64)
    ok = (n > 0) & (q > 0) & (q < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(ok, (counts / np.maximum(n, 1) - q) ** 2 * n / (q * (1 - q)) - 1.0, 0.0)
    extra = float(np.where(ok, n - 1, 0).sum())
    excess = float(z.sum()) / max(extra, 1.0)
    # Structure only when the excess spread stands out of its own noise (two standard errors,
    # the terms taken as independent): on a few orders chance alone looks like taste.
    noise = float(np.sqrt(ok.sum()) * z[ok].std()) / max(extra, 1.0) if ok.any() else np.inf
    if excess <= 2 * noise or excess <= 1.0 / (MAX_SHRINK + 1):
        return MAX_SHRINK
    return float(np.clip(1.0 / excess - 1.0, MIN_SHRINK, MAX_SHRINK))


def best(score: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` columns per row of ``score`` skipping masked ones (-1 when none is left); ties
    go to the lower column, the more popular SKU."""
    score = np.where(mask, -np.inf, score)
    k = min(k, score.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(score, top, axis=1)), top, -1)


def popular_top(model: ItemModel, customers: Sequence[int], owned: pd.DataFrame,
                k: int, repeats: bool = True) -> np.ndarray:
    """The most-popular baseline under the recommender's rule: the ``k`` most popular SKUs
    not excluded for the customer (``ItemModel.excluded``)."""
    mask = model.excluded(pd.Index(customers), owned, repeats)
    return best(np.broadcast_to(model.popularity, mask.shape), mask, k)


def recency_weights(lines: pd.DataFrame, decay: float = DECAY) -> pd.DataFrame:
    """(customer_id, sku, weight) from order lines (customer_id, order_id, ordered_at, sku):
    ``decay ** orders_back`` of the latest order holding the SKU (the latest order is 0 back)."""
    if lines.empty:
        return pd.DataFrame({"customer_id": [], "sku": [], "weight": []})
    orders = lines[["customer_id", "order_id", "ordered_at"]].drop_duplicates("order_id")
    orders = orders.sort_values(["customer_id", "ordered_at", "order_id"])
    back = orders.groupby("customer_id").cumcount(ascending=False)
    lines = lines.assign(back=lines["order_id"].map(pd.Series(back.to_numpy(),
                                                              index=orders["order_id"])))
    latest = lines.groupby(["customer_id", "sku"], as_index=False)["back"].min()
    latest["weight"] = decay ** latest.pop("back").to_numpy(dtype=np.float64)
    return latest


def counts_from_lines(lines: pd.DataFrame, limit: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """``ItemModel.from_counts`` arguments from order lines in memory (customer_id, order_id,
    ordered_at, sku, product_name): the same counts the store's SQL gives."""
    lines = lines.drop_duplicates(["order_id", "sku"])
    popular = (lines.groupby("sku", as_index=False)
               .agg(name=("product_name", "max"), n=("order_id", "size"))
               .sort_values(["n", "sku"], ascending=[False, True], kind="stable").head(limit))
    orders = lines[["customer_id", "order_id", "ordered_at"]].drop_duplicates("order_id")
    orders = orders.sort_values(["customer_id", "ordered_at", "order_id"])
    same = orders["customer_id"].to_numpy()[1:] == orders["customer_id"].to_numpy()[:-1]
    ids = orders["order_id"].to_numpy()
    nxt = pd.DataFrame({"order_id": ids[:-1][same], "next_id": ids[1:][same]})
    kept = lines.loc[lines["sku"].isin(popular["sku"]), ["order_id", "sku"]]
    prev = kept.merge(nxt, on="order_id")
    anchors = prev.groupby("sku", as_index=False).size().rename(columns={"size": "n"})
    pairs = (prev.rename(columns={"sku": "x"})
             .merge(kept.rename(columns={"order_id": "next_id", "sku": "y"}), on="next_id")
             .groupby(["x", "y"], as_index=False).size().rename(columns={"size": "n"}))
    return popular, pairs, anchors, len(orders)
