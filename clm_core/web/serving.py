"""Running the web app on uvicorn: in the foreground (``clm serve``) or in a background thread
(the demo, beside the sandbox)."""

from __future__ import annotations

import gc
import signal
import socket
import threading
import time
from typing import Any

from clm_core.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Created with ``IPPROTO_TCP`` so asyncio sets TCP_NODELAY on the
    connections it accepts: otherwise each keep-alive response can wait ~40 ms for a delayed
    ACK, which caps a provider's callback stream at a few dozen requests per second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def config(app: Any, **kwargs: Any) -> Any:
    import uvicorn

    # No uvicorn access log: it would print paths with tokens. The app logs them redacted.
    return uvicorn.Config(app, access_log=False, log_level="warning", server_header=False,
                          timeout_keep_alive=30, backlog=2048, **kwargs)


def serve_forever(app: Any, host: str, port: int, *, grace: int, **kwargs: Any) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, let requests in flight finish (up to
    ``grace`` seconds), run the app's shutdown and return."""
    import uvicorn

    server = uvicorn.Server(config(app, timeout_graceful_shutdown=grace, **kwargs))
    sock = bind(host, port)
    # uvicorn re-raises the signal it caught under the handlers it found once it has shut down.
    # With these no-op handlers that ends nothing, so a requested stop returns normally (the
    # command exits 0) rather than as "killed by SIGTERM".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # Everything built so far (imported libraries, the app, table metadata) lives as long as
    # the process: out of the collector's sight, a full collection scans only what requests
    # allocate (it was a twentieth of the CPU of storing provider callbacks, rescanning these).
    gc.freeze()
    server.run(sockets=[sock])


class BackgroundServer:
    """The app on uvicorn in a daemon thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        import uvicorn

        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(config(self.app))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="clm-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise ConfigError(f"the web service did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=15)
