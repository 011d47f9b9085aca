"""Evaluations against a real database (SQLite and PostgreSQL): enrollments and outbox rows are
written once, whatever the number of runs, and versions follow edits."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.journeys.run import evaluate
from clm_core.settings import Settings
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
    send:
      channel: email
      template: welcome_1
      coupon: {kind: percent, value: 10, expires_in_days: 14}
  - id: pause
    wait: 2d
  - id: nudge
    send: {channel: sms, template: welcome_sms}
"""
NOW = datetime(2026, 11, 24, 15, 0)


def _welcome(engine: sa.Engine, db_url: str, tmp_path: Path, n: int, toml: str = "") -> Settings:
    """A project with the welcome journey and ``n`` customers who just became new."""
    settings = project(tmp_path, db_url, {"welcome": WELCOME}, toml)
    ids = store_customers(engine, customers_frame(n, timezone="UTC"), NOW)
    store_transitions(engine, ids, "new", NOW - timedelta(days=1))
    return settings


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.scalar(sa.select(sa.func.count()).select_from(t.journey_enrollments)),
                conn.scalar(sa.select(sa.func.count()).select_from(t.messages)))


def test_evaluate_twice_creates_nothing_new(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    settings = _welcome(engine, db_url, tmp_path, 40)
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
    settings = _welcome(engine, db_url, tmp_path, 10)
    result = evaluate(engine, settings, NOW, dry_run=True)
    assert len(result.plan.messages) == 10 and result.written is None
    assert _counts(engine) == (0, 0)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.journey_versions)) == 0


def test_editing_an_active_journey_bumps_the_version(engine: sa.Engine, db_url: str,
                                                     tmp_path: Path) -> None:
    settings = _welcome(engine, db_url, tmp_path, 5)
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


def test_project_policy_comes_from_clm_toml(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    toml = """
[journeys]
quiet_hours = { start = "08:00", end = "20:00" }
caps = [ { channel = "email", max = 1, window = "2d" } ]
global_control_percent = 50
"""
    settings = _welcome(engine, db_url, tmp_path, 200, toml)
    msgs = evaluate(engine, settings, NOW, dry_run=True).plan.messages
    live = msgs[msgs["reason"] != "control_group"]
    assert 0.35 < 1 - len(live) / len(msgs) < 0.65
    # 15:00 UTC is inside these quiet hours: deferred to 20:00
    assert (live["status"] == "deferred").all() and (live["reason"] == "quiet_hours").all()
    assert (live["send_after"] == pd.Timestamp("2026-11-24 20:00")).all()


def test_bad_project_policy_is_a_located_error(db_url: str, tmp_path: Path) -> None:
    import pytest

    from clm_core.errors import SpecError

    settings = project(tmp_path, db_url, {"welcome": WELCOME},
                       "[journeys]\ncaps = [ { channel = \"fax\", max = 1, window = \"2d\" } ]\n")
    with pytest.raises(SpecError, match="caps.0.channel: Input should be 'email' or 'sms'"):
        evaluate(make_engine(db_url), settings, NOW, dry_run=True)


def test_racing_evaluations_create_each_row_once(engine: sa.Engine, db_url: str,
                                                 tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = _welcome(engine, db_url, tmp_path, 300)
    engines = [make_engine(db_url) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda e: evaluate(e, settings, NOW), engines))
    for e in engines:
        e.dispose()
    assert _counts(engine) == (300, 300)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.journey_versions)) == 1


def test_stored_trigger_times_of_any_precision_read_back(engine: sa.Engine, db_url: str,
                                                         tmp_path: Path) -> None:
    settings = project(tmp_path, db_url, {"welcome": WELCOME})
    ids = store_customers(engine, customers_frame(4, timezone="UTC"), NOW)
    store_transitions(engine, ids[:2], "new", NOW - timedelta(days=1))
    store_transitions(engine, ids[2:], "new", NOW - timedelta(days=1, microseconds=123457))
    evaluate(engine, settings, NOW)
    with engine.connect() as conn:
        states = conn.execute(sa.select(t.journey_enrollments.c.state)).scalars().all()
    assert {s["trigger_at"] if isinstance(s, dict) else __import__("json").loads(s)["trigger_at"]
            for s in states} == {"2026-11-23T15:00:00.000000", "2026-11-23T14:59:59.876543"}
    later = evaluate(engine, settings, NOW + timedelta(days=2))
    assert later.written.messages_created == 4


