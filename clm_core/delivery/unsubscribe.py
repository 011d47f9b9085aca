"""Unsubscribe and preferences links in messages, and the RFC 8058 one-click headers.

The links carry a subscription token (``clm_core.consent.tokens``: signed with a key id, so
keys rotate without breaking links already sent) and point at ``public_base_url``, where
``clm serve`` answers them (``clm_core.web.unsubscribe``).
"""

from __future__ import annotations

from datetime import datetime

from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.settings import Settings, secret


def signing_key(settings: Settings) -> bytes:
    """The current HMAC key, from the environment variable named by ``secret_key_env``."""
    return secret(settings.secret_key_env).encode()


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
