"""Stable per-customer random draws (holdouts, A/B splits) from a hash of id and salt.

The same customer id and salt always give the same number in [0, 1), on every machine and run,
so draws need no storage to stay sticky. Vectorised splitmix64 over the id array.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _salt(salt: str) -> np.uint64:
    return np.uint64(
        int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little")
    )


def uniform(ids: np.ndarray, salt: str) -> np.ndarray:
    """A number in [0, 1) per id, fixed by (id, salt)."""
    with np.errstate(over="ignore"):
        x = np.asarray(ids, dtype=np.int64).astype(np.uint64) * _GOLDEN + _salt(salt)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def pick(ids: np.ndarray, salt: str, weights: list[float]) -> np.ndarray:
    """Index of the weighted choice per id (sticky)."""
    edges = np.cumsum(weights) / float(sum(weights))
    return np.minimum(np.searchsorted(edges, uniform(ids, salt), side="right"), len(weights) - 1)
