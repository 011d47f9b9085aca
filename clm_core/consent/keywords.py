"""Inbound SMS keywords: what a reply means, and its effect on the ledger.

``interpret(text)`` is pure. The whole message must be the keyword (after normalising), as
carriers do: "STOP" and " stop. " opt out, "please don't stop" does not. Normalising: Unicode
NFKC (full-width "ＳＴＯＰ" or "Ｔ" become ASCII), case folded, surrounding whitespace and
punctuation (ASCII and CJK) removed, inner whitespace collapsed.

- withdraw: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPT OUT (and OPTOUT);
  Chinese T, TD, N, R, 退订, 拒收 (the replies Chinese carriers and senders use)
- restore: START, UNSTOP, YES
- help: HELP (and INFO)

``apply_inbound`` records the change for every customer with that number (or for the bare
number when nobody has it, so the number is suppressed all the same) in the caller's
transaction, keyed by the provider's message id: a redelivered webhook changes nothing and
gets no second reply. It returns at most one reply text, and only a confirmation or help text,
never marketing.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from clm_core.consent import ledger
from clm_core.consent.config import ConsentConfig
from clm_core.db import tables as t

Kind = Literal["withdraw", "restore", "help"]

WITHDRAW = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPT OUT",
            "OPTOUT", "T", "TD", "N", "R", "退订", "拒收"}
RESTORE = {"START", "UNSTOP", "YES"}
HELP = {"HELP", "INFO"}
CHINESE = {"T", "TD", "N", "R", "退订", "拒收"}
_EDGE = re.compile(r"^[\s\W_]+|[\s\W_]+$", re.UNICODE)


@dataclass(frozen=True)
class Keyword:
    kind: Kind
    keyword: str  # as normalised, e.g. "STOP", "退订"

    @property
    def chinese(self) -> bool:
        return self.keyword in CHINESE


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text or "").upper()
    return re.sub(r"\s+", " ", _EDGE.sub("", folded))


def interpret(text: str) -> Keyword | None:
    """The keyword a whole inbound message is, or None for anything else."""
    word = normalise(text)
    for kind, words in (("withdraw", WITHDRAW), ("restore", RESTORE), ("help", HELP)):
        if word in words:
            return Keyword(kind, word)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True)
class InboundResult:
    keyword: Keyword | None
    changed: int  # ledger rows written
    reply: str | None  # at most one reply; None for a replay or an ordinary message


def apply_inbound(conn: sa.Connection, *, phone: str, text: str, received_at: datetime,
                  event_id: str, provider: str, config: ConsentConfig,
                  store: str) -> InboundResult:
    """Apply one inbound SMS from ``phone`` (E.164). ``event_id`` is the provider's id of the
    message (Twilio MessageSid, Aliyun's id), which makes a redelivery a no-op."""
    keyword = interpret(text)
    if keyword is None:
        return InboundResult(None, 0, None)
    c = t.customers
    people = conn.execute(sa.select(c.c.id, c.c.locale).where(c.c.phone == phone)
                          .order_by(c.c.id)).all()
    locale = "zh-CN" if keyword.chinese else (
        "zh-CN" if people and (people[0].locale or "").lower().startswith("zh") else "en")
    if keyword.kind == "help":
        # Help changes nothing, so the ledger cannot tell a redelivery: the receiver, which
        # stores each inbound message once by its id, calls this only for a new one.
        return InboundResult(keyword, 0, config.sms_reply("help", locale, store))
    action = "withdrawn" if keyword.kind == "withdraw" else "granted"
    evidence = {"provider": provider, "provider_event_id": event_id, "keyword": keyword.keyword}
    written = 0
    ids: list[int | None] = [int(p.id) for p in people] or [None]
    for cid in ids:
        got = ledger.record_change(
            conn, customer_id=cid, channel="sms", action=action,
            source="inbound_sms", occurred_at=received_at, address=phone,
            evidence_key=f"{provider}:{event_id}:{cid if cid is not None else phone}",
            evidence=evidence, wording_version=config.wording_version)
        written += got is not None
    reply = config.sms_reply("stop" if action == "withdrawn" else "start", locale, store)
    return InboundResult(keyword, written, reply if written else None)
