"""Provider callbacks parsed into one normalised event type.

Each parser takes the exact body a provider sent and returns :class:`ProviderEvent` items, or
raises :class:`CallbackError` naming the item and field that is wrong: one malformed item
refuses the whole request, so nothing of a bad batch is stored (the provider's retry, or an
operator, sees the whole batch again).

Kinds, by what they mean to CLM:

    accepted      the provider took the message (processed, queued, sent): no status change
    delivered     reached the mailbox / handset
    deferred      delayed, the provider keeps trying
    bounced       refused; ``permanent`` says hard (suppress) or soft (count)
    undelivered   the provider gave up (dropped, failed SMS); ``permanent`` suppresses as invalid
    opened, clicked               engagement; ``machine`` marks machine opens and bot clicks
    complained, unsubscribed      suppress at once
    inbound       an SMS the customer sent (keywords STOP/START/HELP are handled by consent)
    other         anything else the provider reports: stored, not applied
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from clm_core.errors import CallbackError

KINDS = ("accepted", "delivered", "deferred", "bounced", "undelivered", "opened", "clicked",
         "complained", "unsubscribed", "inbound", "other")


@dataclass(frozen=True)
class ProviderEvent:
    provider: str  # sendgrid | mailgun | twilio | aliyun
    event_id: str  # the provider's event id, or the fields that identify the event
    kind: str
    occurred_at: datetime  # naive UTC
    channel: str  # email | sms
    message_key: str | None = None  # the outbox key the send carried
    provider_message_id: str | None = None
    address: str | None = None  # email or E.164 phone
    permanent: bool = False
    machine: bool = False
    code: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # url, reason, inbound text


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _need(item: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    value = item.get(name)
    if value is None or value == "" or not isinstance(value, kind) or isinstance(value, bool) \
            and kind is not bool:
        raise CallbackError(f"{where}: field {name!r} is missing or not a {_type_name(kind)}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "string", int: "number", float: "number", dict: "object",
                        bool: "boolean", list: "list"}.get(k, k.__name__) for k in kinds)


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CallbackError(f"{what} body is not JSON: {exc}") from None


def _short(text: Any, limit: int = 200) -> str | None:
    return None if text is None else str(text)[:limit]


# --- SendGrid ---------------------------------------------------------------------------------

_SENDGRID = {"processed": "accepted", "delivered": "delivered", "deferred": "deferred",
             "dropped": "undelivered", "open": "opened", "click": "clicked",
             "spamreport": "complained", "unsubscribe": "unsubscribed",
             "group_unsubscribe": "unsubscribed", "bounce": "bounced"}


_DETAIL_KEYS = ("reason", "url", "type", "status")


def parse_sendgrid(body: bytes) -> list[ProviderEvent]:
    """SendGrid's batch (a JSON array of events). Written for the common case, a valid batch
    of a few hundred events per request: the checks are inline, the error messages are built
    only for an item that fails them, and each distinct timestamp is converted once."""
    items = _json(body, "SendGrid")
    if not isinstance(items, list):
        raise CallbackError("SendGrid body must be a JSON array of events")
    out = []
    times: dict[Any, datetime] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CallbackError(f"SendGrid event [{i}]: not an object")
        get = item.get
        name: Any = get("event")
        eid: Any = get("sg_event_id")
        ts: Any = get("timestamp")
        if not (type(name) is str and name and type(eid) is str and eid
                and type(ts) in (int, float)):
            where = f"SendGrid event [{i}]"
            name = _need(item, "event", where)
            eid = _need(item, "sg_event_id", where)
            ts = _need(item, "timestamp", where, (int, float))
        at = times.get(ts)
        if at is None:
            at = times[ts] = _utc(float(ts))
        kind = _SENDGRID.get(name, "other")
        detail = {k: _short(item[k]) for k in _DETAIL_KEYS if k in item}
        if kind == "other":
            detail["event"] = name[:40]
        smtp_id, key, email, status = (get("sg_message_id"), get("clm_key"), get("email"),
                                       get("status"))
        out.append(ProviderEvent(
            "sendgrid", eid[:100], kind, at, "email",
            key if type(key) is str and len(key) <= 128 else _short(key, 128),
            str(smtp_id).split(".", 1)[0] if smtp_id else None,
            email if type(email) is str and len(email) <= 254 else _short(email, 254),
            kind == "bounced" and get("type", "bounce") != "blocked",
            bool(get("sg_machine_open")), None if status is None else str(status)[:64],
            detail))
    return out


# --- Mailgun ----------------------------------------------------------------------------------

_MAILGUN = {"accepted": "accepted", "rejected": "undelivered", "delivered": "delivered",
            "opened": "opened", "clicked": "clicked", "unsubscribed": "unsubscribed",
            "complained": "complained", "failed": "bounced"}


def mailgun_signature_block(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(signature, event-data) of a Mailgun webhook body."""
    data = _json(body, "Mailgun")
    if not isinstance(data, dict):
        raise CallbackError("Mailgun body must be a JSON object")
    sig, event = data.get("signature"), data.get("event-data")
    if not isinstance(sig, dict):
        raise CallbackError("Mailgun body: 'signature' object missing")
    if not isinstance(event, dict):
        raise CallbackError("Mailgun body: 'event-data' object missing")
    return sig, event


