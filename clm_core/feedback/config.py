"""The ``[webhooks]`` section of clm.toml: how each provider's callbacks are verified, and how
feedback is applied.

Secrets are named, never stored: ``sendgrid_public_key_env``, ``mailgun_signing_key_env`` and
``aliyun_path_token_env`` name environment variables (defaults below); Twilio's callbacks are
signed with the account's auth token, taken from the Twilio provider of ``[delivery]``. A
provider whose delivery settings point at the local sandbox verifies with the sandbox's own
keys, so the demo needs no configuration; a provider with no secret set has no route (its
callbacks get 404) and ``clm serve`` says so when it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clm_core.delivery.config import DeliveryConfig
from clm_core.errors import ConfigError
from clm_core.feedback.signatures import SANDBOX_SENDGRID_PUBLIC_KEY
from clm_core.settings import Settings, secret
from clm_core.suggest import did_you_mean

SANDBOX_MAILGUN_KEY = "sandbox-webhook-signing-key"
SANDBOX_ALIYUN_TOKEN = "sandbox-aliyun-callback"
_KEYS = {"sendgrid_public_key_env", "mailgun_signing_key_env", "aliyun_path_token_env",
         "mailgun_max_age", "soft_bounce_limit", "max_body_bytes", "complaint_warn",
         "complaint_halt", "bounce_warn", "guard_window_days", "guard_min_sent"}


@dataclass(frozen=True)
class WebhookConfig:
    sendgrid_public_key: str | None = None
    mailgun_signing_key: str | None = None
    twilio_auth_token: str | None = None
    aliyun_path_token: str | None = None
    mailgun_max_age: float = 600.0  # seconds a Mailgun timestamp may be away from now
    soft_bounce_limit: int = 3  # soft bounces of one address before it is suppressed
    max_body_bytes: int = 1_048_576  # SendGrid batches reach 768 KB
    # Deliverability guard (clm_core.feedback.guard).
    complaint_warn: float = 0.001
    complaint_halt: float = 0.003
    bounce_warn: float = 0.02  # hard bounces above this warn (they never halt by themselves)
    guard_window_days: float = 7.0
    guard_min_sent: int = 1000  # below this many sends in the window, rates only warn

    def missing(self) -> list[str]:
        return [name for name, value in (("sendgrid", self.sendgrid_public_key),
                                         ("mailgun", self.mailgun_signing_key),
                                         ("twilio", self.twilio_auth_token),
                                         ("aliyun", self.aliyun_path_token)) if not value]


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in {"127.0.0.1", "localhost", "::1"}


def _kind_urls(delivery: DeliveryConfig | None, kind: str) -> list[str]:
    if delivery is None:
        return []
    return [p.base_url for p in delivery.channels.values() if p.kind == kind]


def _secret_or_sandbox(env: dict[str, str], var: str, sandbox: str, urls: list[str]) -> str | None:
    if env.get(var):
        return secret(var, env)
    if urls and all(_loopback(u) for u in urls):
        return sandbox
    return None


def load_webhook_config(settings: Settings, delivery: DeliveryConfig | None,
                        env: dict[str, str] | None = None) -> WebhookConfig:
    env = dict(os.environ if env is None else env)
    section: dict[str, Any] = settings.section("webhooks")
    unknown = set(section) - _KEYS
    if unknown:
        key = min(unknown)
        raise ConfigError(f"[webhooks] unknown key {key!r}{did_you_mean(key, sorted(_KEYS))}")
    twilio = [p for p in (delivery.channels.values() if delivery else []) if p.kind == "twilio"]
    numbers = {k: section[k] for k in ("mailgun_max_age", "soft_bounce_limit", "max_body_bytes",
                                       "complaint_warn", "complaint_halt", "bounce_warn",
                                       "guard_window_days", "guard_min_sent") if k in section}
    try:
        return WebhookConfig(
            sendgrid_public_key=_secret_or_sandbox(
                env, section.get("sendgrid_public_key_env", "SENDGRID_WEBHOOK_PUBLIC_KEY"),
                SANDBOX_SENDGRID_PUBLIC_KEY, _kind_urls(delivery, "sendgrid")),
            mailgun_signing_key=_secret_or_sandbox(
                env, section.get("mailgun_signing_key_env", "MAILGUN_WEBHOOK_SIGNING_KEY"),
                SANDBOX_MAILGUN_KEY, _kind_urls(delivery, "mailgun")),
            twilio_auth_token=twilio[0].secrets.get("auth_token") if twilio else None,
            aliyun_path_token=_secret_or_sandbox(
                env, section.get("aliyun_path_token_env", "ALIYUN_CALLBACK_TOKEN"),
                SANDBOX_ALIYUN_TOKEN, _kind_urls(delivery, "aliyun")),
            **{k: type(getattr(WebhookConfig, k))(v) for k, v in numbers.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[webhooks]: {exc}") from exc
