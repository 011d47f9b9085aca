"""Whether this process may fork a helper process (the backtest's scoring ahead, a loyalty
first evaluation's second reader)."""

from __future__ import annotations

import multiprocessing as mp
import threading


def can_fork() -> bool:
    """A platform that forks, no other thread in this process (a fork copies their locks,
    which no one would ever release in the child), and not a daemonic process (which may not
    have children)."""
    return ("fork" in mp.get_all_start_methods() and threading.active_count() == 1
            and not mp.current_process().daemon)
