"""SMS APIs: Twilio style (form-encoded, Basic auth, JSON errors with numeric codes) and Aliyun
SendSms style (RPC parameters signed with HMAC-SHA1, signature V2; errors inside HTTP 200)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import httpx

from clm_core.delivery.model import Outbound, Outcome, SendResult
from clm_core.delivery.providers.base import (
    HttpProvider,
    ProviderConfig,
    basic_auth,
    retry_after_seconds,
)
from clm_core.errors import ProviderError

# Twilio error codes: opted out / invalid number (suppress), unroutable (permanent), rate limit.
TWILIO_REJECTED = {"21610": "opted_out", "21211": "invalid", "21614": "invalid"}
TWILIO_PERMANENT = {"21612", "21635", "21408", "21606"}
TWILIO_TRANSIENT = {"20429", "20503"}


class TwilioProvider(HttpProvider):
    kind = "twilio"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.sid = config.secrets["account_sid"]
        self.client.headers["Authorization"] = basic_auth(self.sid, config.secrets["auth_token"])
        self.sender = config.option("from", "+15005550006")
        self.service_sid = config.option("messaging_service_sid")
        # Status callbacks come back to this URL with the message key in its query, which ties
        # each callback to its outbox message (and settles messages whose outcome is unknown).
        self.status_callback: str | None = config.option("status_callback")
        # What ``status_callback_url`` puts before the key (urlencode costs more, per message).
        self._callback_prefix = (status_callback_url(self.status_callback, "")
                                 if self.status_callback else "")

    async def send_one(self, m: Outbound) -> SendResult:
        form = {"To": m.to, "Body": m.text or ""}
        if self._callback_prefix:
            form["StatusCallback"] = self._callback_prefix + quote_plus(m.key)
        if self.service_sid:
            form["MessagingServiceSid"] = self.service_sid
        else:
            form["From"] = self.sender
        response = await self.request(
            [m.key],
            "POST",
            f"/2010-04-01/Accounts/{self.sid}/Messages.json",
            data=form,
            headers={"Idempotency-Key": m.key},
        )
        if isinstance(response, list):
            return response[0]
        body = self.json_or_empty(response)
        if response.status_code in (200, 201) and body.get("sid"):
            return SendResult.sent(m.key, str(body["sid"]), segments=body.get("num_segments"))
        code = str(body.get("code") or response.status_code)
        message = str(body.get("message", ""))[:200]
        if code in TWILIO_REJECTED:
            return SendResult(m.key, Outcome.REJECTED, code=code, suppress=TWILIO_REJECTED[code],
                              message=f"{self.name}: {TWILIO_REJECTED[code]}: {message}")
        if code in TWILIO_TRANSIENT:
            return SendResult(
                m.key,
                Outcome.TRANSIENT,
                code=code,
                message=f"{self.name}: {message}",
                retry_after=retry_after_seconds(response.headers),
            )
        if code in TWILIO_PERMANENT:
            return SendResult(
                m.key, Outcome.PERMANENT, code=code, message=f"{self.name}: {message}"
            )
        result = self.classify_status(m.key, response, code=code, message=message)
        result.halt = response.status_code in (401, 403) or code == "20003"
        return result

    async def list_sent(self, to: str, since: datetime) -> list[dict[str, str]]:
        """Twilio's message list for one recipient since a time (all pages). Raises
        ProviderError when the list cannot be read: reconciliation then settles nothing."""
        path = f"/2010-04-01/Accounts/{self.sid}/Messages.json"
        params: dict[str, str | int] | None = {
            "To": to, "DateSent>=": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "PageSize": 1000}
        out: list[dict[str, str]] = []
        url: str | None = path
        while url:
            try:
                response = await self.client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise ProviderError(
                    self.redact(f"{self.name}: message list: {type(exc).__name__}")
                ) from exc
            if response.status_code != 200:
                raise ProviderError(self.redact(
                    f"{self.name}: message list: HTTP {response.status_code}"))
            body = self.json_or_empty(response)
            out += [m for m in body.get("messages") or [] if isinstance(m, dict)]
            url, params = body.get("next_page_uri"), None
        return out


def status_callback_url(base: str, key: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}{urlencode({'clm_key': key})}"


def content_digest(to: str, text: str) -> str:
    """What identifies a sent SMS in a provider's message list: recipient and text."""
    return hashlib.sha256(f"{to}\n{text}".encode()).hexdigest()


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun's signature V2 wants it (space %20, ``*`` %2A, ``~`` kept)."""
    return quote(value, safe="-_.~")


