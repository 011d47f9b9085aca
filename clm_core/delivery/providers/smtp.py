"""SMTP (RFC 5321) over aiosmtplib with a small pool of open connections. Replies: 2yz sent,
4yz transient, 5yz permanent; 550/551/553 on a recipient mean the address is invalid."""

from __future__ import annotations

import asyncio
import hashlib
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import urlsplit

import aiosmtplib

from clm_core.delivery.model import Gate, Outbound, Outcome, SendResult
from clm_core.delivery.providers.base import ProviderConfig, pass_gate, redact

INVALID_RECIPIENT = {550, 551, 553}


def build_email(m: Outbound, sender: str, domain: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = m.to
    msg["Subject"] = m.subject or ""
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{hashlib.sha256(m.key.encode()).hexdigest()[:32]}@{domain}>"
    msg["X-CLM-Key"] = m.key
    for name, value in m.headers.items():
        msg[name] = value
    msg.set_content(m.text or "")
    if m.html:
        msg.add_alternative(m.html, subtype="html")
    return msg


class SmtpProvider:
    kind = "smtp"
    max_batch = 1

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.name = config.name
        self.idempotent = config.idempotent
        self.concurrency = config.concurrency
        url = urlsplit(config.base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 25
        self.sender = config.option("from", "CLM <shop@example.com>")
        self.domain = config.option("domain", "example.com")
        self.starttls = bool(config.option("starttls", False))
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(config.concurrency)
        self.gate: Gate | None = None

    async def _connection(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn.is_connected:
                return conn
        conn = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.config.timeout,
                               start_tls=self.starttls)
        await conn.connect()
        if self.config.secrets.get("username"):
            await conn.login(self.config.secrets["username"], self.config.secrets["password"])
        return conn

    def _fail(
        self, key: str, outcome: Outcome, code: str, text: str, ambiguous: bool = False
    ) -> SendResult:
        return SendResult(key, outcome, code=code, ambiguous=ambiguous,
                          message=redact(f"{self.name}: {code} {text}", self.config.secrets)[:500])

    async def send(self, batch: list[Outbound]) -> list[SendResult]:
        return list(await asyncio.gather(*(self.send_one(m) for m in batch)))

    async def send_one(self, m: Outbound) -> SendResult:
        async with self._slots:
            closed = await pass_gate(self.gate, [m.key], self.name)
            if closed:
                return closed[0]
            try:
                conn = await self._connection()
            except (aiosmtplib.SMTPException, OSError) as exc:
                return self._fail(m.key, Outcome.TRANSIENT, "connect", type(exc).__name__)
            try:
                msg = build_email(m, self.sender, self.domain)
                await conn.send_message(msg)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._idle.put_nowait(conn)
                refused = exc.recipients[0]
                outcome = (Outcome.REJECTED if refused.code in INVALID_RECIPIENT else
                           Outcome.PERMANENT if refused.code >= 500 else Outcome.TRANSIENT)
                result = self._fail(m.key, outcome, str(refused.code), refused.message)
                result.suppress = "invalid" if outcome is Outcome.REJECTED else None
                return result
            except aiosmtplib.SMTPResponseException as exc:
                self._idle.put_nowait(conn)
                outcome = Outcome.PERMANENT if exc.code >= 500 else Outcome.TRANSIENT
                return self._fail(m.key, outcome, str(exc.code), exc.message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                # Lost mid-transaction: the server may have queued it.
                conn.close()
                return self._fail(m.key, Outcome.TRANSIENT, type(exc).__name__.lower(), "",
                                  ambiguous=True)
            self._idle.put_nowait(conn)
            return SendResult.sent(m.key, str(msg["Message-ID"]))

    async def aclose(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            try:
                await conn.quit()
            except (aiosmtplib.SMTPException, OSError):
                conn.close()
