"""Evaluations against a real database (SQLite and PostgreSQL): enrollments and outbox rows are
written once, whatever the number of runs, and versions follow edits."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.journeys.run import evaluate
from tests.journey_helpers import customers_frame, project, store_customers, store_transitions

WELCOME = """
name: welcome
status: active
tags: [marketing]
entry:
  stage: {to: new}
goals:
  - {id: ordered, order: {}}
steps:
  - id: hello
    send: {channel: email, template: welcome_1, coupon: {kind: percent, value: 10, expires_in_days: 14}}
  - id: pause
    wait: 2d
  - id: nudge
    send: {channel: sms, template: welcome_sms}
"""
NOW = datetime(2026, 11, 24, 15, 0)


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.scalar(sa.select(sa.func.count()).select_from(t.journey_enrollments)),
                conn.scalar(sa.select(sa.func.count()).select_from(t.messages)))


def test_evaluate_twice_creates_nothing_new(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    settings = project(tmp_path, db_url, {"welcome": WELCOME})
    ids = store_customers(engine, customers_frame(40, timezone="UTC"), NOW)
    store_transitions(engine, ids, "new", NOW - timedelta(days=1))
    first = evaluate(engine, settings, NOW)
    assert first.written.enrollments_created == 40
    assert first.written.messages_created == 40
    assert _counts(engine) == (40, 40)
    again = evaluate(engine, settings, NOW)
    assert (again.written.enrollments_created, again.written.messages_created) == (0, 0)
    assert _counts(engine) == (40, 40)
    with engine.connect() as conn:
        msgs = pd.read_sql(sa.select(t.messages), conn)
    assert set(msgs["status"]) == {"pending"}
    assert msgs["idempotency_key"].str.match(r"^welcome/v1/hello/e\d+$").all()
    assert msgs["coupon"].map(lambda c: c if isinstance(c, dict) else __import__("json").loads(c))\
        .iloc[0] == {"kind": "percent", "value": 10.0, "expires_in_days": 14}
    # two days on: the SMS step, once
    later = NOW + timedelta(days=2)
    evaluate(engine, settings, later)
    evaluate(engine, settings, later)
    assert _counts(engine) == (40, 80)


def test_dry_run_writes_nothing(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    settings = project(tmp_path, db_url, {"welcome": WELCOME})
    ids = store_customers(engine, customers_frame(10, timezone="UTC"), NOW)
    store_transitions(engine, ids, "new", NOW - timedelta(days=1))
    result = evaluate(engine, settings, NOW, dry_run=True)
    assert len(result.plan.messages) == 10 and result.written is None
    assert _counts(engine) == (0, 0)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.journey_versions)) == 0


def test_editing_an_active_journey_bumps_the_version(engine: sa.Engine, db_url: str,
                                                     tmp_path: Path) -> None:
    settings = project(tmp_path, db_url, {"welcome": WELCOME})
    ids = store_customers(engine, customers_frame(5, timezone="UTC"), NOW)
    store_transitions(engine, ids, "new", NOW - timedelta(days=1))
    assert evaluate(engine, settings, NOW).versions == {"welcome": "new"}
    assert evaluate(engine, settings, NOW).versions == {"welcome": "same"}
    # pausing is not an edit
    (tmp_path / "journeys" / "welcome.yaml").write_text(WELCOME.replace("active", "paused"))
    assert evaluate(engine, settings, NOW).versions == {"welcome": "same"}
    edited = WELCOME.replace("welcome_sms", "welcome_sms_v2")
    (tmp_path / "journeys" / "welcome.yaml").write_text(edited)
    later = NOW + timedelta(days=2)
    result = evaluate(engine, settings, later)
    assert result.versions == {"welcome": "changed"}
    with engine.connect() as conn:
        versions = conn.execute(sa.select(t.journey_versions.c.version)).scalars().all()
        msgs = pd.read_sql(sa.select(t.messages).where(t.messages.c.step_id == "nudge"), conn)
    assert sorted(versions) == [1, 2]
    # on_edit: stay (the default): enrolled customers finish on version 1's template
    assert set(msgs["template"]) == {"welcome_sms"} and set(msgs["journey_version"]) == {1}
