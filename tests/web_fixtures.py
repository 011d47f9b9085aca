"""Serve an ASGI app through uvicorn in a background thread, for tests over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from clm_core.web.serving import BackgroundServer


@contextmanager
def serving(app: Any) -> Iterator[str]:
    server = BackgroundServer(app).start()
    try:
        yield server.url
    finally:
        server.stop()
