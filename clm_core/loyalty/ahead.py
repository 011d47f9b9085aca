"""The rest of an evaluation (reversals, redemptions, expiries, rewards, statuses) computed in
a second process while the first one writes the earning rows.

On a first evaluation the earn and bonus rows are three quarters of the ledger and their keys
sort before every later row's, so their write (SQLite has one writer, and the write is most of
the run) need not wait for the rest of the evaluation. A forked process computes the rest from
the same inputs (shared by the fork, neither copied nor pickled) and sends back only what it
found; the database is written by the first process alone, in its one transaction. It is the
same computation on the same data, so the result does not depend on where it ran
(``tests/test_loyalty_store.py`` compares both ways). Anything unexpected (the process died, or
sent something else) makes the evaluation compute the rest inline.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from typing import Any

import pandas as pd

from clm_core.loyalty.ledger import Evaluation, Inputs, settle
from clm_core.loyalty.spec import Programme

# Below this many earning rows their write is over before a second process would have paid
# for itself (the fork, and the pickling of what it sends back).
MIN_ROWS = 200_000


def usable(earning_rows: int) -> bool:
    """Whether settling ahead is worth it and safe here: enough rows to write meanwhile, a
    platform that forks, no other thread in this process (a fork copies their locks), and not
    a daemonic process (which may not have children)."""
    return (earning_rows >= MIN_ROWS and "fork" in mp.get_all_start_methods()
            and threading.active_count() == 1 and not mp.current_process().daemon)


def _settle(prog: Programme, inp: Inputs, now: pd.Timestamp, earned: pd.DataFrame,
            out: Any) -> None:
    """The second process: the rest of the evaluation and its CPU seconds, or why it failed.
    It never touches the database connection it inherited."""
    try:
        start = time.process_time()
        ev = settle(prog, inp, now, earned)
        out.send((ev, time.process_time() - start))
    except BaseException as exc:  # noqa: BLE001  (the evaluation settles inline instead)
        out.send(f"{type(exc).__name__}: {exc}")
    finally:
        out.close()


class SettleAhead:
    """``settle`` of an evaluation in a forked process, started at once."""

    def __init__(self, prog: Programme, inp: Inputs, now: pd.Timestamp, earned: pd.DataFrame):
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_settle, args=(prog, inp, now, earned, send),
                                 daemon=True)
        self._proc.start()
        send.close()  # the child holds the only writing end: its exit ends the wait below
        self._args = (prog, inp, now, earned)
        self.cpu = 0.0  # CPU seconds the second process spent settling
        self.failed: str | None = None

    def result(self) -> Evaluation:
        """The rest of the evaluation: from the second process, or computed here when it
        could not give it."""
        try:
            item: object = self._recv.recv()
        except (EOFError, OSError):
            item = "the second process ended without a result"
        finally:
            self._recv.close()
            self._proc.join()
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Evaluation):
            self.cpu = float(item[1])
            return item[0]
        self.failed = str(item)
        return settle(*self._args)
