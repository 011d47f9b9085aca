"""The sandbox provider server (``clm sandbox``): speaks the provider APIs CLM sends to,
stores every request it receives, and injects faults on request.

APIs: SendGrid ``POST /v3/mail/send``, Mailgun ``POST /v3/{domain}/messages``, Twilio
``POST /2010-04-01/Accounts/{sid}/Messages.json``, Aliyun SendSms ``POST /`` (signature V2
checked when the secret is known), Stripe ``POST /v1/coupons`` and ``/v1/promotion_codes``, a
generic ``POST /coupons`` and ``POST /webhook``; SMTP on a second port (aiosmtpd).

Control (JSON): ``GET /_sandbox/requests?api=&offset=&limit=``, ``GET /_sandbox/stats`` (counts,
duplicates), ``GET /_sandbox/deliveries?key=``, ``POST /_sandbox/faults`` and
``POST /_sandbox/reset``. Callbacks (``clm_core.delivery.callbacks``): ``POST
/_sandbox/callbacks`` sets the web service URL and the event rates, ``GET
/_sandbox/callbacks?ids=1`` shows what was posted and acknowledged, ``POST /_sandbox/inbound``
({api, from, body}) makes a customer send an SMS. Twilio's message list (``GET
.../Messages.json?To=&DateSent>=``) lists what the sandbox accepted, for reconciliation.

Faults are drawn per request before it is accepted, so a faulted request delivers nothing:
``rate_429`` (with ``Retry-After``), ``rate_500``, ``rate_timeout`` (answer only after
``timeout_seconds``, past the client's timeout), ``rate_drop`` (connection closed mid-response),
``rate_accept_then_timeout`` (delivered, then too slow: the client cannot know it went through),
and ``optout`` / ``invalid`` address lists answered with each API's own codes.

``idempotency`` (default on) makes every API honour ``Idempotency-Key`` the way Stripe does (a
replay returns the saved response and delivers nothing), and SendGrid personalizations their
``custom_args.clm_key``; with it off, every request delivers, so a resend shows as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clm_core.delivery.callbacks import CallbackSender
from clm_core.delivery.providers.sms import aliyun_signature

FAULT_KEYS = {
    "rate_400",
    "rate_401",
    "rate_429",
    "rate_500",
    "rate_timeout",
    "rate_drop",
    "rate_accept_then_timeout",
    "retry_after",
    "timeout_seconds",
    "optout",
    "invalid",
    "seed",
    "idempotency",
    "apis",
    "aliyun_secrets",
}


@dataclass
class Faults:
    rate_400: float = 0.0  # the provider rejects the request: permanent for those messages
    rate_401: float = 0.0  # the API key was revoked: the dispatcher halts the channel
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_drop: float = 0.0
    rate_accept_then_timeout: float = 0.0
    retry_after: int = 1
    timeout_seconds: float = 15.0
    optout: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    seed: int | None = None
    idempotency: bool = True
    apis: set[str] | None = None  # None: every API
    aliyun_secrets: dict[str, str] = field(default_factory=lambda: {
        "sandbox-access_key_id": "sandbox-access_key_secret"})


class SandboxStore:
    """Everything the sandbox received, in memory. Safe to read from another thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults = Faults()
        self.rng = random.Random()
        self.callbacks = CallbackSender()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: list[dict[str, Any]] = []
            self.deliveries: list[dict[str, Any]] = []
            self.delivered: Counter[str] = Counter()
            self.replays = 0
            self.saved: dict[tuple[str, str], tuple[int, Any, dict[str, str]]] = {}
        self.callbacks.reset()

    def set_faults(self, spec: dict[str, Any]) -> Faults:
        unknown = set(spec) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(FAULT_KEYS))}")
        values = {**spec}
        for name in ("optout", "invalid", "apis"):
            if values.get(name) is not None:
                values[name] = set(values[name])
        with self.lock:
            self.faults = Faults(**values)
            self.rng = random.Random(self.faults.seed)
        return self.faults

    def draw(self, api: str) -> str | None:
        f = self.faults
        if f.apis is not None and api not in f.apis:
            return None
        x = self.rng.random()
        for name, rate in (
            ("400", f.rate_400),
            ("401", f.rate_401),
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("timeout", f.rate_timeout),
            ("accept_then_timeout", f.rate_accept_then_timeout),
        ):
            if x < rate:
                return name
            x -= rate
        return None

    def drop(self, api: str) -> bool:
        f = self.faults
        return (
            f.rate_drop > 0
            and (f.apis is None or api in f.apis)
            and self.rng.random() < f.rate_drop
        )

    def record(self, api: str, request: Request, body: bytes, fault: str | None) -> dict[str, Any]:
        auth = request.headers.get("authorization", "")
        entry = {
            "id": len(self.requests) + 1,
            "at": time.time(),
            "api": api,
            "method": request.method,
            "path": request.url.path,
            "content_type": request.headers.get("content-type"),
            # What the sandbox keeps of credentials: only the scheme.
            "auth": auth.split(" ", 1)[0] if auth else None,
            "idempotency_key": request.headers.get("idempotency-key"),
            "body": body.decode("utf-8", "replace"),
            "fault": fault,
        }
        with self.lock:
            self.requests.append(entry)
        return entry

    def deliver(self, api: str, key: str | None, **record: Any) -> bool:
        """Record one accepted message; False when idempotency says it was delivered already."""
        with self.lock:
            if key and self.faults.idempotency and self.delivered[key]:
                self.replays += 1
                return False
            if key:
                self.delivered[key] += 1
            self.deliveries.append({"api": api, "key": key, "at": time.time(), **record})
        self.callbacks.on_delivery(api, key, record)
        return True

    def stats(self) -> dict[str, Any]:
        with self.lock:
            by_api = Counter(r["api"] for r in self.requests)
            faults = Counter(r["fault"] for r in self.requests if r["fault"])
            return {"requests": len(self.requests), "deliveries": len(self.deliveries),
                    "unique_keys": len(self.delivered),
                    "duplicates": sum(n - 1 for n in self.delivered.values() if n > 1),
                    "replays": self.replays, "by_api": dict(by_api), "faults": dict(faults)}


