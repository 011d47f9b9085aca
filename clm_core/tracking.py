"""Click tracking: links in HTML emails rewritten to ``/c/{token}``, and clicks recorded.

Optional, per project or per journey (``clm.toml``)::

    [tracking]
    clicks = false                 # every marketing email
    click_journeys = ["winback"]   # or only these journeys
    bot_window_seconds = 10        # a click this soon after sending is a scanner's
    bot_user_agents = ["MyGateway"]  # more scanner patterns (case-insensitive substrings)

At render time every ``http(s)`` link of an ``<a href>`` is replaced by ``PUBLIC_BASE_URL/c/TOKEN``
where the token (``clm_core.consent.tokens``, purpose ``c``) carries the message's key and the
original URL: the redirect target is signed, so the service is no open redirect. The service's
own links (unsubscribe, preferences) and ``mailto:``/``tel:``/anchors are left alone.

A click becomes an ``events`` row: ``clicked`` when a person plausibly clicked, ``bot_click``
when a security scanner probably did (a known scanner user agent, no user agent, or within
``bot_window_seconds`` of sending, before a person could have opened the message). Journeys
see only ``clicked``, so scanners never count as engagement.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.consent.tokens import Claims
from clm_core.db import tables as t
from clm_core.delivery.outbox import retrying
from clm_core.errors import ConfigError
from clm_core.settings import Settings

# Mail security gateways and link scanners that fetch every link of a message.
SCANNER_AGENTS = (
    "barracuda", "mimecast", "proofpoint", "ppe-", "symantec", "messagelabs", "forcepoint",
    "trendmicro", "trend micro", "sophos", "fortiguard", "cisco", "ironport", "zscaler",
    "safelinks", "safe links", "microsoft office", "ms-office", "microsoftpreview",
    "googleimageproxy", "google-safety", "googlebot", "bingpreview", "bot", "crawler", "spider",
    "scanner", "preview", "headless", "python-requests", "python-httpx", "curl/", "wget/",
    "go-http-client", "java/", "okhttp", "libwww", "urlscan", "virustotal")
HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class TrackingConfig:
    clicks: bool = False
    click_journeys: tuple[str, ...] = ()
    bot_window: timedelta = timedelta(seconds=10)
    bot_user_agents: tuple[str, ...] = field(default=SCANNER_AGENTS)

    def tracks(self, journey: str | None) -> bool:
        return self.clicks or (journey is not None and journey in self.click_journeys)


def load_tracking_config(settings: Settings) -> TrackingConfig:
    section = settings.section("tracking")
    unknown = set(section) - {"clicks", "click_journeys", "bot_window_seconds", "bot_user_agents"}
    if unknown:
        raise ConfigError(f"[tracking]: unknown keys {', '.join(sorted(unknown))}; valid: clicks, "
                          "click_journeys, bot_window_seconds, bot_user_agents")
    try:
        window = timedelta(seconds=float(section.get("bot_window_seconds", 10)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[tracking] bot_window_seconds: {exc}") from exc
    extra = tuple(str(a).lower() for a in section.get("bot_user_agents", []))
    return TrackingConfig(bool(section.get("clicks", False)),
                          tuple(str(j) for j in section.get("click_journeys", [])), window,
                          SCANNER_AGENTS + extra)


def rewrite_links(body: str, tracked_url: Callable[[str], str], own_base_url: str) -> str:
    """``body`` with each trackable ``<a href>`` replaced by ``tracked_url(original)``."""
    own = own_base_url.rstrip("/") + "/"

    def swap(match: re.Match[str]) -> str:
        url = html.unescape(match.group(3)).strip()
        if not url.lower().startswith(("http://", "https://")) or url.startswith(own):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{html.escape(tracked_url(url))}{match.group(2)}"

    return HREF.sub(swap, body)


def bot_reason(user_agent: str | None, clicked_at: datetime, sent_at: datetime | None,
               config: TrackingConfig) -> str | None:
    """Why a click is probably a scanner's, or None for a plausible person."""
    agent = (user_agent or "").lower()
    if not agent:
        return "no_user_agent"
    if any(pattern in agent for pattern in config.bot_user_agents):
        return "scanner_user_agent"
    if sent_at is not None and clicked_at - sent_at < config.bot_window:
        return "too_soon_after_sending"
    return None


@dataclass(frozen=True)
class Click:
    event_type: str  # clicked | bot_click
    bot_reason: str | None
    recorded: bool  # False when the customer or message no longer exists


@retrying
def record_click(engine: Engine, claims: Claims, *, user_agent: str | None, clicked_at: datetime,
                 config: TrackingConfig) -> Click:
    """One ``events`` row for a click on a tracked link, linked to its message."""
    m, c = t.messages, t.customers
    with engine.begin() as conn:
        row = conn.execute(sa.select(m.c.id, m.c.customer_id, m.c.sent_at, m.c.journey)
                           .select_from(m.join(c, c.c.id == m.c.customer_id))
                           .where(m.c.idempotency_key == claims.message,
                                  c.c.external_id == claims.customer)).first()
        if row is None:
            return Click("clicked", None, False)
        reason = bot_reason(user_agent, clicked_at, row.sent_at, config)
        kind = "bot_click" if reason else "clicked"
        properties: dict[str, Any] = {"message_id": row.id, "message_key": claims.message,
                                      "journey": row.journey, "url": claims.url,
                                      "token_id": claims.token_id, "channel": claims.channel}
        if reason:
            properties["bot_reason"] = reason
        conn.execute(sa.insert(t.events).values(customer_id=row.customer_id, event_type=kind,
                                                occurred_at=clicked_at, properties=properties))
        return Click(kind, reason, True)
