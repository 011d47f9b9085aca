"""Provider adapters by kind. ``build_provider`` turns a resolved config into an adapter."""

from __future__ import annotations

import httpx

from clm_core.delivery.model import Provider
from clm_core.delivery.providers.base import HttpProvider, ProviderConfig
from clm_core.delivery.providers.coupons import HttpCouponProvider, StripeCouponProvider
from clm_core.delivery.providers.email_http import MailgunProvider, SendGridProvider
from clm_core.delivery.providers.sms import AliyunSmsProvider, TwilioProvider
from clm_core.delivery.providers.smtp import SmtpProvider
from clm_core.delivery.providers.webhook import WebhookProvider

HTTP_KINDS: dict[str, type[HttpProvider]] = {
    "sendgrid": SendGridProvider, "mailgun": MailgunProvider, "twilio": TwilioProvider,
    "aliyun": AliyunSmsProvider, "stripe": StripeCouponProvider, "coupon_api": HttpCouponProvider,
    "webhook": WebhookProvider,
}
KINDS = sorted([*HTTP_KINDS, "smtp"])

# Credentials each kind needs (required, optional); values come from environment variables.
CREDENTIALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sendgrid": (("api_key",), ()), "mailgun": (("api_key",), ()),
    "twilio": (("account_sid", "auth_token"), ()),
    "aliyun": (("access_key_id", "access_key_secret"), ()),
    "stripe": (("api_key",), ()), "coupon_api": ((), ("api_key",)),
    "webhook": ((), ("signing_secret",)), "smtp": ((), ("username", "password")),
}


def build_provider(
    config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None
) -> Provider:
    if config.kind == "smtp":
        return SmtpProvider(config)
    return HTTP_KINDS[config.kind](config, transport)


__all__ = ["KINDS", "CREDENTIALS", "ProviderConfig", "build_provider"]