def test_order_goals_count_purchases_only(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    """A cancelled, refunded or pending order is no conversion, as it is no purchase for the
    features; a completed one is."""
    settings = _welcome(engine, db_url, tmp_path, 5)
    evaluate(engine, settings, NOW)
    with engine.connect() as conn:
        ids = sorted(conn.execute(sa.select(t.customers.c.id)).scalars())
    placed = NOW + timedelta(hours=2)
    statuses = ["cancelled", "refunded", "pending", "completed"]
    with engine.begin() as conn:
        conn.execute(sa.insert(t.orders), [
            {"external_id": f"o-{i}", "customer_id": cid, "ordered_at": placed, "amount": 20,
             "status": status} for i, (cid, status) in enumerate(zip(ids, statuses))])
    evaluate(engine, settings, NOW + timedelta(hours=3))
    e = t.journey_enrollments
    with engine.connect() as conn:
        converted = dict(conn.execute(sa.select(e.c.customer_id, e.c.goal)).all())
    assert converted == {ids[0]: None, ids[1]: None, ids[2]: None, ids[3]: "ordered", ids[4]: None}


def test_longest_names_plan_keys_that_fit_the_column(engine: sa.Engine, db_url: str,
                                                    tmp_path: Path) -> None:
    """A journey name and step ids of the longest allowed length (64) plan messages on both
    databases (the key column is String(128)); keys stay distinct and stable."""
    name, hello, nudge = "w" * 64, "h" * 63 + "1", "h" * 63 + "2"
    text = (WELCOME.replace("name: welcome", f"name: {name}").replace("id: hello", f"id: {hello}")
            .replace("id: nudge", f"id: {nudge}"))
    settings = project(tmp_path, db_url, {name: text})
    ids = store_customers(engine, customers_frame(5, timezone="UTC"), NOW)
    store_transitions(engine, ids, "new", NOW - timedelta(days=1))
    assert evaluate(engine, settings, NOW).written.messages_created == 5
    evaluate(engine, settings, NOW + timedelta(days=2))
    with engine.connect() as conn:
        keys = pd.read_sql(sa.select(t.messages.c.idempotency_key, t.messages.c.step_id), conn)
    assert len(keys) == 10 and keys["idempotency_key"].is_unique
    assert keys["idempotency_key"].str.len().max() <= t.messages.c.idempotency_key.type.length
    assert keys.groupby("step_id")["idempotency_key"].apply(
        lambda k: k.str.replace(r"/e\d+$", "", regex=True).nunique()
    ).to_dict() == {hello: 1, nudge: 1}


def test_message_keys_are_bounded_whatever_the_names() -> None:
    from clm_core.journeys.engine import KEY_MAX, message_keys

    msgs = pd.DataFrame({"journey": ["j" * 500, "j" * 500, "short"],
                         "journey_version": [2**31 - 1, 2**31 - 1, 3],
                         "step_id": ["s" * 300 + "a", "s" * 300 + "b", "hello"],
                         "enrollment_id": [2**63 - 1, 2**63 - 1, 7]})
    keys = message_keys(msgs)
    assert keys.str.len().max() <= KEY_MAX
    assert keys.is_unique  # distinct long names stay distinct
    assert keys.iloc[2] == "short/v3/hello/e7"  # short names are kept as they are
    assert keys.iloc[0].startswith("j" * 23 + "~")


def test_planning_skips_a_topic_the_customer_withdrew(engine: sa.Engine, db_url: str,
                                                      tmp_path: Path) -> None:
    """A customer who withdrew a topic on the preferences page (a ledger row with the topic)
    gets the journey's messages tagged with it planned as skipped, ``no_consent_topic``, on
    that channel only, as dispatch would skip them; a later grant of the topic restores it."""
    from clm_core.consent import ledger

    settings = _welcome(engine, db_url, tmp_path, 4)
    with engine.connect() as conn:
        a, b, c, d = sorted(conn.execute(sa.select(t.customers.c.id)).scalars())
    changes = [(a, "email", "withdrawn", 1), (b, "sms", "withdrawn", 1),
               (c, "email", "withdrawn", 1), (c, "email", "granted", 2)]
    with engine.begin() as conn:
        for i, (cid, channel, action, hours) in enumerate(changes):
            ledger.record_change(conn, customer_id=cid, channel=channel, action=action,
                                 source="preferences", topic="marketing",
                                 occurred_at=NOW - timedelta(days=1, hours=-hours),
                                 evidence_key=f"prefs:{i}")

    def planned(at: datetime) -> dict[tuple[int, str], tuple[str, str | None]]:
        evaluate(engine, settings, at)
        m = t.messages
        with engine.connect() as conn:
            return {(r.customer_id, r.channel): (r.status, r.reason) for r in conn.execute(
                sa.select(m.c.customer_id, m.c.channel, m.c.status, m.c.reason))}

    first = planned(NOW)
    assert first == {(a, "email"): ("skipped", "no_consent_topic"), (b, "email"): ("pending", None),
                     (c, "email"): ("pending", None), (d, "email"): ("pending", None)}
    later = planned(NOW + timedelta(days=2))
    sms = {cid: v for (cid, channel), v in later.items() if channel == "sms"}
    assert sms == {a: ("pending", None), b: ("skipped", "no_consent_topic"),
                   c: ("pending", None), d: ("pending", None)}


def test_a_writer_committing_while_the_evaluation_plans_does_not_fail_its_write(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch) -> None:
    """Another process writes (the web service storing a callback) after the evaluation has
    read its snapshot and before it writes. On SQLite the evaluation holds the write lock from
    its start, so that writer waits (here: is refused at once, its busy timeout 0) instead of
    committing in between, which made the evaluation's write fail with "database is locked"
    whatever its own timeout. PostgreSQL's writer commits and the evaluation writes anyway."""
    from clm_core.journeys import run

    settings = _welcome(engine, db_url, tmp_path, 5)
    with engine.connect() as conn:
        someone = conn.scalar(sa.select(sa.func.min(t.customers.c.id)))
    other = make_engine(db_url)
    if engine.dialect.name == "sqlite":  # after the engine's own pragmas: no waiting
        sa.event.listen(other, "connect",
                        lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout=0"))
    outcome = []
    planned = run.plan

    def plan_while_another_writes(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            with other.begin() as conn:
                conn.execute(t.events.insert().values(
                    customer_id=someone, event_type="delivered", occurred_at=NOW))
            outcome.append("committed")
        except sa.exc.OperationalError as exc:
            assert "locked" in str(exc)
            outcome.append("waited")
        return planned(*args, **kwargs)

    evaluate(engine, settings, NOW)  # stores the journey's version: the next writes nothing
    monkeypatch.setattr(run, "plan", plan_while_another_writes)  # before its plan's write
    try:
        result = evaluate(engine, settings, NOW + timedelta(days=2))  # the SMS step
    finally:
        other.dispose()
    assert result.versions == {"welcome": "same"} and result.written.messages_created == 5
    assert outcome == ["waited" if engine.dialect.name == "sqlite" else "committed"]
