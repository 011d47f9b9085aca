"""Unsubscribe and preferences links in messages, and the RFC 8058 one-click headers.

The links carry a subscription token (``clm_core.consent.tokens``: signed with a key id, so
keys rotate without breaking links already sent) and point at ``public_base_url``, where
``clm serve`` answers them (``clm_core.web.unsubscribe``).
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.settings import Settings, secret


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


def subscription_links(keyring: Keyring, base_url: str, channel: str, customer: str,
                       issued_at: datetime) -> dict[str, str]:
    """``unsubscribe`` (``/u/TOKEN``) and ``preferences`` (``/p/TOKEN``) for one customer and
    channel; ``issued_at`` is the sending run's clock (tokens expire relative to it)."""
    token = keyring.sign(SUBSCRIPTION, channel, customer, issued_at)
    base = base_url.rstrip("/")
    return {"unsubscribe": f"{base}/u/{token}", "preferences": f"{base}/p/{token}"}


def one_click_headers(url: str) -> dict[str, str]:
    """``List-Unsubscribe`` with one HTTPS URI and the RFC 8058 one-click marker."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
