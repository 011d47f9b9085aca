"""The ``[delivery]`` section of clm.toml, resolved: which provider serves each channel, where it
lives, its limits, and the dispatcher's batch, lease and retry settings.

With no section at all every channel goes to the local sandbox (``clm sandbox``), so a new
project sends somewhere real without any account. Credentials are named, never stored: each
provider reads them from environment variables (``<cred>_env`` overrides the default name) or
Prefect Secret blocks; a provider pointing at a loopback address (the sandbox) may go without.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clm_core.delivery.providers import CREDENTIALS, KINDS, ProviderConfig
from clm_core.errors import ConfigError
from clm_core.settings import Settings, redact, secret
from clm_core.suggest import did_you_mean

SANDBOX_URL = "http://127.0.0.1:8025"
SANDBOX_SMTP_URL = "smtp://127.0.0.1:8026"
CHANNELS = ("email", "sms", "coupon", "webhook")
DEFAULT_PROVIDERS = {"email": "sendgrid", "sms": "twilio", "coupon": "stripe", "webhook": "webhook"}

_PROVIDER_KEYS = {
    "kind",
    "base_url",
    "timeout",
    "connect_timeout",
    "concurrency",
    "rate_per_second",
    "idempotent",
}
_TOP_KEYS = {
    *CHANNELS,
    "providers",
    "timeout",
    "batch_size",
    "lanes",
    "lease_seconds",
    "max_attempts",
    "backoff_base",
    "backoff_max",
    "sandbox_url",
    "from_email",
    "store_name",
    "store_url",
}


@dataclass(frozen=True)
class DeliveryConfig:
    channels: dict[str, ProviderConfig]
    batch_size: int = 500
    lanes: int = 4  # claim/send/commit loops running at once in one dispatcher
    lease_seconds: float = 120.0
    max_attempts: int = 6
    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    store_name: str = "CLM Store"
    store_url: str = "https://shop.example.com"

    def provider(self, channel: str) -> ProviderConfig:
        try:
            return self.channels[channel]
        except KeyError:
            raise ConfigError(f"[delivery] has no provider for channel {channel!r}") from None


class RedactSecrets(logging.Filter):
    """Replaces every known secret in log records (httpx logs request URLs, and some APIs put
    account ids in the path). Attach to handlers: ``handler.addFilter(RedactSecrets())``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in {"127.0.0.1", "localhost", "::1"}


def _credentials(name: str, kind: str, raw: dict[str, Any], base_url: str,
                 env: dict[str, str]) -> dict[str, str]:
    required, optional = CREDENTIALS[kind]
    values: dict[str, str] = {}
    for cred in (*required, *optional):
        var = str(raw.get(f"{cred}_env") or f"{name}_{cred}".upper())
        if env.get(var):
            values[cred] = secret(var, env)  # registers the value for redaction
        elif cred in required:
            values[cred] = f"sandbox-{cred}" if _is_loopback(base_url) else secret(var, env)
    return values


def _provider(name: str, raw: dict[str, Any], section: dict[str, Any], env: dict[str, str],
              public_base_url: str | None = None) -> ProviderConfig:
    kind = str(raw.get("kind", name))
    if kind not in KINDS:
        raise ConfigError(f"[delivery.providers.{name}] kind {kind!r} is unknown"
                          f"{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}")
    default_url = SANDBOX_SMTP_URL if kind == "smtp" else section.get("sandbox_url", SANDBOX_URL)
    base_url = str(raw.get("base_url", default_url))
    options = {k: v for k, v in raw.items() if k not in _PROVIDER_KEYS and not k.endswith("_env")}
    options.setdefault("from", section.get("from_email", "CLM Store <shop@example.com>"))
    if kind == "twilio" and public_base_url:
        options.setdefault("status_callback", public_base_url.rstrip("/") + "/hooks/twilio/status")
    try:
        return ProviderConfig(
            name=name,
            kind=kind,
            base_url=base_url,
            timeout=float(raw.get("timeout", section.get("timeout", 10.0))),
            connect_timeout=float(raw.get("connect_timeout", 5.0)),
            concurrency=int(raw.get("concurrency", 16)),
            rate_per_second=float(raw.get("rate_per_second", 0.0)),
            idempotent=bool(raw.get("idempotent", kind in {"stripe", "coupon_api"})),
            secrets=_credentials(name, kind, raw, base_url, env),
            options=options,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[delivery.providers.{name}]: {exc}") from exc


def load_delivery_config(settings: Settings, env: dict[str, str] | None = None) -> DeliveryConfig:
    """Resolve ``[delivery]``; unknown keys and unknown provider names are errors with hints."""
    env = dict(os.environ if env is None else env)
    section = settings.section("delivery")
    unknown = set(section) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"[delivery] unknown key {key!r}{did_you_mean(key, sorted(_TOP_KEYS))}")
    tables: dict[str, dict[str, Any]] = section.get("providers", {})
    channels: dict[str, ProviderConfig] = {}
    for channel in CHANNELS:
        name = str(section.get(channel, DEFAULT_PROVIDERS[channel]))
        if name not in tables and name not in KINDS:
            raise ConfigError(f"[delivery] {channel} = {name!r} names no provider"
                              f"{did_you_mean(name, sorted({*tables, *KINDS}))}")
        channels[channel] = _provider(name, tables.get(name, {}), section, env,
                                      settings.public_base_url)
    try:
        config = DeliveryConfig(
            channels=channels,
            **{
                k: type(getattr(DeliveryConfig, k))(section[k])
                for k in (
                    "batch_size",
                    "lanes",
                    "lease_seconds",
                    "max_attempts",
                    "backoff_base",
                    "backoff_max",
                    "store_name",
                    "store_url",
                )
                if k in section
            },
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[delivery]: {exc}") from exc
    if config.lease_seconds <= max(p.timeout for p in channels.values()) * 2:
        raise ConfigError(f"[delivery] lease_seconds ({config.lease_seconds:g}) must exceed twice "
                          "the longest provider timeout, or a lease could run out mid-send")
    return config
