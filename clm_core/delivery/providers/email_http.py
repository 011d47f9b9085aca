"""HTTP email APIs: SendGrid v3 style (batches of up to 1,000 personalizations) and Mailgun
style. Wire formats: the providers' public docs, mirrored by the sandbox server."""

from __future__ import annotations

import asyncio
import hashlib
from itertools import groupby
from typing import Any

import httpx

from clm_core.delivery.model import Outbound, SendResult
from clm_core.delivery.providers.base import HttpProvider, ProviderConfig, basic_auth

# SendGrid caps the substitutions of one personalization at 10,000 bytes; larger messages go
# in a request of their own with the content at the top level.
SUBSTITUTION_LIMIT = 10_000
HTML_TAG, TEXT_TAG = "-clm_html-", "-clm_text-"


def batch_key(keys: list[str]) -> str:
    """A stable Idempotency-Key for a request carrying several messages."""
    return (
        keys[0]
        if len(keys) == 1
        else "batch-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:40]
    )


def _address(text: str) -> dict[str, str]:
    """``"Name <a@b>"`` or ``"a@b"`` as SendGrid's {email, name}."""
    if "<" in text and text.endswith(">"):
        name, _, email = text[:-1].partition("<")
        return {"email": email.strip(), "name": name.strip().strip('"')}
    return {"email": text.strip()}


class SendGridProvider(HttpProvider):
    kind = "sendgrid"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.max_batch = int(config.option("batch_size", 1000))
        self.sender = _address(config.option("from", "CLM <shop@example.com>"))
        self.client.headers["Authorization"] = f"Bearer {config.secrets['api_key']}"

    def _personalization(self, m: Outbound, substitute: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"to": [{"email": m.to}], "subject": m.subject or "",
                             "custom_args": {"clm_key": m.key}}
        if m.headers:
            p["headers"] = m.headers
        if substitute:
            p["substitutions"] = {TEXT_TAG: m.text or "", HTML_TAG: m.html or ""}
        return p

    @staticmethod
    def _fits(m: Outbound) -> bool:
        return (
            len((m.text or "").encode()) + len((m.html or "").encode()) + 32 <= SUBSTITUTION_LIMIT
        )

    def _body(self, batch: list[Outbound]) -> dict[str, Any]:
        substitute = len(batch) > 1
        first = batch[0]
        content = (
            [{"type": "text/plain", "value": TEXT_TAG}, {"type": "text/html", "value": HTML_TAG}]
            if substitute
            else [
                {"type": "text/plain", "value": first.text or ""},
                {"type": "text/html", "value": first.html or ""},
            ]
        )
        body: dict[str, Any] = {
            "personalizations": [self._personalization(m, substitute) for m in batch],
            "from": self.sender,
            "content": content,
        }
        if first.tags:
            body["categories"] = first.tags[:10]
        return body

    async def send(self, batch: list[Outbound]) -> list[SendResult]:
        # One request per group sharing categories; oversized messages alone.
        results: dict[str, SendResult] = {}
        big = [m for m in batch if not self._fits(m)]
        small = sorted((m for m in batch if self._fits(m)), key=lambda m: m.tags)
        groups = [[m] for m in big]
        for _, grp in groupby(small, key=lambda m: m.tags):
            items = list(grp)
            groups += [items[i:i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        # One group (one message a request, or one batch) is awaited without a task of its own.
        chunks = ([await self._send_group(groups[0])] if len(groups) == 1
                  else await asyncio.gather(*(self._send_group(g) for g in groups)))
        for chunk in chunks:
            results.update((r.key, r) for r in chunk)
        return [results[m.key] for m in batch]

    async def _send_group(self, group: list[Outbound]) -> list[SendResult]:
        keys = [m.key for m in group]
        response = await self.request(keys, "POST", "/v3/mail/send", json=self._body(group),
                                      headers={"Idempotency-Key": batch_key(keys)})
        if isinstance(response, list):
            return response
        if response.status_code in (200, 202):
            xid = response.headers.get("x-message-id", "")
            if len(group) == 1:
                return [SendResult.sent(keys[0], xid)]
            return [SendResult.sent(k, f"{xid}.{i}") for i, k in enumerate(keys)]
        if response.status_code == 400 and len(group) > 1:
            # One bad personalization rejects the whole request: send each alone to find it.
            return [r for part in await asyncio.gather(*(self._send_group([m]) for m in group))
                    for r in part]
        errors = self.json_or_empty(response).get("errors") or [{}]
        text = "; ".join(f"{e.get('field') or ''} {e.get('message') or ''}".strip() for e in errors)
        results = [self.classify_status(k, response, message=text) for k in keys]
        if response.status_code in (401, 403):
            for r in results:
                r.halt = True
        return results


class MailgunProvider(HttpProvider):
    kind = "mailgun"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.domain = config.option("domain", "mg.example.com")
        self.sender = config.option("from", "CLM <shop@example.com>")
        self.client.headers["Authorization"] = basic_auth("api", config.secrets["api_key"])

    async def send_one(self, m: Outbound) -> SendResult:
        form: dict[str, Any] = {"from": self.sender, "to": m.to, "subject": m.subject or "",
                                "text": m.text or "", "html": m.html or "",
                                "v:clm_key": m.key}
        if m.tags:
            form["o:tag"] = m.tags[:3]
        form.update({f"h:{k}": v for k, v in m.headers.items()})
        response = await self.request([m.key], "POST", f"/v3/{self.domain}/messages", data=form,
                                      headers={"Idempotency-Key": m.key})
        if isinstance(response, list):
            return response[0]
        body = self.json_or_empty(response)
        if response.status_code == 200 and body.get("id"):
            return SendResult.sent(m.key, str(body["id"]))
        result = self.classify_status(m.key, response, message=str(body.get("message", ""))[:200])
        result.halt = response.status_code in (401, 403)
        return result

