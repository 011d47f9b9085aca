"""``clm serve`` in its own process for tests: a free port, wait for /healthz, SIGTERM at the end."""  # noqa: E501  (prose or a URL: clearer whole)

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def clm_serve(root: Path, env: dict[str, str] | None = None,
              port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) of ``clm --project ROOT serve``; stopped with SIGTERM afterwards,
    and the test fails if it does not shut down cleanly."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log = (root / "serve.log").open("wb")  # a file, not a pipe: a full pipe would block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "clm", "--project", str(root), "serve", "--port", str(port)],
        env={**os.environ, "CLM_PUBLIC_BASE_URL": base, **(env or {})},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError("clm serve exited: "
                                     + (root / "serve.log").read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("clm serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