def _object(item: dict[str, Any], name: str) -> dict[str, Any]:
    """A nested object, or {} when it is absent or not an object (optional parts)."""
    value = item.get(name)
    return value if isinstance(value, dict) else {}


def parse_mailgun(event: dict[str, Any]) -> ProviderEvent:
    where = "Mailgun event-data"
    name = _need(event, "event", where)
    eid = _need(event, "id", where)
    ts = _need(event, "timestamp", where, (int, float))
    kind = _MAILGUN.get(name, "other")
    status = _object(event, "delivery-status")
    if name == "failed" and event.get("severity") == "temporary":
        permanent = False
    else:
        permanent = kind in ("bounced",)
    variables = _object(event, "user-variables")
    mid = _object(_object(event, "message"), "headers").get("message-id")
    detail: dict[str, Any] = {k: _short(event[k]) for k in ("reason", "url", "severity")
                              if k in event}
    if status.get("message"):
        detail["status"] = _short(status.get("message"))
    client = _object(event, "client-info")
    return ProviderEvent(
        "mailgun", f"{eid}:{name}"[:100], kind, _utc(float(ts)), "email",
        message_key=_short(variables.get("clm_key"), 128),
        provider_message_id=str(mid).strip("<>") if mid else None,
        address=_short(event.get("recipient"), 254), permanent=permanent,
        machine=bool(client.get("bot")), code=_short(status.get("code"), 64), detail=detail)


# --- Twilio -----------------------------------------------------------------------------------

# Error codes after which the number will not take SMS: opted out, or not a (mobile) number.
TWILIO_OPTED_OUT = {"21610"}
TWILIO_INVALID = {"21211", "21614", "30005", "30006"}
_TWILIO = {"delivered": "delivered", "undelivered": "undelivered", "failed": "undelivered",
           "queued": "accepted", "accepted": "accepted", "scheduled": "accepted",
           "sending": "accepted", "sent": "accepted"}


def parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CallbackError(f"form body cannot be parsed: {exc}") from None


def parse_twilio_status(
    form: dict[str, str], query: dict[str, str], now: datetime
) -> ProviderEvent:
    where = "Twilio status callback"
    sid = _need(form, "MessageSid", where)
    status = _need(form, "MessageStatus", where)
    code = form.get("ErrorCode") or None
    kind = _TWILIO.get(status, "other")
    return ProviderEvent(
        "twilio", f"{sid}:{status}:{code or ''}", kind, now, "sms",
        message_key=_short(query.get("clm_key"), 128), provider_message_id=sid[:128],
        address=_short(form.get("To"), 16),
        permanent=code in TWILIO_INVALID or code in TWILIO_OPTED_OUT, code=code,
        detail={"status": status} if kind == "other" else {})


