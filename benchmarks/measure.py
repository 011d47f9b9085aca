"""What every benchmark measures the same way: a step in a fresh process, its wall time, CPU
time and peak memory, printed on one line."""

from __future__ import annotations

import multiprocessing as mp
import resource
from typing import Any


def peak_mb() -> float:
    """Peak resident memory of this process since it started (VmHWM; ``ru_maxrss`` would carry
    over the parent's peak through fork and exec)."""
    with open("/proc/self/status") as fh:
        for row in fh:
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU seconds of this process (database work included: SQLite runs in-process)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_seconds_with_children() -> float:
    """CPU seconds of this process and of the children it has waited for (work it handed to
    a second process is still its cost)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measured(target: Any, *args: Any, timeout: float = 1800) -> dict[str, Any]:
    """Run ``target`` in a fresh process; its wall time and peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return {"seconds": float("inf"), "cpu": float("nan"), "peak_mb": float("nan"),
                "error": f"over {timeout:.0f} s"}
    if queue.empty():
        return {"seconds": float("nan"), "cpu": float("nan"), "peak_mb": float("nan"),
                "error": f"exit code {proc.exitcode}"}
    return queue.get()


def line(name: str, r: dict[str, Any]) -> str:
    steps = ", ".join(f"{k} {v:.1f}" for k, v in r.get("steps", {}).items())
    err = f"  [{r['error']}]" if "error" in r else ""
    return (
        f"{name:<22} {r['seconds']:>7.1f} s wall {r['cpu']:>7.1f} s CPU {r['peak_mb']:>7.0f} MB peak"  # noqa: E501  (prose or a URL: clearer whole)
        f"   ({steps}){err}"
    )


