"""Coupon services: Stripe style (coupon + promotion code, form-encoded, ``Idempotency-Key``)
and a generic HTTP coupon API (JSON, ``Idempotency-Key``). Both are idempotent on our key, so
an unknown outcome is resolved by asking again."""

from __future__ import annotations

from typing import Any

import httpx

from clm_core.delivery.model import Outbound, SendResult
from clm_core.delivery.providers.base import HttpProvider, ProviderConfig


class StripeCouponProvider(HttpProvider):
    """``data``: kind (percent|amount), value, currency, code, expires_at (epoch s), customer."""

    kind = "stripe"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.idempotent = True
        self.client.headers["Authorization"] = f"Bearer {config.secrets['api_key']}"

    async def _post(self, key: str, path: str, form: dict[str, Any]) -> dict[str, Any] | SendResult:
        response = await self.request(
            [key],
            "POST",
            path,
            data=form,
            headers={"Idempotency-Key": f"{key}:{path.rsplit('/', 1)[-1]}"},
        )
        if isinstance(response, list):
            return response[0]
        body = self.json_or_empty(response)
        if response.status_code == 200 and body.get("id"):
            return body
        error = body.get("error") or {}
        result = self.classify_status(key, response, code=error.get("code") or None,
                                      message=str(error.get("message", ""))[:200])
        result.halt = response.status_code in (401, 403)
        return result

    async def send_one(self, m: Outbound) -> SendResult:
        d = m.data
        coupon: dict[str, Any] = {"duration": "once", "name": d["code"]}
        if d["kind"] == "percent":
            coupon["percent_off"] = str(d["value"])
        else:
            coupon["amount_off"] = str(int(round(float(d["value"]) * 100)))
            coupon["currency"] = str(d.get("currency") or "usd").lower()
        if d.get("expires_at"):
            coupon["redeem_by"] = str(int(d["expires_at"]))
        created = await self._post(m.key, "/v1/coupons", coupon)
        if isinstance(created, SendResult):
            return created
        promo: dict[str, Any] = {"promotion[type]": "coupon", "promotion[coupon]": created["id"],
                                 "code": d["code"], "max_redemptions": "1"}
        if d.get("expires_at"):
            promo["expires_at"] = str(int(d["expires_at"]))
        code = await self._post(m.key, "/v1/promotion_codes", promo)
        if isinstance(code, SendResult):
            return code
        return SendResult.sent(m.key, str(code["id"]), coupon_id=created["id"])


class HttpCouponProvider(HttpProvider):
    """A generic coupon service: ``POST {path}`` JSON; 409 means this code exists (success)."""

    kind = "coupon_api"

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, transport)
        self.idempotent = True
        self.path = config.option("path", "/coupons")
        if config.secrets.get("api_key"):
            self.client.headers["Authorization"] = f"Bearer {config.secrets['api_key']}"

    async def send_one(self, m: Outbound) -> SendResult:
        payload = {**m.data, "idempotency_key": m.key}
        response = await self.request([m.key], "POST", self.path, json=payload,
                                      headers={"Idempotency-Key": m.key})
        if isinstance(response, list):
            return response[0]
        body = self.json_or_empty(response)
        if response.status_code in (200, 201, 409):
            return SendResult.sent(m.key, str(body.get("id") or m.data.get("code")))
        return self.classify_status(m.key, response, message=str(body.get("message", ""))[:200])
