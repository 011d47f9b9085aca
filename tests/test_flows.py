"""The Prefect flows on a real database, the sandbox provider over HTTP, and Prefect's API.

One Prefect test harness serves the whole session (it takes seconds to start), so these tests
share one xdist worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.delivery import outbox
from clm_core.delivery.sandbox import SandboxServer
from clm_core.ingest.cdnow import import_cdnow
from clm_core.runs import utcnow

pytestmark = pytest.mark.xdist_group("prefect")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer("127.0.0.1", 0, None) as server:
        yield server


@pytest.fixture
def store(db_url: str, sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          prefect_api: None) -> sa.Engine:
    """The CDNOW sample with prospects, and a project whose providers are the sandbox."""
    config = tmp_path / "clm.toml"
    config.write_text(f'[delivery]\nsandbox_url = "{sandbox.url}"\nmax_attempts = 2\n'
                      f'backoff_base = 0\nbackoff_max = 0\n')
    monkeypatch.setenv("CLM_CONFIG", str(config))
    monkeypatch.setenv("CLM_DATABASE_URL", db_url)
    monkeypatch.setenv("CLM_PROJECT_DIR", str(REPO))
    engine = make_engine(db_url)
    import_cdnow(engine, sample=True, prospects=60)
    return engine


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a.data for a in found}


def count(engine: sa.Engine, **where: str) -> int:
    m = t.messages
    q = sa.select(sa.func.count()).select_from(m)
    for k, v in where.items():
        q = q.where(m.c[k] == v)
    with engine.connect() as conn:
        return int(conn.scalar(q) or 0)


def failed_rows(data: str) -> list[dict[str, Any]]:
    rows = json.loads(data)
    return [r for r in rows if r.get("customer")]


def test_lifecycle_run_publishes_summary_and_completes(
    store: sa.Engine, sandbox: SandboxServer
) -> None:
    from flows.lifecycle import lifecycle

    state = lifecycle(return_state=True)
    assert state.is_completed(), state.message
    sent = count(store, status="sent")
    assert sent > 0 and f"{sent} sent" in state.message
    found = artifacts(state.state_details.flow_run_id)
    with store.connect() as conn:
        stages = dict(conn.execute(sa.select(t.customer_scores.c.stage, sa.func.count())
                                   .group_by(t.customer_scores.c.stage)).all())
    summary = found["clm-summary"]
    for stage, n in stages.items():
        assert f"| {stage} | {n:,} |" in summary
    assert f"| sent | {sent:,} |" in summary
    assert failed_rows(found["clm-failed-sends"]) == []
    assert sandbox.store.stats()["duplicates"] == 0
    # The same evaluation again plans nothing new and sends nothing twice.
    before = count(store)
    again = lifecycle(return_state=True)
    assert again.is_completed()
    assert count(store) == before
    assert sandbox.store.stats()["duplicates"] == 0


def test_failing_provider_ends_failed_then_rerun_sends_the_rest_once(
        store: sa.Engine, sandbox: SandboxServer) -> None:
    from flows.dispatch import dispatch
    from flows.lifecycle import lifecycle

    sandbox.store.set_faults({"rate_400": 1.0, "apis": ["sendgrid"]})  # every email is rejected
    state = lifecycle(return_state=True)
    failed = count(store, status="failed")
    assert failed > 0 and count(store, status="failed", channel="sms") == 0
    assert state.is_failed()
    assert f"{failed} sends failed for good" in state.message
    found = artifacts(state.state_details.flow_run_id)
    rows = failed_rows(found["clm-failed-sends"])
    assert len(rows) == failed
    assert {r["channel"] for r in rows} == {"email"}
    assert all("400" in r["error"] or "rejected" in r["error"] for r in rows)
    assert not any("sandbox-api_key" in json.dumps(r) for r in rows)  # no credential in the UI

    sandbox.store.set_faults({})  # the operator fixes the cause, then requeues and re-runs
    assert outbox.requeue(store, utcnow(), "failed") == failed
    rerun = dispatch(return_state=True)
    assert rerun.is_completed(), rerun.message
    assert count(store, status="failed") == 0
    stats = sandbox.store.stats()
    assert stats["duplicates"] == 0
    # Every message the flows sent reached the sandbox exactly once.
    assert stats["unique_keys"] >= count(store, status="sent")


def test_revoked_key_halts_the_channel_and_loses_nothing(
    store: sa.Engine, sandbox: SandboxServer
) -> None:
    from flows.dispatch import dispatch
    from flows.lifecycle import lifecycle

    sandbox.store.set_faults({"rate_401": 1.0, "apis": ["sendgrid"]})  # the email key was revoked
    state = lifecycle(return_state=True)
    assert state.is_failed()
    assert "channel email halted" in state.message and "sandbox-api_key" not in state.message
    assert count(store, status="failed") == 0 and count(store, status="sent", channel="email") == 0
    waiting = count(store, status="pending", channel="email")
    assert waiting > 0
    sandbox.store.set_faults({})  # the key is rotated: the next dispatch run sends what waited
    rerun = dispatch(return_state=True)
    assert rerun.is_completed(), rerun.message
    assert count(store, status="sent", channel="email") == waiting
    assert sandbox.store.stats()["duplicates"] == 0


def test_an_aware_now_from_the_prefect_ui_runs_the_flows(store: sa.Engine) -> None:
    """Prefect's UI and API pass timezone-aware datetimes; the flows read them in UTC."""
    from datetime import datetime, timedelta, timezone

    from flows.dispatch import dispatch
    from flows.lifecycle import lifecycle

    aware = datetime(1997, 4, 1, 18, 0, tzinfo=timezone(timedelta(hours=8)))  # 10:00 UTC
    state = dispatch(now=aware, return_state=True)
    assert state.is_completed(), state.message
    state = lifecycle(as_of=datetime(1997, 3, 31).date(), now=aware, dispatch=False,
                      return_state=True)
    assert state.is_completed(), state.message
    with store.connect() as conn:
        entered = set(
            conn.execute(sa.select(t.journey_enrollments.c.entered_at).distinct()).scalars()
        )
    assert entered == {datetime(1997, 4, 1, 10, 0)}