def parse_twilio_inbound(form: dict[str, str], now: datetime) -> ProviderEvent:
    where = "Twilio inbound SMS"
    sid = _need(form, "MessageSid", where)
    sender = _need(form, "From", where)
    return ProviderEvent("twilio", f"in:{sid}", "inbound", now, "sms", provider_message_id=sid,
                         address=sender[:16], detail={"text": form.get("Body", "")[:1600],
                                                      "to": form.get("To", "")[:16],
                                                      "opt_out_type": form.get("OptOutType")})


# --- Aliyun -----------------------------------------------------------------------------------

ALIYUN_INVALID = {"MOBILE_NUMBER_ILLEGAL", "MOBILE_NOT_ON_SERVICE"}
_BEIJING = timedelta(hours=8)


def aliyun_phone(number: str) -> str:
    """Aliyun reports mainland numbers without the country code."""
    digits = number.strip().lstrip("+")
    if len(digits) == 11 and digits.startswith("1"):
        return "+86" + digits
    return "+" + digits


def _beijing_time(value: Any, where: str, name: str) -> datetime:
    """Aliyun's times are ``yyyy-MM-dd HH:mm:ss`` in Beijing time (UTC+8)."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S") - _BEIJING
    except ValueError:
        raise CallbackError(
            f"{where}: field {name!r} is not a 'yyyy-MM-dd HH:mm:ss' time"
        ) from None


def _aliyun_items(body: bytes, what: str) -> list[dict[str, Any]]:
    items = _json(body, what)
    if not isinstance(items, list):
        raise CallbackError(f"{what} body must be a JSON array")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CallbackError(f"{what} [{i}]: not an object")
    return items


def parse_aliyun_reports(body: bytes) -> list[ProviderEvent]:
    out = []
    for i, item in enumerate(_aliyun_items(body, "Aliyun SmsReport")):
        where = f"Aliyun SmsReport [{i}]"
        phone = _need(item, "phone_number", where)
        success = _need(item, "success", where, bool)
        report_time = _beijing_time(_need(item, "report_time", where), where, "report_time")
        code = str(item.get("err_code") or ("DELIVERED" if success else ""))
        biz = str(item.get("biz_id") or "")
        out.append(ProviderEvent(
            "aliyun", f"{biz}:{phone}:{code}:{item['report_time']}"[:100],
            "delivered" if success else "undelivered", report_time, "sms",
            message_key=_short(item.get("out_id"), 128), provider_message_id=biz or None,
            address=aliyun_phone(phone), permanent=code in ALIYUN_INVALID, code=code[:64],
            detail={"reason": _short(item.get("err_msg"))} if not success else {}))
    return out


def parse_aliyun_inbound(body: bytes) -> list[ProviderEvent]:
    out = []
    for i, item in enumerate(_aliyun_items(body, "Aliyun SmsUp")):
        where = f"Aliyun SmsUp [{i}]"
        phone = _need(item, "phone_number", where)
        content = item.get("content")
        if not isinstance(content, str):
            raise CallbackError(f"{where}: field 'content' is missing or not a string")
        sent = _beijing_time(_need(item, "send_time", where), where, "send_time")
        seq = item.get("sequence_id")
        if seq is None or isinstance(seq, bool) or not isinstance(seq, (int, str)):
            raise CallbackError(
                f"{where}: field 'sequence_id' is missing or not a number or string"
            )
        out.append(ProviderEvent("aliyun", f"in:{phone}:{seq}:{item['send_time']}"[:100], "inbound",
                                 sent, "sms", address=aliyun_phone(phone),
                                 detail={"text": content[:1600],
                                         "to": _short(item.get("dest_code"), 32)}))
    return out
