"""Parts of a first evaluation computed in a second process while the first one works on.

A first evaluation reads millions of orders and writes millions of ledger rows; the write goes
through one connection (SQLite has one writer) in one transaction, and is most of the run. Two
parts of the work need not wait for it or hold it up:

- the upper half of the orders (by id), read by the second process over its own connection
  while the first reads the lower half: the first process took the write lock before, so no
  one can commit between the two reads and both see the same orders;
- the rest of the evaluation after the earning rows (reversals, redemptions, expiries,
  rewards, statuses), computed while the earning rows, three quarters of the ledger and with
  keys that sort before every later row's, are written.

The second process is forked: it shares the inputs without copying or pickling them, and sends
back only its result. The database is written by the first process alone. Each part is the
same computation on the same data either way, so the result does not depend on where it ran
(``tests/test_loyalty_store.py`` compares both ways); anything unexpected (the process died, or
sent something else) leaves the caller to do the part itself.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from clm_core.forking import can_fork

T = TypeVar("T")

# Below this many earning rows their write is over before a second process would have paid
# for itself (the fork, and the pickling of what it sends back).
MIN_ROWS = 200_000


def usable() -> bool:
    """Whether a second process can be forked here safely (``forking.can_fork``)."""
    return can_fork()


def _run(fn: Callable[..., object], args: tuple[object, ...], out: Any) -> None:
    """The second process: ``fn(*args)`` and its CPU seconds, or why it failed. It never
    touches a database connection it inherited."""
    try:
        start = time.process_time()
        value = fn(*args)
        out.send(("done", value, time.process_time() - start))
    except BaseException as exc:  # noqa: BLE001  (the caller does the part itself)
        out.send(("failed", f"{type(exc).__name__}: {exc}", 0.0))
    finally:
        out.close()


class Ahead(Generic[T]):
    """``fn(*args)`` in a forked process, started at once."""

    def __init__(self, fn: Callable[..., T], *args: object):
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_run, args=(fn, args, send), daemon=True)
        self._proc.start()
        send.close()  # the child holds the only writing end: its exit ends the wait below
        self.cpu = 0.0  # CPU seconds the second process spent on it
        self.failed: str | None = None

    def result(self) -> T | None:
        """What ``fn`` returned; None when the second process could not give it (``failed``
        says why)."""
        try:
            item: object = self._recv.recv()
        except (EOFError, OSError):
            item = None
        finally:
            self._recv.close()
            self._proc.join()
        if isinstance(item, tuple) and len(item) == 3 and item[0] == "done":
            self.cpu = float(item[2])
            return item[1]  # type: ignore[no-any-return]
        self.failed = str(item[1]) if isinstance(item, tuple) and len(item) == 3 \
            else "the second process ended without a result"
        return None

    def close(self) -> None:
        """End the second process if its result was not taken (the caller failed before it
        needed it): it would otherwise wait to send it for as long as this process lives."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._recv.close()
