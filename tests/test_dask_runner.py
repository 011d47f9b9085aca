"""The lifecycle flow on a local Dask cluster gives the same results as the default runner,
with scoring and dispatch both fanned out in chunks.

prefect-dask needs a started Prefect server (its workers are other processes), so this test
starts one on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.delivery.sandbox import SandboxServer
from clm_core.ingest.cdnow import import_cdnow
from clm_core.runs import utcnow
from clm_core.testing import DatabaseFactory

# Its own worker: the Prefect client state it points at a real server stays out of the
# harness-based flow tests.
pytestmark = [pytest.mark.xdist_group("dask"), pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
# One clock for both runs, so they make the same quiet-hour decisions; after the real time at
# which scoring records transitions, which journeys enter on.
NOW = (utcnow() + timedelta(days=1)).replace(hour=15, minute=0, second=0, microsecond=0)
SCORE_COLUMNS = ["customer_id", "stage", "rfm_segment", "p_alive", "clv_12m", "r_score", "f_score"]


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[str]:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import running_server

    with running_server(timeout=180) as api, temporary_settings({PREFECT_API_URL: api}):
        yield api
        # Deliver queued events and logs while the server still answers; afterwards the
        # workers would wait on a dead address at exit.
        EventsWorker.drain_all()
        APILogWorker.drain_all()


def outcome(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    engine = make_engine(url)
    with engine.connect() as conn:
        scores = pd.read_sql(sa.select(*[t.customer_scores.c[c] for c in SCORE_COLUMNS])
                             .order_by(t.customer_scores.c.customer_id), conn)
        msgs = pd.read_sql(
            sa.select(
                t.messages.c.idempotency_key, t.messages.c.status, t.messages.c.channel
            ).order_by(t.messages.c.idempotency_key),
            conn,
        )
    engine.dispose()
    return scores, msgs


def test_dask_runner_matches_thread_runner(prefect_server: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.lifecycle import lifecycle

    factory = DatabaseFactory("sqlite", tmp_path)
    results = {}
    with SandboxServer("127.0.0.1", 0, None) as sandbox:
        config = tmp_path / "clm.toml"
        config.write_text(f'[delivery]\nsandbox_url = "{sandbox.url}"\n')
        monkeypatch.setenv("CLM_CONFIG", str(config))
        monkeypatch.setenv("CLM_PROJECT_DIR", str(REPO))
        for runner in ("threads", "dask"):
            url = factory.create()
            engine = make_engine(url)
            import_cdnow(engine, sample=True, prospects=40)
            engine.dispose()
            monkeypatch.setenv("CLM_DATABASE_URL", url)
            flow = lifecycle if runner == "threads" else lifecycle.with_options(
                task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                                           "processes": True}))
            state = flow(now=NOW, dispatch_chunk_size=150, score_chunks=3, return_state=True)
            assert state.is_completed(), f"{runner}: {state.message}"
            results[runner] = outcome(url)
        assert sandbox.store.stats()["duplicates"] == 0
    (s1, m1), (s2, m2) = results["threads"], results["dask"]
    assert len(s1) > 2000 and (m1["status"] == "sent").sum() > 150  # several dispatch chunks ran
    pd.testing.assert_frame_equal(s1, s2)
    pd.testing.assert_frame_equal(m1, m2)
