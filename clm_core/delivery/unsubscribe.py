"""Signed unsubscribe tokens and the RFC 8058 one-click headers.

A token is ``base64url(payload).base64url(HMAC-SHA256(key, payload))`` where the payload names
the channel and the customer's external id. It carries no expiry: an unsubscribe link must keep
working. Altering any byte, or signing with another key, fails verification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from clm_core.errors import TokenError
from clm_core.settings import Settings, secret

VERSION = "u1"


@dataclass(frozen=True)
class UnsubscribeClaim:
    channel: str
    customer: str  # external id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, VERSION.encode() + b"." + payload, hashlib.sha256).digest()[:20]


def key_file(settings: Settings) -> Path:
    """Where a project keeps its generated signing key (git-ignored, mode 0600)."""
    return settings.project_dir / ".clm" / "secret-key"


def signing_key(settings: Settings) -> bytes:
    """The HMAC key: the environment variable named by ``secret_key_env`` (or its Prefect
    Secret block), else the project's generated key file. One key for every command of a
    project, so links signed by ``clm demo`` verify in ``clm run``, ``clm dispatch`` and the
    web service."""
    return secret(settings.secret_key_env, file=key_file(settings)).encode()


def ensure_key_file(settings: Settings) -> Path | None:
    """Generate the project's key file unless a key is already configured; returns the file
    when the project's key is the one in use (None when the environment provides it)."""
    if os.environ.get(settings.secret_key_env):
        return None
    path = key_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with owner-only permissions from the start, not chmod-ed afterwards.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32))
    return path


def make_token(key: bytes, channel: str, customer: str) -> str:
    payload = f"{channel}:{customer}".encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify_token(key: bytes, token: str) -> UnsubscribeClaim:
    """The claim in ``token``; TokenError if it is malformed, altered or signed with another key."""
    try:
        body, sig = token.split(".")
        payload, mac = _unb64(body), _unb64(sig)
    except ValueError:
        raise TokenError("unsubscribe token is malformed") from None
    if not hmac.compare_digest(mac, _mac(key, payload)):
        raise TokenError("unsubscribe token signature does not match")
    channel, sep, customer = payload.decode("utf-8", "replace").partition(":")
    if not sep or not customer:
        raise TokenError("unsubscribe token payload is malformed")
    return UnsubscribeClaim(channel, customer)


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}"


def one_click_headers(url: str) -> dict[str, str]:
    """``List-Unsubscribe`` with one HTTPS URI and the RFC 8058 one-click marker."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