def aliyun_signature(params: dict[str, str], secret: str, method: str = "POST") -> str:
    """Signature V2: HMAC-SHA1 over ``METHOD&%2F&encode(sorted, encoded query)``, key ``secret&``."""  # noqa: E501  (prose or a URL: clearer whole)
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items())
    )
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


ALIYUN_TRANSIENT = {"isv.BUSINESS_LIMIT_CONTROL", "isp.SYSTEM_ERROR", "Throttling.User"}
ALIYUN_HALT = {"isv.AMOUNT_NOT_ENOUGH", "isv.OUT_OF_SERVICE", "isv.DAY_LIMIT_CONTROL",
               "InvalidAccessKeyId.NotFound", "SignatureDoesNotMatch"}
ALIYUN_REJECTED = {
    "isv.MOBILE_NUMBER_ILLEGAL": "invalid",
    "isv.BLACK_KEY_CONTROL_LIMIT": "opted_out",
}


def aliyun_number(e164: str) -> str:
    """Mainland numbers go without the country code, others with it, never with ``+``."""
    return e164[3:] if e164.startswith("+86") else e164.lstrip("+")


class AliyunSmsProvider(HttpProvider):
    kind = "aliyun"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.key_id = config.secrets["access_key_id"]
        self.key_secret = config.secrets["access_key_secret"]
        self.sign_name = config.option("sign_name", "CLM")
        self.template_codes: dict[str, str] = config.option("template_codes", {})

    def signed_params(self, m: Outbound) -> dict[str, str]:
        params = {
            "Action": "SendSms",
            "Version": "2017-05-25",
            "Format": "JSON",
            "RegionId": "cn-hangzhou",
            "AccessKeyId": self.key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": uuid.uuid4().hex,
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "PhoneNumbers": aliyun_number(m.to),
            "SignName": self.sign_name,
            "TemplateCode": self.template_codes.get(m.template or "", m.template or ""),
            "TemplateParam": json.dumps(
                {k: str(v) for k, v in (m.data.get("params") or {"content": m.text or ""}).items()},
                ensure_ascii=False,
            ),
            "OutId": m.key[:64],
        }
        params["Signature"] = aliyun_signature(params, self.key_secret)
        return params

    async def send_one(self, m: Outbound) -> SendResult:
        # POST keeps the signed parameters out of URLs (and so out of any logged URL).
        response = await self.request([m.key], "POST", "/", data=self.signed_params(m),
                                      headers={"Idempotency-Key": m.key})
        if isinstance(response, list):
            return response[0]
        body: dict[str, Any] = self.json_or_empty(response)
        code = str(body.get("Code") or response.status_code)
        message = f"{self.name}: {code}: {str(body.get('Message', ''))[:200]}"
        if code == "OK":
            return SendResult.sent(m.key, str(body.get("BizId") or body.get("RequestId")))
        if code in ALIYUN_REJECTED:
            return SendResult(m.key, Outcome.REJECTED, code=code, message=message,
                              suppress=ALIYUN_REJECTED[code])
        if code in ALIYUN_TRANSIENT:
            return SendResult(m.key, Outcome.TRANSIENT, code=code, message=message)
        if code in ALIYUN_HALT:
            return SendResult(m.key, Outcome.PERMANENT, code=code, message=message, halt=True)
        if response.status_code == 429 or response.status_code >= 500:
            return self.classify_status(m.key, response, code=code)
        return SendResult(m.key, Outcome.PERMANENT, code=code, message=message)