ACCEPTANCE = [["import", "cdnow", "--sample"], ["fit", "--as-of", "1997-03-31"],
              ["score", "--as-of", "1997-03-31"],
              ["run", "--as-of", "1997-03-31", "--now", "1997-04-01 10:00", "--no-dispatch"]]
# What identifies a run rather than the store's state: random ids and the wall clock.
NOT_COMPARED = {"recorded_at", "run_id"}


@pytest.fixture
def two_databases(db_url: str, db_factories: dict, request: pytest.FixtureRequest,
                  prefect_api: None) -> Iterator[tuple[str, str]]:
    factory = db_factories[request.node.callspec.params["db_url"]]
    other = factory.create()
    yield db_url, other
    factory.drop(other)


def backfill(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The documented backfill, command by command, on the database at ``url``."""
    from click.testing import CliRunner

    from clm import cli

    monkeypatch.setenv("CLM_DATABASE_URL", url)  # `clm run` hands it to the flow this way
    monkeypatch.setenv("CLM_PROJECT_DIR", str(REPO))
    out = []
    for args in ACCEPTANCE:
        result = CliRunner().invoke(cli, ["--database", url, "--project", str(REPO), *args])
        assert result.exit_code == 0, result.output
        out.append(result.output)
    return "\n".join(out)


def rows(url: str, table: sa.Table) -> tuple[list[tuple], list[tuple]]:
    """The table's rows without, and the recorded_at values alone (the wall clock)."""
    kept = [c for c in table.c if c.name not in NOT_COMPARED]
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ordered = sa.select(*kept).order_by(*table.primary_key.columns)
            body = [tuple(r) for r in conn.execute(ordered)]
            recorded = [] if "recorded_at" not in table.c else [
                r[0] for r in conn.execute(sa.select(table.c.recorded_at)
                                           .order_by(*table.primary_key.columns))]
    finally:
        engine.dispose()
    return body, recorded


def test_a_backfill_enters_stage_journeys_and_two_runs_write_the_same_rows(
        two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    first, second = two_databases
    output = backfill(first, monkeypatch)
    assert "as of 1997-03-31: given" in output and "now 1997-04-01 10:00:00 UTC: given" in output
    assert "fit 1 (orders up to 1997-03-31): the newest fit whose data ends on or before" in output
    time.sleep(1.5)  # a different wall clock for the second run
    backfill(second, monkeypatch)

    engine = make_engine(first)
    try:
        with engine.connect() as conn:
            e, tr = t.journey_enrollments, t.stage_transitions
            entered = dict(conn.execute(sa.select(e.c.journey, sa.func.count())
                                        .group_by(e.c.journey)).all())
            moved = dict(conn.execute(sa.select(tr.c.to_stage, sa.func.count())
                                      .group_by(tr.c.to_stage)).all())
            stamps = set(conn.execute(sa.select(tr.c.transitioned_at).distinct()).scalars())
    finally:
        engine.dispose()
    print("entries per journey:", entered, "transitions:", moved)
    assert stamps == {datetime(1997, 3, 31)}  # the as-of day, not the wall clock
    # Every stage-triggered journey whose stage was reached enters customers.
    for journey, stage in (("welcome", "new"), ("at_risk", "at_risk"),
                           ("loyalty_reward", "loyal"), ("winback", "churned")):
        assert moved.get(stage, 0) > 0 and entered.get(journey, 0) > 0, (journey, entered)

    for table in (t.stage_transitions, t.journey_enrollments, t.messages, t.customer_scores,
                  t.journey_versions):
        a, a_recorded = rows(first, table)
        b, b_recorded = rows(second, table)
        assert len(a) > 0 and a == b, table.name
        if a_recorded:  # the wall clock did differ: only recorded_at shows it
            assert a_recorded != b_recorded, table.name



def test_lifecycle_writes_the_report_and_publishes_its_summary(
    store: sa.Engine, tmp_path: Path
) -> None:
    from flows.lifecycle import lifecycle

    out = tmp_path / "report.html"
    state = lifecycle(report_path=str(out), return_state=True)
    assert state.is_completed(), state.message
    assert out.exists() and "<svg" in out.read_text(encoding="utf-8")
    summary = artifacts(state.state_details.flow_run_id)["clm-report"]
    assert str(out.resolve()) in summary and "# Store report as of" in summary
    with store.connect() as conn:
        attributed = conn.scalar(sa.select(sa.func.count()).select_from(t.attributions))
        entered = conn.scalar(sa.select(sa.func.count()).select_from(t.journey_enrollments))
    assert attributed == entered
