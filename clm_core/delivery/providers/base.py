"""What every HTTP adapter shares: a pooled ``httpx.AsyncClient``, a concurrency cap, a rate
limit, transport errors and HTTP statuses mapped to outcomes, and secret redaction."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from clm_core.delivery.model import Gate, Outbound, Outcome, SendResult
from clm_core.errors import ThrottleError
from clm_core.settings import redact as redact_known


@dataclass(frozen=True)
class ProviderConfig:
    """One provider's resolved settings. ``secrets`` hold credential values (never logged)."""

    name: str
    kind: str
    base_url: str
    timeout: float = 10.0
    connect_timeout: float = 5.0
    concurrency: int = 16
    rate_per_second: float = 0.0  # 0: unlimited
    idempotent: bool = False
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


class RateLimiter:
    """Token bucket: at most ``rate`` acquisitions per second, bursts up to one second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, n: int = 1) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= n or self.tokens >= self.capacity:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``
    (epoch seconds), whichever the provider sent."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


def redact(text: str, secrets: dict[str, str]) -> str:
    """``text`` with every known secret and this provider's credentials replaced by ``***``,
    for messages that reach logs or the database."""
    text = redact_known(text)
    for value in secrets.values():
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


async def pass_gate(gate: Gate | None, keys: list[str], provider: str) -> list[SendResult]:
    """Take one slot of the shared rate limit for one request. Without a slot nothing is sent:
    the messages come back transient and not ambiguous, with ``halt`` (every later request
    would be refused the same way), so they wait for the next run and keep their attempts."""
    if gate is None:
        return []
    try:
        await gate()
    except ThrottleError as exc:
        text = redact_known(f"{provider}: {exc}")[:500]
        return [SendResult(k, Outcome.TRANSIENT, code="rate_limit", message=text, halt=True)
                for k in keys]
    return []


# httpx's client logs every request here; sends that skip the client log the same line.
_http_log = logging.getLogger("httpx")

# Raised before any byte reached the provider: resending is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def basic_auth(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic auth, as httpx builds it (UTF-8, base64)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context (CA bundle loaded) shared by every provider's connections in this
    process. httpx builds one per client or transport otherwise: loading the bundle costs
    tens of milliseconds each time, paid by every provider of every dispatch run."""
    return httpx.create_ssl_context()


def proxied() -> bool:
    """Whether the environment names an HTTP proxy (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, or the system's settings): then requests go through httpx's client, which
    applies them (with ``NO_PROXY``)."""
    return bool(urllib.request.getproxies().keys() & {"http", "https", "all"})


