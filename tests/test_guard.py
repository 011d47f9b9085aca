"""The deliverability guard: complaint rates per channel and sending domain over the window;
above 0.1% a warning, above 0.3% the channel halts across runs until ``clm resume``."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.delivery.config import load_delivery_config
from clm_core.delivery.testing import seed_outbox
from clm_core.feedback import guard
from clm_core.feedback.config import WebhookConfig
from clm_core.feedback.events import ProviderEvent
from clm_core.feedback.ingest import ingest
from clm_core.runs import utcnow
from clm_core.settings import load_settings
from tests.delivery_fixtures import dispatch, project, sandbox, sandbox_server  # noqa: F401

CONFIG = WebhookConfig(guard_min_sent=1000)


def sent_with_complaints(engine: sa.Engine, n: int, complaints: int, prefix: str) -> None:
    keys = seed_outbox(engine, n, channel="email", prefix=prefix)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.update(t.messages).where(t.messages.c.idempotency_key.in_(keys))
                     .values(status="sent", provider="sendgrid", sent_at=now - timedelta(days=1)))
    ingest(engine, [ProviderEvent("sendgrid", f"{prefix}-c{i}", "complained",
                                  now - timedelta(hours=12), "email", message_key=keys[i])
                    for i in range(complaints)], now)


def test_rates_warn_then_halt_until_resumed(tmp_path: Path, db_url: str, engine: sa.Engine,
                                            sandbox) -> None:  # noqa: F811
    root = project(tmp_path, db_url, sandbox, from_email="Shop <news@shop.example.com>")
    settings = load_settings(root, env={**os.environ})
    delivery = load_delivery_config(settings)
    sent_with_complaints(engine, 2000, 3, "a")  # 0.15%
    report = guard.check(engine, delivery, CONFIG, utcnow())
    (rate,) = report.rates
    assert (rate.channel, rate.domain, rate.sent, rate.complaints) == (
        "email", "shop.example.com", 2000, 3)
    assert rate.verdict == "warn" and report.halted_now == [] and "0.15%" in report.warnings[0]

    sent_with_complaints(engine, 10, 5, "b")  # 8 / 2010 = 0.40%
    seed_outbox(engine, 5, channel="email", prefix="due")
    got = dispatch(root, engine)
    assert "email" in got.halted and got.sent == 0  # halted: the due mail stays pending
    assert got.deliverability is not None and got.deliverability.halted_now == ["email"]
    with engine.connect() as conn:
        pending = conn.scalar(sa.select(sa.func.count()).where(t.messages.c.status == "pending"))
    assert pending == 5
    # Still halted in the next run, although nothing changed since.
    assert "email" in dispatch(root, engine).halted
    runner = CliRunner()
    status = runner.invoke(cli, ["--project", str(root), "status"])
    assert "complaints 0.40%" in status.output and "HALTED email" in status.output
    # The operator resumes; with the rate still high the guard halts again at once, so the
    # operator must have dealt with the cause (here: the complaints age out of the window).
    assert runner.invoke(cli, ["--project", str(root), "resume", "email"]).exit_code == 0
    assert guard.halted(engine) == {}
    later = utcnow() + timedelta(days=CONFIG.guard_window_days + 1)
    assert guard.check(engine, delivery, CONFIG, later).halted_now == []


def test_small_samples_only_warn(db_url: str, engine: sa.Engine) -> None:
    sent_with_complaints(engine, 100, 2, "s")  # 2% of 100 sends: too few to halt on
    settings = load_settings(Path("."), env={**os.environ, "CLM_DATABASE_URL": db_url})
    report = guard.check(engine, load_delivery_config(settings), CONFIG, utcnow())
    assert [r.verdict for r in report.rates] == ["warn"] and guard.halted(engine) == {}


def test_rates_follow_the_mail_sent_in_the_window(db_url: str, engine: sa.Engine) -> None:
    """A big send just before the window's start, with its complaints reported inside the
    window, does not count against the window's few sends: a rate is the share of the mail
    sent in the window that drew a complaint (a simulated run stamps every send at its run's
    instant and the reports seconds later, which halted the demo at a true 0.1%)."""
    settings = load_settings(Path("."), env={**os.environ, "CLM_DATABASE_URL": db_url})
    delivery = load_delivery_config(settings)
    now = utcnow()
    start = now - timedelta(days=CONFIG.guard_window_days)
    early = seed_outbox(engine, 3000, channel="email", prefix="big")
    recent = seed_outbox(engine, 1200, channel="email", prefix="few")
    with engine.begin() as conn:
        for keys, at in ((early, start), (recent, now - timedelta(days=1))):
            conn.execute(sa.update(t.messages).where(t.messages.c.idempotency_key.in_(keys))
                         .values(status="sent", provider="sendgrid", sent_at=at))
    # the big send's 6 complaints (0.2%) arrive seconds after it, inside the window; the
    # window's own mail draws 1 (0.08%)
    events = [ProviderEvent("sendgrid", f"big-c{i}", "complained", start + timedelta(seconds=5),
                            "email", message_key=early[i]) for i in range(6)]
    events.append(ProviderEvent("sendgrid", "few-c0", "complained", now - timedelta(hours=2),
                                "email", message_key=recent[0]))
    ingest(engine, events, now)
    (rate,) = guard.check(engine, delivery, CONFIG, now).rates
    assert (rate.sent, rate.complaints) == (1200, 1)
    assert rate.verdict == "ok" and guard.halted(engine) == {}
