"""Signed link tokens with key ids, so the signing key can rotate without breaking sent links.

A token is ``KID.PAYLOAD.MAC`` (each part URL-safe): ``KID`` names the key that signed it,
``PAYLOAD`` is base64url of compact JSON claims, ``MAC`` is a truncated HMAC-SHA256 over
``clm2.KID.PAYLOAD``. The newest key signs; every configured key verifies, so links already in
inboxes keep working after a rotation until their key is dropped from the configuration.

Claims: ``k`` purpose (``s`` subscription: unsubscribe and preferences; ``c`` click), ``ch``
channel, ``c`` the customer's external id, ``i`` issued at (epoch seconds, from the sending
run's clock), and for clicks ``m`` (the message's key) and ``u`` (the target URL, so the
redirect can never be pointed elsewhere). A token older than its purpose's maximum age is
refused like an altered one. The token id (``Claims.token_id``) is a digest of the payload:
it identifies the token in evidence without repeating it.

Configuration (``clm.toml``)::

    [tokens]
    key_id = "k2"                           # id of the key in secret_key_env (signs and verifies)
    previous = { k1 = "CLM_SECRET_KEY_K1" } # id -> environment variable: verify only
    max_age_days = 400                      # subscription links
    click_max_age_days = 90
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clm_core.errors import ConfigError, TokenError
from clm_core.settings import Settings, secret

PREFIX = b"clm2."
KID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
SUBSCRIPTION, CLICK = "s", "c"
MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _epoch(at: datetime) -> int:
    """Naive datetimes are UTC (the schema's convention)."""
    aware = at if at.tzinfo else at.replace(tzinfo=UTC)
    return int(aware.timestamp())


@dataclass(frozen=True)
class Claims:
    kind: str
    channel: str
    customer: str  # external id
    issued_at: datetime  # naive UTC
    key_id: str
    token_id: str
    message: str | None = None  # message idempotency key (clicks)
    url: str | None = None  # click target


@dataclass(frozen=True)
class Keyring:
    """The signing key (``key_id``) and the keys that still verify, by id."""

    key_id: str
    keys: dict[str, bytes]
    max_age: dict[str, timedelta] = field(default_factory=lambda: {
        SUBSCRIPTION: timedelta(days=400), CLICK: timedelta(days=90)})

    def __post_init__(self) -> None:
        for kid in self.keys:
            if not KID.match(kid):
                raise ConfigError(f"[tokens] key id {kid!r} must be 1-16 letters, digits, - or _")
        if self.key_id not in self.keys:
            raise ConfigError(f"[tokens] key_id {self.key_id!r} has no key")

    @classmethod
    def single(cls, key: bytes, key_id: str = "k1") -> Keyring:
        return cls(key_id, {key_id: key})

    @property
    def signing_key(self) -> bytes:
        return self.keys[self.key_id]

    def _mac(self, kid: str, payload: str) -> bytes:
        msg = PREFIX + kid.encode() + b"." + payload.encode()
        return hmac.new(self.keys[kid], msg, hashlib.sha256).digest()[:MAC_BYTES]

    def sign(self, kind: str, channel: str, customer: str, issued_at: datetime, *,
             message: str | None = None, url: str | None = None) -> str:
        claims: dict[str, Any] = {"k": kind, "ch": channel, "c": customer, "i": _epoch(issued_at)}
        if message is not None:
            claims["m"] = message
        if url is not None:
            claims["u"] = url
        payload = _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{self.key_id}.{payload}.{_b64(self._mac(self.key_id, payload))}"

    def verify(self, token: str, kind: str, now: datetime) -> Claims:
        """The claims of a token of purpose ``kind``; TokenError (saying only why, never the
        token) when it is malformed, altered, foreign, of another purpose or expired."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 4096:
            raise TokenError("the link is malformed")
        kid, payload, mac = parts
        if kid not in self.keys:
            raise TokenError("the link was signed with a key this service does not hold")
        try:
            given = _unb64(mac)
        except ValueError:
            raise TokenError("the link is malformed") from None
        if not hmac.compare_digest(given, self._mac(kid, payload)):
            raise TokenError("the link's signature does not match")
        try:
            claims = json.loads(_unb64(payload))
            issued = datetime.fromtimestamp(int(claims["i"]), UTC).replace(tzinfo=None)
            got_kind, channel, customer = str(claims["k"]), str(claims["ch"]), str(claims["c"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("the link's content is malformed") from None
        if got_kind != kind:
            raise TokenError("the link is not meant for this page")
        if now - issued > self.max_age.get(kind, timedelta(days=400)):
            raise TokenError("the link has expired")
        token_id = _b64(hashlib.sha256(payload.encode()).digest()[:9])
        return Claims(got_kind, channel, customer, issued, kid, token_id,
                      claims.get("m"), claims.get("u"))


def load_keyring(settings: Settings, env: dict[str, str] | None = None) -> Keyring:
    """The keyring from ``[tokens]`` and the secrets it names (never from the file itself)."""
    section = settings.section("tokens")
    unknown = set(section) - {"key_id", "previous", "max_age_days", "click_max_age_days"}
    if unknown:
        raise ConfigError(f"[tokens]: unknown keys {', '.join(sorted(unknown))}; valid: key_id, "
                          "previous, max_age_days, click_max_age_days")
    key_id = str(section.get("key_id", "k1"))
    keys = {key_id: secret(settings.secret_key_env, env).encode()}
    previous = section.get("previous", {})
    if not isinstance(previous, dict):
        raise ConfigError("[tokens] previous must be a table of key id = environment variable")
    for kid, var in previous.items():
        keys[str(kid)] = secret(str(var), env).encode()
    try:
        max_age = {SUBSCRIPTION: timedelta(days=float(section.get("max_age_days", 400))),
                   CLICK: timedelta(days=float(section.get("click_max_age_days", 90)))}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[tokens] max_age_days: {exc}") from exc
    return Keyring(key_id, keys, max_age)


CSRF_MAX_AGE = timedelta(hours=2)


def csrf_token(keyring: Keyring, token_id: str, now: datetime) -> str:
    """A form token bound to the page's link token and a time, signed with the current key:
    a form posted from another site, or kept for hours, is refused. Stateless: no cookie."""
    at = str(_epoch(now))
    msg = f"csrf.{token_id}.{at}".encode()
    mac = hmac.new(keyring.signing_key, msg, hashlib.sha256).digest()[:MAC_BYTES]
    return f"{keyring.key_id}.{at}.{_b64(mac)}"


def check_csrf(keyring: Keyring, value: str, token_id: str, now: datetime) -> bool:
    try:
        kid, at, mac = value.split(".")
        issued = datetime.fromtimestamp(int(at), UTC).replace(tzinfo=None)
        given = _unb64(mac)
    except (ValueError, OverflowError, OSError):
        return False
    if kid not in keyring.keys or not timedelta(minutes=-5) <= now - issued <= CSRF_MAX_AGE:
        return False
    msg = f"csrf.{token_id}.{at}".encode()
    return hmac.compare_digest(given, hmac.new(keyring.keys[kid], msg, hashlib.sha256)
                               .digest()[:MAC_BYTES])
