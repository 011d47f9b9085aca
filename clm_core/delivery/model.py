"""What goes to a provider and what comes back: the one small interface every adapter shares.

An adapter takes a batch of :class:`Outbound` and returns one :class:`SendResult` per item, in
order. It never raises for a per-message outcome: every response (and every transport error) is
classified as sent, transient (retry later), permanent, or rejected (opted out / invalid: the
address gets suppressed). ``ambiguous`` marks a transient failure after which the provider may
or may not have acted (a read timeout, a dropped connection mid-response): the dispatcher resends
it only to a provider that honours an idempotency key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

# Awaited before every request a provider makes (one slot of a shared rate limit); raises
# ``clm_core.errors.ThrottleError`` when no slot can be had, and then nothing is sent.
Gate = Callable[[], Awaitable[None]]


class Outcome(str, Enum):
    """How one message fared at the provider."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    REJECTED = "rejected"  # opted out or invalid recipient: suppress the address


@dataclass
class Outbound:
    """One message ready to send. ``key`` is the outbox idempotency key."""

    key: str
    to: str
    channel: str  # email | sms | coupon | webhook
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    template: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # template params, coupon spec, payload


@dataclass
class SendResult:
    key: str
    outcome: Outcome
    provider_message_id: str | None = None
    code: str | None = None  # provider's error or status code, e.g. "429", "21610", "isv.X"
    message: str | None = None  # short, secret-free description
    retry_after: float | None = None  # seconds, when the provider said
    ambiguous: bool = False  # the provider may have acted although we saw no success
    halt: bool = False  # the provider refuses all sends for now (balance, daily limit)
    suppress: str | None = None  # for REJECTED: "opted_out" or "invalid"
    data: dict[str, Any] = field(default_factory=dict)  # e.g. coupon id

    @classmethod
    def sent(cls, key: str, provider_message_id: str | None, **data: Any) -> "SendResult":
        return cls(key, Outcome.SENT, provider_message_id=provider_message_id, data=data)


class Provider(Protocol):
    """A provider adapter. ``idempotent`` means it deduplicates on our key, so a message whose
    outcome is unknown may be resent safely."""

    name: str
    idempotent: bool
    max_batch: int  # messages per request
    concurrency: int  # requests in flight at once
    gate: Gate | None  # awaited before each request: a shared rate limit across workers

    async def send(self, batch: list[Outbound]) -> list[SendResult]: ...

    async def aclose(self) -> None: ...
