"""The deliverability guard: complaint and hard-bounce rates per channel and sending domain
over a rolling window, and the halt that protects a sender's reputation.

Mailbox providers judge a bulk sender by its complaint rate: Gmail asks for under 0.1% and
never reaching 0.3%. Above ``complaint_warn`` the run's summary and a Prefect event warn;
above ``complaint_halt`` the channel halts, the same way a revoked API key halts it (its
messages stay pending), and stays halted across runs (``channel_halts``) until an operator
runs ``clm resume CHANNEL``. Below ``guard_min_sent`` sends in the window a rate is too noisy
to halt on (one complaint in 200 mails is 0.5%): it only warns.

Rates are per cohort: of the messages sent in the window (``messages.sent_at``), the share
whose provider reported a complaint or a hard bounce (up to now). Counting the reports that
fall in the window instead compares two different sets of mail: the reports about a big send
just before the window's start land inside it while the send does not, and a simulated run
(every send stamped at its run's instant, the reports seconds later) put a whole week's
complaints over the next week's few retries (0.34% halted the demo at a true 0.1%). The
window moves with the run's clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.delivery.config import DeliveryConfig
from clm_core.delivery.outbox import retrying
from clm_core.feedback.config import WebhookConfig

m, pe, halts = t.messages, t.provider_events, t.channel_halts


@dataclass
class Rate:
    channel: str
    domain: str  # the sending domain of email; the provider's name for other channels
    sent: int
    complaints: int
    hard_bounces: int
    verdict: str = "ok"  # ok | warn | halt

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.hard_bounces / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complaint_rate": round(self.complaint_rate, 6),
                "bounce_rate": round(self.bounce_rate, 6)}

    def describe(self) -> str:
        return (f"{self.channel} {self.domain}: complaints {self.complaint_rate:.2%} "
                f"({self.complaints:,}/{self.sent:,}), hard bounces {self.bounce_rate:.2%} "
                f"({self.hard_bounces:,})")


def sending_domain(options: dict[str, Any], provider: str) -> str:
    sender = str(options.get("from") or "")
    address = sender.rsplit("<", 1)[-1].rstrip(">").strip()
    return address.rsplit("@", 1)[1].lower() if "@" in address else provider


def rates(engine: Engine, delivery: DeliveryConfig, now: datetime, window: timedelta,
          config: WebhookConfig) -> list[Rate]:
    domains = {p.name: sending_domain(p.options, p.name) if ch == "email" else p.name
               for ch, p in delivery.channels.items()}
    since = now - window
    with engine.connect() as conn:
        sent = conn.execute(sa.select(m.c.channel, m.c.provider, sa.func.count())
                            .where(m.c.status == "sent", m.c.sent_at > since, m.c.sent_at <= now,
                                   m.c.channel.in_(("email", "sms")))
                            .group_by(m.c.channel, m.c.provider)).all()
        bad = conn.execute(
            sa.select(m.c.channel, m.c.provider, pe.c.kind, sa.func.count())
            .join(m, m.c.id == pe.c.message_id)
            .where(m.c.status == "sent", m.c.sent_at > since, m.c.sent_at <= now,
                   m.c.channel.in_(("email", "sms")), pe.c.occurred_at <= now,
                   sa.or_(pe.c.kind == "complained",
                          sa.and_(pe.c.kind == "bounced", pe.c.permanent.is_(True))))
            .group_by(m.c.channel, m.c.provider, pe.c.kind)).all()
    out: dict[tuple[str, str], Rate] = {}
    for channel, provider, n in sent:
        key = (channel, domains.get(provider or "", provider or "?"))
        out.setdefault(key, Rate(key[0], key[1], 0, 0, 0)).sent += n
    for channel, provider, kind, n in bad:
        key = (channel, domains.get(provider or "", provider or "?"))
        r = out.setdefault(key, Rate(key[0], key[1], 0, 0, 0))
        if kind == "complained":
            r.complaints += n
        else:
            r.hard_bounces += n
    for r in out.values():
        if r.complaint_rate > config.complaint_halt and r.sent >= config.guard_min_sent:
            r.verdict = "halt"
        elif r.complaint_rate > config.complaint_warn or r.bounce_rate > config.bounce_warn:
            r.verdict = "warn"
    return sorted(out.values(), key=lambda r: (r.channel, r.domain))


@retrying
def halt(engine: Engine, channel: str, reason: str, now: datetime) -> bool:
    """Halt a channel until resumed; False when it was halted already."""
    with engine.begin() as conn:
        if conn.scalar(sa.select(halts.c.channel).where(halts.c.channel == channel)):
            return False
        conn.execute(halts.insert().values(channel=channel, reason=reason[:2000], halted_at=now))
    return True


@retrying
def resume(engine: Engine, channel: str) -> bool:
    with engine.begin() as conn:
        return bool(conn.execute(halts.delete().where(halts.c.channel == channel)).rowcount)


def halted(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {c: f"halted since {at:%Y-%m-%d %H:%M} UTC: {why} (resume: clm resume {c})"
                for c, why, at in conn.execute(sa.select(halts.c.channel, halts.c.reason,
                                                         halts.c.halted_at))}


@dataclass
class GuardReport:
    rates: list[Rate]
    warnings: list[str]
    halted_now: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"rates": [r.as_dict() for r in self.rates], "warnings": self.warnings,
                "halted": self.halted_now}


def check(engine: Engine, delivery: DeliveryConfig, config: WebhookConfig,
          now: datetime) -> GuardReport:
    """Compute the rates and halt every channel over the complaint limit."""
    found = rates(engine, delivery, now, timedelta(days=config.guard_window_days), config)
    warnings, halted_now = [], []
    for r in found:
        if r.verdict == "ok":
            continue
        warnings.append(r.describe())
        if r.verdict == "halt" and halt(engine, r.channel, "complaint rate over "
                                        f"{config.complaint_halt:.1%}: {r.describe()}", now):
            halted_now.append(r.channel)
    return GuardReport(found, warnings, halted_now)


def markdown(report: dict[str, Any]) -> str:
    """The deliverability section of a run summary (``GuardReport.as_dict()``)."""
    rows = report.get("rates") or []
    lines = ["## Deliverability", ""]
    if not rows:
        return "\n".join(lines + ["No sends in the window yet.", ""])
    lines += ["| channel | domain | sent | complaints | rate | hard bounces | rate | verdict |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['channel']} | {r['domain']} | {r['sent']:,} | {r['complaints']:,} | "
                     f"{r['complaint_rate']:.2%} | {r['hard_bounces']:,} | "
                     f"{r['bounce_rate']:.2%} | {r['verdict']} |")
    for w in report.get("warnings") or []:
        lines.append(f"\n**Warning:** {w}")
    for ch in report.get("halted") or []:
        lines.append(f"\n**Halted:** channel {ch} (resume with `clm resume {ch}`)")
    return "\n".join(lines) + "\n"
