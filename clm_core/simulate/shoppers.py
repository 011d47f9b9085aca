"""Purchases day by day, in several worlds that share their random numbers.

The story is the one ``clm_core.ingest.synthetic`` tells for a whole history at once (BG/NBD
purchases, Gamma-Gamma order values, the same ``SyntheticParams``): each buyer has a daily
purchase rate ``lambda ~ Gamma(r, 1/alpha)``, a dropout probability ``p ~ Beta(a, b)`` and a
spend scale ``nu ~ Gamma(q, 1/gamma)``; the first purchase happens at a birth time spread over
the whole period (history and simulated days); while alive, purchases arrive as a Poisson
process and after each repeat purchase the customer drops out with probability ``p``.

Here time advances one day at a time, so the rate can change after a message is received:
on day ``d`` a customer buys ``Poisson(lambda * m)`` times, where ``m`` is the product of
``1 + purchase_lift`` of every effect active for them that day (1 without one).

Worlds: world 0 is what happens (it is written to the store); every other world is the same
store with some exposures switched (``clm_core.simulate.store`` says which). They share their
random numbers (common random numbers): one uniform ``U`` per customer and day gives the number
of purchases in every world by inversion of the Poisson CDF, so a larger rate never gives fewer
purchases; one uniform ``V`` decides dropout (alive while ``V < (1 - p)^k``); the ``j``-th
purchase of a day has the same time and value in every world that has one. The difference
between two worlds is then the effect of the switched exposures alone, not sampling noise.

Discretisation: dropout is applied at the end of a day, after all of that day's purchases
(with a daily rate around 0.02, two purchases in one day are rare).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from clm_core.ingest.synthetic import SyntheticParams


@dataclass(frozen=True)
class DayOrders:
    """One world's purchases of one day, sorted by time: customer index, time (in days since
    the simulation's origin), value, and whether it is the customer's first purchase."""

    customer: np.ndarray
    at: np.ndarray
    value: np.ndarray
    first: np.ndarray


class Shoppers:
    """The latent state of every customer (index 0..n-1) in ``worlds`` worlds."""

    def __init__(self, n: int, params: SyntheticParams, rng: np.random.Generator,
                 history_days: float, sim_days: float, worlds: int = 1):
        self.params = params
        self.n = n
        prospect = rng.random(n) < params.prospect_share
        self.lam = rng.gamma(params.r, 1.0 / params.alpha, n)
        self.p = rng.beta(params.a, params.b, n)
        self.nu = rng.gamma(params.spend_q, 1.0 / params.spend_gamma, n)
        # birth: day of the first purchase, from -history_days to sim_days; never for prospects
        self.birth = np.where(prospect, np.inf,
                              -history_days + rng.random(n) * (history_days + sim_days))
        self.prospect = prospect
        self.alive = np.ones((worlds, n), dtype=bool)

    @property
    def worlds(self) -> int:
        return int(self.alive.shape[0])

    def day(self, rng: np.random.Generator, d: int, mult: np.ndarray | None = None
            ) -> list[DayOrders]:
        """Purchases in ``[d, d + 1)`` in every world; ``mult`` (worlds x n) scales the rate."""
        n, w = self.n, self.worlds
        mult = np.ones((w, n)) if mult is None else mult
        born_before = self.birth < d
        births = np.flatnonzero((self.birth >= d) & (self.birth < d + 1))
        u = rng.random(n)
        v = rng.random(n)
        mu = self.lam[None, :] * mult
        counts = np.zeros((w, n), dtype=np.int64)
        active = born_before[None, :] & self.alive
        # Inversion only where U passes P(0) = exp(-mu): most customers buy nothing today.
        some = active & (u[None, :] >= np.exp(-mu))
        if some.any():
            wi, ci = np.nonzero(some)
            counts[wi, ci] = sps.poisson.ppf(u[ci], mu[wi, ci]).astype(np.int64)
        survive = (1.0 - self.p)[None, :] ** counts
        self.alive &= ~((counts > 0) & (v[None, :] >= survive))

        slots = counts.max(axis=0)
        owner = np.repeat(np.arange(n), slots)
        rank = np.arange(len(owner)) - np.repeat(np.cumsum(slots) - slots, slots)
        at = d + rng.random(len(owner))
        # in cents, as the store records them, so every world's revenue is the store's
        value = np.round(rng.gamma(self.params.spend_p, 1.0 / self.nu[owner]), 2)
        birth_value = np.round(rng.gamma(self.params.spend_p, 1.0 / self.nu[births]), 2)
        out = []
        for k in range(w):
            take = rank < counts[k, owner]
            cust = np.concatenate([births, owner[take]])
            when = np.concatenate([self.birth[births], at[take]])
            val = np.concatenate([birth_value, value[take]])
            first = np.concatenate([np.ones(len(births), bool), np.zeros(int(take.sum()), bool)])
            order = np.argsort(when, kind="stable")
            out.append(DayOrders(cust[order], when[order], val[order], first[order]))
        return out

    def split(self, worlds: int) -> None:
        """From now on, ``worlds`` worlds that start where the single one stands."""
        self.alive = np.repeat(self.alive[:1], worlds, axis=0)
