"""A replay's scoring half, run a few steps ahead in a second process.

Scores, stages and fits depend on nothing the journeys decide (``clm_core.backtest.scoring``),
so a forked process walks the same steps with the same functions and hands each step's
``Scored`` to the replay through a bounded queue, while the replay plans the journeys of the
steps before. On a two-core machine the scoring and the weekly fits leave the replay's wall
time. The result does not depend on it: the second process runs the same computation on the
same input, and ``tests/test_backtest.py`` compares both ways.

Anything unexpected (the process died, a step for another day) makes the replay score inline
from then on: it replays the scoring half of the steps already taken (``catch_up``), which
rebuilds the same state, then goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from clm_core.backtest.scoring import Scored, Scoring
from clm_core.forking import can_fork

# Below this many steps the second process's start costs more than it saves.
MIN_STEPS = 8
# Steps the second process may run ahead: enough to absorb a slow fit, few enough that the
# queued views (a few MB each) stay small.
DEPTH = 8
# How long the replay waits for one step before it stops relying on the second process, and
# how often it checks meanwhile that the process is still there.
WAIT_SECONDS = 600.0
POLL_SECONDS = 0.5


def _walk(scoring: Scoring, steps: Sequence[tuple[date, datetime]], out: Any) -> None:
    """The second process: every step's scoring, in order."""
    try:
        for as_of, now in steps:
            out.put(scoring.step(as_of, now))
    except BaseException as exc:  # noqa: BLE001  (the replay falls back to scoring inline)
        out.put(f"{type(exc).__name__}: {exc}")


def usable(steps: int) -> bool:
    """Whether scoring ahead is worth it (enough steps) and safe here (``forking.can_fork``)."""
    return steps >= MIN_STEPS and can_fork()


def catch_up(scoring: Scoring, done: Sequence[tuple[date, datetime]]) -> None:
    """Bring a fresh ``scoring`` to where the second process had been: the same steps, in
    order (their results were already used)."""
    for as_of, now in done:
        scoring.step(as_of, now)


class ScoringAhead:
    """The second process and its queue of scored steps, in the order the replay takes them."""

    def __init__(self, scoring: Scoring, steps: Sequence[tuple[date, datetime]]):
        # A fork shares the loaded history without pickling it or importing anything again;
        # ``usable`` refuses it in a process with other threads (a fork copies their locks).
        ctx = mp.get_context("fork")
        self._queue: Any = ctx.Queue(maxsize=DEPTH)
        self._proc = ctx.Process(target=_walk, args=(scoring, list(steps), self._queue),
                                 daemon=True)
        self._proc.start()
        self.failed: str | None = None

    def take(self, as_of: date) -> Scored | None:
        """The step scored for ``as_of``; None (and no more use of the second process) when
        it cannot give one."""
        if self.failed is not None:
            return None
        item: object = None
        waited = 0.0
        while item is None:
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                waited += POLL_SECONDS
                if not self._proc.is_alive():
                    item = "the scoring process ended"
                elif waited >= WAIT_SECONDS:
                    item = "no scored step arrived in time"
        if isinstance(item, Scored) and item.as_of == as_of:
            return item
        self.failed = (str(item) if not isinstance(item, Scored)
                       else f"a step scored for {item.as_of}, not {as_of}")
        self.close()
        return None

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)
        self._queue.close()
        # a child killed while writing leaves the queue's feeder thread of this process
        # waiting on a pipe no one reads: do not wait for it at exit
        self._queue.cancel_join_thread()