class HttpProvider:
    """Base of the HTTP adapters. Subclasses implement ``send_one`` (or ``send`` for batches).

    Sends go straight to an httpx transport, one per concurrency slot, each holding one
    keep-alive connection. Why: without provider batching every message is a request, and at
    a millisecond or so per request httpx's client layer (merging the base URL and headers,
    the auth and redirect flows, cookies) cost a third of the client CPU of a request, and
    one pool shared by the slots checked every idle connection (a ``getpeername`` and a
    ``poll`` each) whenever any request started or finished: a wave of requests starting
    together paid that several times a message. A slot's transport checks only its own
    connection. Wire requests are the same: the client's headers (defaults, user agent,
    credentials) and timeouts, the URL the client would build, httpx's body encoding and its
    mapping of transport errors. ``self.client`` stays for other calls (message lists) and
    carries the sends when the environment sets a proxy (``proxied``)."""

    kind = "http"
    max_batch = 1

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.name = config.name
        self.idempotent = config.idempotent
        self.concurrency = config.concurrency
        self._timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        self.client = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=config.concurrency,
                                max_keepalive_connections=config.concurrency),
            transport=transport,
            headers={"User-Agent": "clm/0.1"},
            verify=tls_context(),
        )
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}
        self._via_client = transport is None and proxied()
        # One transport per slot (a given transport, as in tests, serves every slot). A slot
        # is taken under the semaphore, so the free list is never empty when popped.
        self._own: list[httpx.AsyncBaseTransport] = []
        if transport is None and not self._via_client:
            self._own = [httpx.AsyncHTTPTransport(verify=tls_context(), limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1))
                for _ in range(max(1, config.concurrency))]
        self._free = list(self._own) if transport is None else [transport] * max(
            1, config.concurrency)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._bucket = RateLimiter(config.rate_per_second)
        self.gate: Gate | None = None

    # --- hooks ------------------------------------------------------------------------------

    async def send_one(self, message: Outbound) -> SendResult:
        raise NotImplementedError

    async def send(self, batch: list[Outbound]) -> list[SendResult]:
        if len(batch) == 1:  # the common wave chunk: no task of its own
            return [await self.send_one(batch[0])]
        return list(await asyncio.gather(*(self.send_one(m) for m in batch)))

    async def aclose(self) -> None:
        await self.client.aclose()
        for transport in self._own:
            await transport.aclose()

    # --- helpers ----------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self.config.secrets)

    async def request(self, keys: list[str], method: str, path: str, *,
                      headers: dict[str, str] | None = None, data: dict[str, Any] | None = None,
                      json: Any = None, content: bytes | None = None
                      ) -> httpx.Response | list[SendResult]:
        """One HTTP call (``path`` relative to the base URL) under the concurrency cap and rate
        limit; the response is read in full. Transport errors come back as transient results
        for ``keys`` (ambiguous when the request may have been received)."""
        async with self._slots:
            refused = await pass_gate(self.gate, keys, self.name)
            if refused:
                return refused
            await self._bucket.acquire()
            try:
                if self._via_client:
                    return await self.client.request(method, path, headers=headers, data=data,
                                                     json=json, content=content)
                return await self._send(method, path, headers, data, json, content)
            except _NOT_SENT as exc:
                return self._transport_failure(keys, exc, ambiguous=False)
            except httpx.HTTPError as exc:
                return self._transport_failure(keys, exc, ambiguous=True)

    async def _send(self, method: str, path: str, headers: dict[str, str] | None,
                    data: dict[str, Any] | None, json: Any, content: bytes | None
                    ) -> httpx.Response:
        url = self._urls.get(path)
        if url is None:  # the URL the client builds (base URL joined with the path), once
            url = self._urls[path] = self.client.build_request(method, path).url
        merged = self.client.headers.copy()
        if headers:
            merged.update(headers)
        request = httpx.Request(method, url, headers=merged, data=data, json=json,
                                content=content, extensions=self._extensions)
        transport = self._free.pop()
        try:
            response = await transport.handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            finally:
                await response.aclose()
        finally:
            self._free.append(transport)
        if _http_log.isEnabledFor(logging.INFO):
            _http_log.info('HTTP Request: %s %s "%s %d %s"', method, url, response.http_version,
                           response.status_code, response.reason_phrase)
        return response

    def _transport_failure(
        self, keys: list[str], exc: Exception, *, ambiguous: bool
    ) -> list[SendResult]:
        code = type(exc).__name__
        text = self.redact(f"{self.name}: {code}" + (f": {exc}" if str(exc) else ""))
        return [SendResult(k, Outcome.TRANSIENT, code=code.lower(), message=text[:500],
                           ambiguous=ambiguous) for k in keys]

    def classify_status(self, key: str, response: httpx.Response, code: str | None = None,
                        message: str | None = None) -> SendResult:
        """The generic rule for a failed HTTP response: 429 and 5xx are transient (honouring
        Retry-After / X-RateLimit-Reset), any other status is permanent."""
        status = response.status_code
        text = self.redact(f"{self.name}: HTTP {status}" + (f": {message}" if message else ""))[
            :500
        ]
        if status == 429 or status >= 500:
            wait = retry_after_seconds(response.headers)
            return SendResult(key, Outcome.TRANSIENT, code=code or str(status), message=text,
                              retry_after=wait)
        return SendResult(key, Outcome.PERMANENT, code=code or str(status), message=text)

    @staticmethod
    def json_or_empty(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
