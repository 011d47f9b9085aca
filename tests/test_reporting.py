"""Run summaries and the failed-sends list, read back from the database."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.reporting import failed_sends, summarize, summary_markdown
from clm_core.runs import record_run
from clm_core.settings import secret

T0 = datetime(2026, 3, 1, 8, 0)


def seed(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.customers), [{"external_id": f"c{i}", "name": f"C{i}"} for i in range(1, 5)]
        )
        conn.execute(sa.insert(t.customer_scores), [
            {"customer_id": i, "as_of": T0.date(), "stage": s, "recorded_at": T0}
            for i, s in ((1, "new"), (2, "loyal"), (3, "loyal"), (4, "churned"))])
        conn.execute(
            sa.insert(t.stage_transitions),
            [
                {
                    "customer_id": 2,
                    "from_stage": "active",
                    "to_stage": "loyal",
                    "transitioned_at": T0,
                    "as_of": T0.date(),
                },
                {
                    "customer_id": 4,
                    "from_stage": "at_risk",
                    "to_stage": "churned",
                    "transitioned_at": T0 - timedelta(days=9),
                    "as_of": T0.date(),
                },
            ],
        )
        base = {"channel": "email", "journey": "welcome", "step_id": "hello", "send_after": T0,
                "created_at": T0, "updated_at": T0, "provider": None, "attempts": 0,
                "error_code": None, "error_message": None}
        conn.execute(
            sa.insert(t.messages),
            [
                {
                    **base,
                    "idempotency_key": "k1",
                    "customer_id": 1,
                    "status": "sent",
                    "provider": "sendgrid",
                    "attempts": 1,
                },
                {
                    **base,
                    "idempotency_key": "k2",
                    "customer_id": 2,
                    "status": "failed",
                    "provider": "sendgrid",
                    "attempts": 1,
                    "error_code": "400",
                    "error_message": "bad request with key SG.supersecret-123",
                },
                {
                    **base,
                    "idempotency_key": "k3",
                    "customer_id": 3,
                    "status": "pending",
                    "channel": "sms",
                    "journey": "winback",
                    "step_id": "sms1",
                },
                {
                    **base,
                    "idempotency_key": "k4",
                    "customer_id": 4,
                    "status": "unknown",
                    "provider": "twilio",
                    "channel": "sms",
                    "journey": "winback",
                    "step_id": "sms1",
                    "attempts": 2,
                    "error_message": "lease expired without outcome",
                },
                {
                    **base,
                    "idempotency_key": "old",
                    "customer_id": 4,
                    "status": "failed",
                    "created_at": T0 - timedelta(days=3),
                    "updated_at": T0 - timedelta(days=3),
                },
            ],
        )
        conn.execute(
            sa.insert(t.model_fits).values(
                model="bgnbd",
                params={"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
                log_likelihood=-9582.4,
                time_unit="week",
                window_end=T0,
                n_customers=2357,
                recorded_at=T0,
            )
        )


def test_summary_counts_since_run_start(engine: sa.Engine) -> None:
    seed(engine)
    s = summarize(engine, since=T0 - timedelta(hours=1))
    assert s.stages == {"new": 1, "loyal": 2, "churned": 1}
    assert s.transitions == {("active", "loyal"): 1}
    assert s.created[("welcome", "email", "failed")] == 1
    assert s.failed == 2  # the failed email and the unknown SMS; the old failure is outside
    assert s.by_status == {"sent": 1, "failed": 2, "pending": 1, "unknown": 1}
    md = summary_markdown(s)
    assert "| loyal | 2 |" in md and "r=0.243" in md and "| winback | sms | unknown | 1 |" in md


def test_failed_sends_lists_each_failure_without_secrets(engine: sa.Engine) -> None:
    seed(engine)
    secret("CLM_TEST_PROVIDER_KEY", env={"CLM_TEST_PROVIDER_KEY": "SG.supersecret-123"})
    rows = failed_sends(engine, since=T0 - timedelta(hours=1))
    assert [(r["customer"], r["journey"], r["step"], r["channel"], r["status"]) for r in rows] == [
        ("c4", "winback", "sms1", "sms", "unknown"), ("c2", "welcome", "hello", "email", "failed")]
    assert "supersecret" not in str(rows) and "***" in rows[1]["error"]
    assert len(failed_sends(engine)) == 3


def test_status_command_shows_runs_and_outbox(engine: sa.Engine, db_url: str) -> None:
    seed(engine)
    with record_run(engine, "dispatch") as run:
        run.summary = {"sent": 1}
    result = CliRunner().invoke(cli, ["--database", db_url, "status"])
    assert result.exit_code == 0, result.output
    assert "dispatch" in result.output and "completed" in result.output
    assert "failed 2" in result.output and "pending 1" in result.output
    assert "c2  welcome/hello  email via sendgrid  failed: 400" in result.output