class _Drop(Exception):
    """Close the connection after a partial response."""


class _QuietDrops(logging.Filter):
    """Injected drops are not server errors: keep them out of the server's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Drop))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


API_PATHS = (
    ("/v3/mail/send", "sendgrid"),
    ("/2010-04-01/", "twilio"),
    ("/v1/", "stripe"),
    ("/coupons", "coupon_api"),
    ("/webhook", "webhook"),
    ("/_sandbox", ""),
    ("/v3/", "mailgun"),
)


def api_of(path: str) -> str:
    """Which provider API a path belongs to ("" for the control endpoints)."""
    if path == "/":
        return "aliyun"
    return next((api for prefix, api in API_PATHS if path.startswith(prefix)), "")


class Form:
    """A parsed form body (urlencoded or multipart), keeping repeated fields."""

    def __init__(self, body: bytes, content_type: str):
        self.items: list[tuple[str, str]] = []
        if content_type.startswith("multipart/form-data"):
            msg = message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body,
                                     policy=policy.HTTP)
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name:
                    self.items.append((str(name), str(part.get_content()).strip("\r\n")))
        else:
            self.items = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)

    def get(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.items if k == name), default)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def dict(self) -> dict[str, str]:
        return dict(self.items)


class SandboxApp:
    def __init__(self, store: SandboxStore):
        self.store = store
        self.app = Starlette(routes=[
            Route("/v3/mail/send", self.sendgrid, methods=["POST"]),
            Route("/v3/{domain}/messages", self.mailgun, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio_list, methods=["GET"]),
            Route("/", self.aliyun, methods=["POST", "GET"]),
            Route("/v1/coupons", self.stripe, methods=["POST"]),
            Route("/v1/promotion_codes", self.stripe, methods=["POST"]),
            Route("/coupons", self.coupon_api, methods=["POST"]),
            Route("/webhook", self.webhook, methods=["POST"]),
            Route("/_sandbox/requests", self.list_requests),
            Route("/_sandbox/deliveries", self.list_deliveries),
            Route("/_sandbox/stats", self.get_stats),
            Route("/_sandbox/faults", self.faults, methods=["GET", "POST"]),
            Route("/_sandbox/reset", self.reset, methods=["POST"]),
            Route("/_sandbox/callbacks", self.callbacks, methods=["GET", "POST"]),
            Route("/_sandbox/inbound", self.inbound, methods=["POST"]),
        ])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = api_of(scope["path"])
        if api and self.store.drop(api):
            request = Request(scope, receive)
            self.store.record(api, request, await request.body(), "drop")
            # A response that stops half-way; raising makes the server close the connection.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", b"1000"),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
            raise _Drop(scope["path"])
        await self.app(scope, receive, send)

    # --- shared request handling ------------------------------------------------------------

    async def _begin(self, api: str, request: Request) -> tuple[bytes, Response | None]:
        """Record the request; return a fault or replay response when one applies."""
        try:
            body = await request.body()
        except ClientDisconnect:  # the client gave up (timeout, killed): nothing to answer
            return b"", Response(status_code=499)
        fault = request.state.fault = self.store.draw(api)
        self.store.record(api, request, body, fault)
        if not request.headers.get("authorization") and api not in {
            "aliyun",
            "webhook",
            "coupon_api",
        }:
            return body, JSONResponse({"message": "authentication required"}, status_code=401)
        if fault in ("400", "401"):
            return body, self._error(api, int(fault))
        if fault == "429":
            return body, self._error(
                api, 429, headers={"Retry-After": str(self.store.faults.retry_after)}
            )
        if fault == "500":
            return body, self._error(api, 500)
        if fault == "timeout":
            await asyncio.sleep(self.store.faults.timeout_seconds)
            return body, self._error(api, 504)
        key = request.headers.get("idempotency-key")
        if key and self.store.faults.idempotency:
            saved = self.store.saved.get((request.url.path, key))
            if saved is not None:
                with self.store.lock:
                    self.store.replays += 1
                status, payload, headers = saved
                return body, JSONResponse(payload, status_code=status,
                                          headers={**headers, "Idempotent-Replayed": "true"})
        return body, None

    async def _finish(self, request: Request, status: int, payload: Any,
                      headers: dict[str, str] | None = None) -> Response:
        key = request.headers.get("idempotency-key")
        if key and status < 500:
            self.store.saved[(request.url.path, key)] = (status, payload, headers or {})
        if request.state.fault == "accept_then_timeout":
            await asyncio.sleep(self.store.faults.timeout_seconds)
        return JSONResponse(payload, status_code=status, headers=headers)

    @staticmethod
    def _error(api: str, status: int, headers: dict[str, str] | None = None) -> Response:
        text = {400: "Bad Request: the request was rejected", 401: "Unauthorized: the API key is "
                "invalid or revoked", 429: "Too Many Requests"}.get(
            status, "Internal Server Error")
        bodies: dict[str, dict[str, Any]] = {
            "sendgrid": {"errors": [{"field": None, "message": text}]},
            "twilio": {
                "code": {400: 21606, 401: 20003, 429: 20429}.get(status, 20500),
                "message": text,
                "status": status,
            },
            "stripe": {
                "error": {
                    "type": "invalid_request_error" if status in (400, 401) else "api_error",
                    "code": "rate_limit" if status == 429 else None,
                    "message": text,
                }
            },
        }
        return JSONResponse(bodies.get(api, {"message": text}), status_code=status, headers=headers)

    # --- provider APIs ----------------------------------------------------------------------

    async def sendgrid(self, request: Request) -> Response:
        raw, early = await self._begin("sendgrid", request)
        if early:
            return early
        try:
            body = json.loads(raw)
            people = body["personalizations"]
            content = {c["type"]: c["value"] for c in body.get("content", [])}
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"errors": [{"field": None, "message": "Bad Request"}]}, status_code=400
            )
        if not 1 <= len(people) <= 1000:
            return JSONResponse({"errors": [{"field": "personalizations",
                                             "message": "between 1 and 1000 personalizations"}]},
                                status_code=400)
        for i, p in enumerate(people):
            to = (p.get("to") or [{}])[0].get("email", "")
            if "@" not in to or to in self.store.faults.invalid:
                return JSONResponse({"errors": [{"field": f"personalizations.{i}.to",
                                                 "message": "Does not contain a valid address."}]},
                                    status_code=400)
        xid = uuid.uuid4().hex[:22]
        for p in people:
            subs = p.get("substitutions") or {}
            text, html = content.get("text/plain", ""), content.get("text/html", "")
            for tag, value in subs.items():
                text, html = text.replace(tag, value), html.replace(tag, value)
            self.store.deliver(
                "sendgrid",
                (p.get("custom_args") or {}).get("clm_key"),
                to=p["to"][0]["email"],
                subject=p.get("subject") or body.get("subject"),
                text=text,
                html=html,
                headers=p.get("headers") or {},
                categories=body.get("categories"),
                message_id=xid,
            )
        response = await self._finish(request, 202, {}, {"X-Message-ID": xid})
        response.body = b""
        response.headers["content-length"] = "0"
        return response

    async def mailgun(self, request: Request) -> Response:
        raw, early = await self._begin("mailgun", request)
        if early:
            return early
        form = Form(raw, request.headers.get("content-type", ""))
        to = form.get("to")
        if "@" not in to or to in self.store.faults.invalid:
            return await self._finish(
                request, 400, {"message": "'to' parameter is not a valid address."}
            )
        mid = f"<{uuid.uuid4().hex}@{request.path_params['domain']}>"
        self.store.deliver("mailgun", form.get("v:clm_key") or None, to=to,
                           subject=form.get("subject"), text=form.get("text"),
                           html=form.get("html"), tags=form.getlist("o:tag"),
                           headers={k[2:]: v for k, v in form.items if k.startswith("h:")},
                           message_id=mid)
        return await self._finish(request, 200, {"id": mid, "message": "Queued. Thank you."})

    async def twilio(self, request: Request) -> Response:
        raw, early = await self._begin("twilio", request)
        if early:
            return early
        form = Form(raw, request.headers.get("content-type", ""))
        to, text = form.get("To"), form.get("Body")
        if to in self.store.faults.optout:
            return await self._finish(request, 400, {"code": 21610, "status": 400, "message":
                                      "Attempt to send to unsubscribed recipient"})
        if not to.startswith("+") or not to[1:].isdigit() or to in self.store.faults.invalid:
            return await self._finish(
                request,
                400,
                {
                    "code": 21211,
                    "status": 400,
                    "message": f"The 'To' number {to} is not a valid phone number.",
                },
            )
        sid = "SM" + uuid.uuid4().hex
        segments = 1 if len(text) <= 160 else -(-len(text) // 153)
        self.store.deliver(
            "twilio",
            request.headers.get("idempotency-key"),
            to=to,
            text=text,
            message_id=sid,
            sender=form.get("From") or form.get("MessagingServiceSid"),
            status_callback=form.get("StatusCallback") or None,
        )
        return await self._finish(request, 201, {"sid": sid, "status": "queued", "to": to,
                                                 "body": text, "num_segments": str(segments)})

    async def aliyun(self, request: Request) -> Response:
        raw, early = await self._begin("aliyun", request)
        if early:
            return early
        params = dict(request.query_params) if request.method == "GET" else \
            Form(raw, request.headers.get("content-type", "")).dict()
        request_id = uuid.uuid4().hex.upper()
        signature = params.pop("Signature", "")
        secret = self.store.faults.aliyun_secrets.get(params.get("AccessKeyId", ""))
        if secret is None:
            return JSONResponse({"Code": "InvalidAccessKeyId.NotFound", "RequestId": request_id,
                                 "Message": "Specified access key is not found."}, status_code=404)
        if aliyun_signature(params, secret, request.method) != signature:
            return JSONResponse(
                {
                    "Code": "SignatureDoesNotMatch",
                    "RequestId": request_id,
                    "Message": "Specified signature is not matched with our calculation.",
                },
                status_code=400,
            )
        phone = params.get("PhoneNumbers", "")
        full = phone if len(phone) != 11 else "86" + phone
        code = (
            "isv.BLACK_KEY_CONTROL_LIMIT"
            if "+" + full in self.store.faults.optout
            else "isv.MOBILE_NUMBER_ILLEGAL"
            if not phone.isdigit() or "+" + full in self.store.faults.invalid
            else "OK"
        )
        if code != "OK":  # Aliyun reports errors inside HTTP 200
            return await self._finish(
                request, 200, {"Code": code, "Message": code, "RequestId": request_id}
            )
        biz = f"{random.randrange(10**17, 10**18)}^0"
        self.store.deliver("aliyun", params.get("OutId") or None, to=phone,
                           template=params.get("TemplateCode"),
                           params=json.loads(params.get("TemplateParam") or "{}"),
                           sign_name=params.get("SignName"), message_id=biz)
        return await self._finish(request, 200, {"Code": "OK", "Message": "OK", "BizId": biz,
                                                 "RequestId": request_id})

    async def stripe(self, request: Request) -> Response:
        raw, early = await self._begin("stripe", request)
        if early:
            return early
        form = Form(raw, request.headers.get("content-type", "")).dict()
        key = request.headers.get("idempotency-key")
        if request.url.path.endswith("coupons"):
            if not (form.get("percent_off") or form.get("amount_off")):
                return await self._finish(
                    request,
                    400,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "code": "parameter_missing",
                            "param": "percent_off",
                            "message": "Must provide percent_off or amount_off",
                        }
                    },
                )
            obj = {"id": uuid.uuid4().hex[:8], "object": "coupon", **form}
        else:
            obj = {"id": "promo_" + uuid.uuid4().hex[:14], "object": "promotion_code", **form}
            self.store.deliver(
                "stripe",
                key,
                code=form.get("code"),
                coupon=form.get("promotion[coupon]"),
                expires_at=form.get("expires_at"),
                message_id=obj["id"],
            )
        return await self._finish(request, 200, obj)

    async def coupon_api(self, request: Request) -> Response:
        raw, early = await self._begin("coupon_api", request)
        if early:
            return early
        data = json.loads(raw or b"{}")
        cid = "cpn_" + uuid.uuid4().hex[:12]
        if not self.store.deliver("coupon_api", data.get("idempotency_key"), message_id=cid, **{
                k: v for k, v in data.items() if k != "idempotency_key"}):
            return await self._finish(
                request, 409, {"message": "code exists", "code": data.get("code")}
            )
        return await self._finish(request, 201, {"id": cid, "code": data.get("code")})

    async def webhook(self, request: Request) -> Response:
        raw, early = await self._begin("webhook", request)
        if early:
            return early
        data = json.loads(raw or b"{}")
        rid = uuid.uuid4().hex
        self.store.deliver(
            "webhook",
            request.headers.get("idempotency-key"),
            to=data.get("to"),
            payload=data,
            signature=request.headers.get("x-clm-signature"),
            message_id=rid,
        )
        return await self._finish(request, 200, {"ok": True}, {"X-Request-ID": rid})

    async def twilio_list(self, request: Request) -> Response:
        """Twilio's message list: newest first, filtered by ``To`` and ``DateSent>=`` /
        ``DateSent<=`` (ISO dates or times, UTC), paged by ``PageSize`` and ``Page``."""
        if not request.headers.get("authorization"):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401},
                                status_code=401)
        q = request.query_params
        to = q.get("To")
        lo, hi = q.get("DateSent>="), q.get("DateSent<=")
        size = min(1000, int(q.get("PageSize", 50)))
        page = int(q.get("Page", 0))

        def stamp(value: str) -> float:
            when = datetime.fromisoformat(value)  # Python 3.11 reads a trailing Z as UTC
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

        with self.store.lock:
            rows = [
                d
                for d in self.store.deliveries
                if d["api"] == "twilio"
                and (to is None or d["to"] == to)
                and (lo is None or d["at"] >= stamp(lo))
                and (hi is None or d["at"] <= stamp(hi))
            ]
        rows.sort(key=lambda d: d["at"], reverse=True)
        chosen = rows[page * size:(page + 1) * size]
        fmt = "%a, %d %b %Y %H:%M:%S +0000"
        messages = [{"sid": d["message_id"], "to": d["to"], "from": d.get("sender"),
                     "body": d["text"], "status": "delivered", "num_segments": "1",
                     "date_created": datetime.fromtimestamp(d["at"], UTC).strftime(fmt),
                     "date_sent": datetime.fromtimestamp(d["at"], UTC).strftime(fmt)}
                    for d in chosen]
        more = (page + 1) * size < len(rows)
        following = {k: v for k, v in q.items() if k != "Page"} | {"Page": str(page + 1)}
        return JSONResponse({"messages": messages, "page": page, "page_size": size,
                             "next_page_uri": f"{request.url.path}?{urlencode(following)}"
                                              if more else None})

    # --- control ----------------------------------------------------------------------------

    async def callbacks(self, request: Request) -> Response:
        sender = self.store.callbacks
        if request.method == "POST":
            try:
                sender.configure(json.loads(await request.body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(sender.snapshot(with_ids=request.query_params.get("ids") == "1"))

    async def inbound(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body() or b"{}")
            self.store.callbacks.inbound(str(data.get("api", "twilio")), str(data["from"]),
                                         str(data["body"]), str(data.get("to", "+15005550006")))
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": f"inbound needs api, from, body: {exc}"}, status_code=400)
        return JSONResponse({"queued": True})

    async def list_requests(self, request: Request) -> Response:
        api = request.query_params.get("api")
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", 100))
        rows = [r for r in self.store.requests if api is None or r["api"] == api]
        return JSONResponse({"total": len(rows), "requests": rows[offset:offset + limit]})

    async def list_deliveries(self, request: Request) -> Response:
        key = request.query_params.get("key")
        if key:
            return JSONResponse(
                {"deliveries": [d for d in self.store.deliveries if d["key"] == key]}
            )
        return JSONResponse({"counts": dict(self.store.delivered)})

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.store.stats())

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.store.set_faults(json.loads(await request.body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        f = self.store.faults
        return JSONResponse(
            {
                k: sorted(v) if isinstance(v, set) else v
                for k, v in f.__dict__.items()
                if k != "aliyun_secrets"
            }
        )

    async def reset(self, request: Request) -> Response:
        self.store.reset()
        return JSONResponse({"ok": True})


class SmtpSandbox:
    """aiosmtpd handler: stores what arrives (parsed with the ``email`` package); unknown
    recipients get 550, and the 429/500 fault shares become 451 (try again later)."""

    def __init__(self, store: SandboxStore):
        self.store = store

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.store.faults.invalid or address in self.store.faults.optout:
            return "550 5.1.1 <%s>: user unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        fault = self.store.draw("smtp")
        with self.store.lock:
            self.store.requests.append({"id": len(self.store.requests) + 1, "at": time.time(),
                                        "api": "smtp", "fault": fault, "to": envelope.rcpt_tos})
        if fault in {"429", "500", "timeout", "drop"}:
            return "451 4.3.0 Temporary failure, try again later"
        msg = message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        self.store.deliver("smtp", msg.get("X-CLM-Key"), to=envelope.rcpt_tos[0],
                           subject=str(msg["Subject"]), text=text.get_content() if text else None,
                           html=html.get_content() if html else None,
                           headers={k: str(v) for k, v in msg.items()},
                           message_id=msg.get("Message-ID"))
        return "250 2.0.0 OK queued"


class SandboxServer:
    """The sandbox (HTTP, and SMTP when ``smtp_port`` is not None) in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, smtp_port: int | None = None,
                 store: SandboxStore | None = None):
        self.host, self.port, self.smtp_port = host, port, smtp_port
        self.store = store or SandboxStore()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._smtp: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def smtp_url(self) -> str:
        return f"smtp://{self.host}:{self.smtp_port}"

    def start(self) -> SandboxServer:
        import socket

        import uvicorn

        # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections; without it
        # every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(SandboxApp(self.store), log_level="warning", access_log=False,
                                lifespan="off", timeout_keep_alive=30, backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="clm-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.02)
        if self.smtp_port is not None:
            from aiosmtpd.controller import Controller

            if not self.smtp_port:  # aiosmtpd needs a real port to check it started
                with socket.socket() as probe:
                    probe.bind((self.host, 0))
                    self.smtp_port = probe.getsockname()[1]
            self._smtp = Controller(
                SmtpSandbox(self.store), hostname=self.host, port=self.smtp_port
            )
            self._smtp.start()
        return self

    def stop(self) -> None:
        self.store.callbacks.stop()
        if self._smtp is not None:
            self._smtp.stop()
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(port: int = 0, smtp_port: int = -1) -> tuple[Any, str]:
    """``clm sandbox`` in a process of its own (benchmarks, demos): returns (process, url)."""
    import socket
    import subprocess
    import sys

    import httpx

    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "clm", "sandbox", "--port", str(port),
                             "--smtp-port", str(smtp_port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/_sandbox/stats", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the sandbox process did not start") from None
            time.sleep(0.1)
