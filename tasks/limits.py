"""Provider rate limits shared by every flow run and worker, as Prefect global concurrency
limits. ``clm limits`` creates them from ``[delivery]``; every request a dispatcher makes to a
provider with a rate takes one slot (``SharedRateLimit``), and a missing limit stops the
channel instead of running unthrottled.

How slots are taken, and why: Prefect 3.8.8 refuses a request for more slots than the limit
has (422) and never waits for it, so slots are taken in pieces of half the limit. Its decay is
computed at each update from the time since the previous one, rounded down, and a refused
request is an update too: polling it every few hundredths of a second loses most of the decay
(measured: 3.2 requests/s through ``rate_limit`` for a 5/s limit, one slot per call). So each
process paces its own requests for pieces at the rate (a little slower), which the server
then never has to refuse while this process is alone; other workers compete for the same
slots, and the server keeps the sum under the limit.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from clm_core.delivery.config import load_delivery_config
from clm_core.errors import ThrottleError
from clm_core.settings import Settings

API_RETRIES = 5  # tries after a 5xx or a transport error, a second more apart each time
PACE_MARGIN = 1.1  # pieces are asked for this much slower than the rate: jitter never refused
WAIT_POLL = 0.02  # seconds past the asking time at which a waiting request looks again


def limit_name(provider: str) -> str:
    return f"clm-rate-{provider}"


def limit_slots(rate: float) -> int:
    """A limit's slots: one second of requests (its burst)."""
    return max(1, int(rate))


def wanted_limits(settings: Settings) -> dict[str, tuple[int, float]]:
    """name -> (slots, slots freed per second) for every configured provider with a rate."""
    out: dict[str, tuple[int, float]] = {}
    for cfg in load_delivery_config(settings).channels.values():
        rate = float(cfg.rate_per_second or 0)
        if rate > 0:
            out[limit_name(cfg.name)] = (limit_slots(rate), rate)
    return out


def apply_limits(settings: Settings) -> list[tuple[str, int, float]]:
    done = []
    with get_client(sync_client=True) as client:
        for name, (limit, decay) in wanted_limits(settings).items():
            try:
                client.read_global_concurrency_limit_by_name(name)
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                    limit=limit, slot_decay_per_second=decay, active=True))
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=limit, slot_decay_per_second=decay, active=True))
            done.append((name, limit, decay))
    return done


class SharedRateLimit:
    """One provider's global rate limit as this process takes it: pieces of half the limit's
    slots, asked for at most at the limit's rate, handed out one per request. Shared by every
    dispatcher in the process (chunks run in threads, each with its own event loop and
    client); a piece's unused slots lapse after one pacing interval.

    One request at a time asks the server for the next piece; the others wait for it and
    share its slots. (When each waiting request asked for a piece of its own, each piece
    served one request and the rest of it lapsed: 2 requests/s got through a 5/s limit.)"""

    def __init__(self, name: str, slots: int, rate: float):
        self.name = name
        self.piece = max(1, math.ceil(slots / 2))
        self.interval = self.piece / rate * PACE_MARGIN
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time of the next piece this process may ask for
        self._free = 0
        self._free_until = 0.0
        self._fetching = False  # a request of this process is asking for the next piece
        self._fetch_at = 0.0  # when it asks

    def _step(self) -> tuple[str, float]:
        """("taken", 0) when a slot of the current piece was free (taken now); ("fetch", s)
        when this caller is to ask for the next piece in s seconds; ("wait", s) when another
        caller is asking for it: look again in s seconds."""
        with self._lock:
            now = time.monotonic()
            if self._free and now < self._free_until:
                self._free -= 1
                return "taken", 0.0
            if self._fetching:
                return "wait", max(self._fetch_at - now, 0.0) + WAIT_POLL
            self._fetching = True
            self._fetch_at = max(now, self._next)
            self._next = self._fetch_at + self.interval
            return "fetch", self._fetch_at - now

    def _got_piece(self) -> None:
        with self._lock:
            self._free = self.piece - 1  # one is this request's
            self._free_until = time.monotonic() + self.interval
            self._fetching = False

    def _gave_up(self) -> None:
        with self._lock:
            self._fetching = False

    async def take(self, client: PrefectClient) -> None:
        """One slot for one request; ThrottleError when the limit cannot be used at all."""
        troubles = 0
        while True:
            kind, wait = self._step()
            if kind == "taken":
                return
            if kind == "wait":
                await asyncio.sleep(wait)
                continue
            try:
                await asyncio.sleep(wait)
                response = await client.increment_concurrency_slots(
                    names=[self.name], slots=self.piece, mode="rate_limit")
            except httpx.HTTPError as exc:
                self._gave_up()
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 0
                if status and status != 423 and status < 500:
                    raise ThrottleError(
                        f"rate limit {self.name!r} refused (HTTP {status})"
                    ) from exc
                if status != 423:  # a busy or unreachable server: a few tries, then stop
                    troubles += 1
                    if troubles > API_RETRIES:
                        raise ThrottleError(f"rate limit {self.name!r}: the Prefect API did not "
                                            f"answer ({status or type(exc).__name__})") from exc
                    await asyncio.sleep(float(troubles))
                # 423: another worker has the slots now; the next turn is a pacing interval on
                continue
            except BaseException:  # cancelled while waiting its turn: let another caller ask
                self._gave_up()
                raise
            if not response.json():
                self._gave_up()
                raise ThrottleError(f"rate limit {self.name!r} does not exist on this Prefect "
                                    "server (run `clm limits`)")
            self._got_piece()
            return


_SHARED: dict[str, SharedRateLimit] = {}
_SHARED_LOCK = threading.Lock()


def shared_limit(name: str, slots: int, rate: float) -> SharedRateLimit:
    """This process's ``SharedRateLimit`` for the limit ``name``."""
    with _SHARED_LOCK:
        have = _SHARED.get(name)
        fresh = SharedRateLimit(name, slots, rate)
        if have is None or (have.piece, have.interval) != (fresh.piece, fresh.interval):
            have = _SHARED[name] = fresh
        return have
