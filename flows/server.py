"""A real ``prefect server`` on loopback, for the Dask runner and end-to-end UI checks.

Prefect's ephemeral API cannot serve Dask workers (they run in other processes), so those runs
need a started server. ``running_server`` starts one with its own home, waits for it to answer,
and stops it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": env.get("PREFECT_LOGGING_LEVEL", "WARNING")})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


@contextmanager
def running_server(port: int | None = None, home: Path | None = None,
                   timeout: float = 90.0) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1; yields the API URL."""
    port = port or free_port()
    home = home or Path(tempfile.mkdtemp(prefix="clm-prefect-server-"))
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "wb")
    api = f"http://127.0.0.1:{port}/api"
    # The UI asks this URL for its data; by default it would ask port 4200.
    env = server_env(home) | {"PREFECT_UI_API_URL": api}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited ({proc.returncode}); see {home / 'server.log'}"
                )
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not answer in {timeout:.0f}s; see {home / 'server.log'}"
                )
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
