"""The Prefect flows on a real database, the sandbox provider over HTTP, and Prefect's API.

One Prefect test harness serves the whole session (it takes seconds to start), so these tests
share one xdist worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def test_lifecycle_run_publishes_summary_and_completes(store: sa.Engine, sandbox: SandboxServer) -> None:
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


def test_revoked_key_halts_the_channel_and_loses_nothing(store: sa.Engine, sandbox: SandboxServer) -> None:
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


def test_lifecycle_writes_the_report_and_publishes_its_summary(store: sa.Engine, tmp_path: Path) -> None:
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
