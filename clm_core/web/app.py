"""The CLM web service: one Starlette app composed of route lists from area modules.

Each area (``clm_core/web/<area>.py``) exposes ``routes(web: Web) -> list[BaseRoute]``; its
handlers are thin (parse, verify, call a plain function over the database, answer). The app adds
what every route needs:

- ``GET /healthz``: 200 with ``{"status": "ok"}`` when the database answers, 503 otherwise;
- a request body limit (``[web] max_body_bytes``, default 1 MiB): 413 before the handler reads
  more, whether the client sent ``Content-Length`` or streamed;
- one structured access-log line per request (logger ``clm.web.access``, JSON) in which link
  tokens, signatures and configured secrets are replaced by ``<redacted>``.

Handlers answer only after their transaction committed, so a crash between the two makes the
sender retry instead of losing what it sent (the evidence key makes the retry a no-op).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clm_core.consent.tokens import Keyring, load_keyring
from clm_core.db.engine import tune_writer
from clm_core.delivery.outbox import writer_engine
from clm_core.errors import ConfigError
from clm_core.runs import utcnow
from clm_core.settings import Settings, redact

access_log = logging.getLogger("clm.web.access")

# Area modules whose routes make up the app, in order.
AREAS = ["unsubscribe", "clicks", "hooks"]
DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Web:
    """What route modules get: settings, the database and the token keyring.

    ``engine`` reads; ``writer`` writes (on SQLite each of its transactions is ``BEGIN
    IMMEDIATE``, so concurrent requests queue for the lock instead of failing to upgrade it).
    ``clock`` is the time of requests: a click or an unsubscribe happens when it is received.
    """

    settings: Settings
    engine: Engine
    writer: Engine
    keyring: Keyring
    max_body_bytes: int
    clock: Callable[[], datetime] = utcnow

    @property
    def base_url(self) -> str:
        return self.settings.public_base_url.rstrip("/")


def web_section(settings: Settings) -> dict[str, Any]:
    return settings.section("web")


def create_app(settings: Settings, engine: Engine, *, keyring: Keyring | None = None,
               areas: list[str] | None = None,
               clock: Callable[[], datetime] | None = None) -> Starlette:
    """The ASGI app over ``engine``; ``areas`` defaults to every module in ``AREAS``."""
    section = web_section(settings)
    try:
        max_body = int(section.get("max_body_bytes", DEFAULT_MAX_BODY))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[web] max_body_bytes: {exc}") from exc
    writer = writer_engine(engine)
    if writer is not engine:  # SQLite: the web service's own writer connections
        tune_writer(writer, checkpoint_pages=10_000, cache_mib=64)
    web = Web(settings, engine, writer, keyring or load_keyring(settings), max_body,
              **({"clock": clock} if clock else {}))
    routes: list[BaseRoute] = [Route("/healthz", _health(engine), methods=["GET", "HEAD"])]
    for area in areas if areas is not None else AREAS:
        routes += importlib.import_module(f"clm_core.web.{area}").routes(web)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        if writer is not engine:
            writer.dispose()
        engine.dispose()  # graceful shutdown: uvicorn has drained in-flight requests

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = web
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(AccessLog)
    return app


def _health(engine: Engine) -> Any:
    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    async def health(_request: Request) -> Response:
        try:
            await run_in_threadpool(ping)
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return health


# --- middleware ------------------------------------------------------------------------------

class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# Path segments that look like tokens (long base64url runs, possibly dotted) and query values of
# parameters that carry credentials.
_TOKENISH = re.compile(
    r"[A-Za-z0-9_-]{2,16}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|[A-Za-z0-9_=-]{24,}"
)
_SECRET_PARAMS = re.compile(r"(?i)((?:token|signature|sig|key|secret|password|auth)[^=&]*=)[^&]*")


def redact_target(path: str, query: str = "") -> str:
    """The request target as logged: tokens and secrets replaced by ``<redacted>``."""
    clean = "/".join(_TOKENISH.sub("<redacted>", part) for part in path.split("/"))
    if query:
        clean += "?" + _SECRET_PARAMS.sub(r"\1<redacted>", query)
    return redact(clean)


class AccessLog:
    """One JSON line per request: method, redacted target, status, duration, bytes out.

    No client address or user agent: they are personal data the log does not need."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def logging_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": redact_target(
                            scope["path"], scope.get("query_string", b"").decode("latin-1")
                        ),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "bytes": sent,
                    }
                )
            )
