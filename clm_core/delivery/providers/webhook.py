"""A generic webhook: the message as JSON, signed with HMAC-SHA256 when a secret is set, with
our key as ``Idempotency-Key`` so the receiver can deduplicate."""

from __future__ import annotations

import hashlib
import hmac
import json

from clm_core.delivery.model import Outbound, SendResult
from clm_core.delivery.providers.base import HttpProvider


class WebhookProvider(HttpProvider):
    kind = "webhook"

    async def send_one(self, m: Outbound) -> SendResult:
        body = json.dumps({"key": m.key, "channel": m.channel, "to": m.to, "subject": m.subject,
                           "text": m.text, "html": m.html, "headers": m.headers, "tags": m.tags,
                           "template": m.template, "data": m.data}, default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": m.key}
        if self.config.secrets.get("signing_secret"):
            mac = hmac.new(self.config.secrets["signing_secret"].encode(), body, hashlib.sha256)
            headers["X-CLM-Signature"] = f"sha256={mac.hexdigest()}"
        response = await self.request([m.key], "POST", self.config.option("path", "/webhook"),
                                      content=body, headers=headers)
        if isinstance(response, list):
            return response[0]
        if 200 <= response.status_code < 300:
            return SendResult.sent(m.key, response.headers.get("x-request-id") or m.key)
        return self.classify_status(m.key, response)
