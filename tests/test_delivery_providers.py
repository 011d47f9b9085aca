"""Provider adapters over real HTTP against the sandbox (SMTP against aiosmtpd); error mapping
of odd responses with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from clm_core.delivery.model import Outbound, Outcome, SendResult
from clm_core.delivery.providers import ProviderConfig, build_provider
from clm_core.delivery.providers.base import retry_after_seconds
from clm_core.delivery.providers.sms import aliyun_number, aliyun_signature
from clm_core.delivery.sandbox import SandboxServer
from clm_core.delivery.unsubscribe import one_click_headers
from tests.delivery_fixtures import sandbox, sandbox_server  # noqa: F401

SECRETS = {
    "sendgrid": {"api_key": "SG.live-key-123456"},
    "mailgun": {"api_key": "key-mailgun-123456"},
    "twilio": {"account_sid": "AC0123456789", "auth_token": "twilio-token-123456"},
    "aliyun": {
        "access_key_id": "sandbox-access_key_id",
        "access_key_secret": "sandbox-access_key_secret",
    },
    "stripe": {"api_key": "sk_test_123456"},
    "coupon_api": {},
    "webhook": {"signing_secret": "whsec-123456"},
    "smtp": {},
}


def provider(
    kind: str, url: str, transport: httpx.AsyncBaseTransport | None = None, **options: Any
):
    timeout = options.pop("timeout", 2.0)
    config = ProviderConfig(
        name=kind,
        kind=kind,
        base_url=url,
        timeout=timeout,
        secrets=SECRETS[kind],
        idempotent=options.pop("idempotent", False),
        options=options,
    )
    return build_provider(config) if kind == "smtp" else build_provider(config, transport)


def send(p: Any, batch: list[Outbound]) -> list[SendResult]:
    async def go() -> list[SendResult]:
        try:
            return await p.send(batch)
        finally:
            await p.aclose()
    return asyncio.run(go())


def email(i: int, **kw: Any) -> Outbound:
    return Outbound(key=f"k{i}", to=f"p{i}@example.com", channel="email", subject=f"Hi {i}",
                    text=f"text {i}", html=f"<p>html {i}</p>", tags=["winback"],
                    headers=one_click_headers(f"https://clm.example.com/u/t{i}"), **kw)


def sms(i: int, to: str | None = None) -> Outbound:
    return Outbound(key=f"s{i}", to=to or f"+1202555{i:04d}", channel="sms", text=f"hello {i}",
                    template="winback")


def test_sendgrid_batches_personalizations(sandbox: SandboxServer) -> None:
    results = send(
        provider("sendgrid", sandbox.url, batch_size=1000), [email(i) for i in range(250)]
    )
    assert [r.outcome for r in results] == [Outcome.SENT] * 250
    reqs = sandbox.store.requests
    assert len(reqs) == 1 and reqs[0]["auth"] == "Bearer"
    body = json.loads(reqs[0]["body"])
    assert len(body["personalizations"]) == 250 and body["categories"] == ["winback"]
    got = {d["key"]: d for d in sandbox.store.deliveries}
    assert got["k7"]["text"] == "text 7" and got["k7"]["html"] == "<p>html 7</p>"
    assert got["k7"]["subject"] == "Hi 7" and got["k7"]["to"] == "p7@example.com"
    assert got["k7"]["headers"]["List-Unsubscribe"] == "<https://clm.example.com/u/t7>"
    assert got["k7"]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len({r.provider_message_id for r in results}) == 250


def test_sendgrid_bad_address_rejects_only_that_message(sandbox: SandboxServer) -> None:
    batch = [email(i) for i in range(5)]
    batch[2].to = "not-an-address"
    results = send(provider("sendgrid", sandbox.url), batch)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT, Outcome.PERMANENT,
                                           Outcome.SENT, Outcome.SENT]
    assert "valid address" in (results[2].message or "")
    assert sorted(sandbox.store.delivered) == ["k0", "k1", "k3", "k4"]


def test_mailgun(sandbox: SandboxServer) -> None:
    [result] = send(provider("mailgun", sandbox.url, domain="mg.example.com"), [email(1)])
    assert result.outcome is Outcome.SENT and result.provider_message_id.endswith(
        "@mg.example.com>"
    )
    [d] = sandbox.store.deliveries
    assert (
        d["key"] == "k1" and d["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    )
    assert d["tags"] == ["winback"]


def test_twilio_codes(sandbox: SandboxServer) -> None:
    sandbox.store.set_faults({"optout": ["+12025550002"]})
    results = send(provider("twilio", sandbox.url), [sms(1), sms(2), sms(3, to="12345")])
    assert results[0].outcome is Outcome.SENT and results[0].provider_message_id.startswith("SM")
    assert (results[1].outcome, results[1].code, results[1].suppress) == (
        Outcome.REJECTED,
        "21610",
        "opted_out",
    )
    assert (results[2].outcome, results[2].code, results[2].suppress) == (
        Outcome.REJECTED,
        "21211",
        "invalid",
    )
    assert sandbox.store.requests[0]["path"] == "/2010-04-01/Accounts/AC0123456789/Messages.json"


def test_aliyun_signed_and_errors_inside_200(sandbox: SandboxServer) -> None:
    sandbox.store.set_faults({"optout": ["+8613800000002"]})
    batch = [sms(1, "+8613800000001"), sms(2, "+8613800000002"), sms(3, "+86abc")]
    results = send(provider("aliyun", sandbox.url, sign_name="CLM"), batch)
    assert results[0].outcome is Outcome.SENT
    assert (results[1].outcome, results[1].code) == (
        Outcome.REJECTED,
        "isv.BLACK_KEY_CONTROL_LIMIT",
    )
    assert (results[2].outcome, results[2].code) == (Outcome.REJECTED, "isv.MOBILE_NUMBER_ILLEGAL")
    [d] = sandbox.store.deliveries
    assert d["to"] == "13800000001" and d["params"] == {"content": "hello 1"} and d["key"] == "s1"


def test_aliyun_signature_mismatch_halts(sandbox: SandboxServer) -> None:
    p = provider("aliyun", sandbox.url)
    p.key_secret = "wrong-secret"
    [result] = send(p, [sms(1, "+8613800000001")])
    assert (
        result.outcome is Outcome.PERMANENT
        and result.code == "SignatureDoesNotMatch"
        and result.halt
    )
    assert not sandbox.store.deliveries


def test_aliyun_signature_v2_known_vector() -> None:
    # Worked example of Alibaba Cloud's RPC signature documentation (GET, DescribeRegions).
    params = {
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "Format": "XML",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "SignatureVersion": "1.0",
        "Timestamp": "2016-02-23T12:46:24Z",
        "Version": "2014-05-26",
    }
    assert aliyun_signature(params, "testsecret", "GET") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert (
        aliyun_number("+8613800000001") == "13800000001"
        and aliyun_number("+447700900000") == "447700900000"
    )


def test_stripe_promotion_code_idempotent(sandbox: SandboxServer) -> None:
    coupon = Outbound(key="m1", to="cust-1", channel="coupon",
                      data={"code": "CLM-ABCD-EFGH", "kind": "percent", "value": 15,
                            "expires_at": int(time.time()) + 86400, "customer": "cust-1"})
    first = send(provider("stripe", sandbox.url), [coupon])[0]
    again = send(provider("stripe", sandbox.url), [coupon])[0]
    assert first.outcome is Outcome.SENT and first.provider_message_id == again.provider_message_id
    assert (
        sandbox.store.stats()["replays"] == 2 and sandbox.store.delivered["m1:promotion_codes"] == 1
    )
    form = dict(x.split("=", 1) for x in sandbox.store.requests[1]["body"].split("&"))
    assert form["code"] == "CLM-ABCD-EFGH" and form["promotion%5Btype%5D"] == "coupon"


def test_coupon_api_and_webhook(sandbox: SandboxServer) -> None:
    coupon = Outbound(
        key="m2", to="cust-2", channel="coupon", data={"code": "X1", "kind": "amount", "value": 5}
    )
    assert send(provider("coupon_api", sandbox.url), [coupon])[0].outcome is Outcome.SENT
    assert (
        send(provider("coupon_api", sandbox.url), [coupon])[0].outcome is Outcome.SENT
    )  # 409 = exists
    assert sandbox.store.delivered["m2"] == 1
    hook = Outbound(key="w1", to="cust-3", channel="webhook", data={"a": 1})
    assert send(provider("webhook", sandbox.url), [hook])[0].outcome is Outcome.SENT
    d = sandbox.store.deliveries[-1]
    raw = next(r["body"] for r in sandbox.store.requests if r["api"] == "webhook").encode()
    assert d["signature"] == "sha256=" + hmac.new(b"whsec-123456", raw, hashlib.sha256).hexdigest()


def test_smtp_against_aiosmtpd(sandbox: SandboxServer) -> None:
    sandbox.store.set_faults({"invalid": ["gone@example.com"]})
    bad = email(2)
    bad.to = "gone@example.com"
    results = send(provider("smtp", sandbox.smtp_url, domain="shop.example.com"), [email(1), bad])
    assert results[0].outcome is Outcome.SENT and results[0].provider_message_id.endswith(
        "@shop.example.com>"
    )
    assert (results[1].outcome, results[1].code, results[1].suppress) == (
        Outcome.REJECTED,
        "550",
        "invalid",
    )
    [d] = sandbox.store.deliveries
    assert d["api"] == "smtp" and d["key"] == "k1" and d["subject"] == "Hi 1"
    assert d["text"].strip() == "text 1" and "html 1" in d["html"]
    assert d["headers"]["List-Unsubscribe"] == "<https://clm.example.com/u/t1>"


def test_faults_429_timeout_and_drop(sandbox: SandboxServer) -> None:
    for fault, code, ambiguous in [
        ({"rate_429": 1.0, "retry_after": 7}, "429", False),
        ({"rate_timeout": 1.0, "timeout_seconds": 1.0}, "readtimeout", True),
        ({"rate_drop": 1.0}, None, True),
    ]:
        sandbox.store.set_faults(fault)
        [r] = send(provider("twilio", sandbox.url, timeout=0.3), [sms(1)])
        assert r.outcome is Outcome.TRANSIENT and r.ambiguous is ambiguous, (fault, r)
        if code:
            assert r.code in {code, "20429"}
        if fault.get("retry_after"):
            assert r.retry_after == 7
    assert not sandbox.store.deliveries


def test_connection_refused_is_safe_to_retry() -> None:
    [r] = send(provider("twilio", "http://127.0.0.1:9"), [sms(1)])
    assert r.outcome is Outcome.TRANSIENT and not r.ambiguous and r.code == "connecterror"


@pytest.mark.parametrize("status,headers,outcome,retry", [
    (429, {"X-RateLimit-Reset": "{reset}"}, Outcome.TRANSIENT, 30),
    (503, {"Retry-After": "12"}, Outcome.TRANSIENT, 12),
    (400, {}, Outcome.PERMANENT, None),
    (401, {}, Outcome.PERMANENT, None),
])
def test_sendgrid_status_mapping(
    status: int, headers: dict[str, str], outcome: Outcome, retry: int | None
) -> None:
    now = time.time()
    hdrs = {k: v.format(reset=int(now) + 30) for k, v in headers.items()}
    transport = httpx.MockTransport(lambda req: httpx.Response(
        status, headers=hdrs, json={"errors": [{"field": "from", "message": "bad"}]}))
    [r] = send(provider("sendgrid", "http://sendgrid.test", transport), [email(1)])
    assert r.outcome is outcome
    if retry:
        assert abs((r.retry_after or 0) - retry) <= 1.5
    assert r.halt is (status == 401)


def test_retry_after_http_date() -> None:
    when = time.time() + 60
    value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))
    assert (
        58
        <= (retry_after_seconds(httpx.Headers({"Retry-After": value}), now=time.time()) or 0)
        <= 61
    )


def test_credentials_never_in_results() -> None:
    def leak(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"failed for {req.headers['authorization']}")
    [r] = send(provider("sendgrid", "http://sendgrid.test", httpx.MockTransport(leak)), [email(1)])
    assert "SG.live-key-123456" not in (r.message or "") and "***" in (r.message or "")
