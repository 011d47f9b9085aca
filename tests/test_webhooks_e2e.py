"""The sandbox plays the providers' side against ``clm serve`` in its own process: signed
callbacks for what dispatch sent, retried until acknowledged. Killing the web service with
SIGKILL under load loses nothing the sandbox saw acknowledged and stores nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.delivery.sandbox import SandboxServer
from clm_core.delivery.testing import seed_outbox
from tests.delivery_fixtures import dispatch, project
from tests.web_server import free_port


class Serve:
    """``clm serve`` in a process of its own, restartable on the same port."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Serve:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clm", "--project", str(self.root), "serve", "--port",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ})
        deadline = time.monotonic() + 180  # a loaded machine starts slowly
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("clm serve did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


def wait_drained(sandbox: SandboxServer, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snap = sandbox.store.callbacks.snapshot(with_ids=True)
        if snap["queued"] == 0 or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def stored_events(engine: sa.Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {(p, e) for p, e in conn.execute(sa.select(t.provider_events.c.provider,
                                                          t.provider_events.c.event_id))}


def test_sandbox_callbacks_reach_clm_serve(tmp_path: Path, db_url: str, engine: sa.Engine,
                                           sandbox: SandboxServer) -> None:
    root = project(tmp_path, db_url, sandbox, email="sendgrid", sms="twilio")
    serve = Serve(root, free_port()).start()
    try:
        sandbox.store.callbacks.configure({
            "url": serve.url, "seed": 1, "rate_bounce": 0.05, "rate_complaint": 0.02,
            "rate_open": 0.5, "rate_click": 0.5, "rate_duplicate": 0.2, "delay_seconds": 1.0})
        seed_outbox(engine, 300, channel="email", prefix="e")
        seed_outbox(engine, 100, channel="sms", prefix="s")
        report = dispatch(root, engine)
        assert report.sent == 400
        snap = wait_drained(sandbox)
    finally:
        serve.stop()
    acked = {(p, e) for p, e, _ in snap["acked"]}
    assert snap["queued"] == 0 and acked == sandbox.store.callbacks.generated
    assert stored_events(engine) == acked  # duplicates were acknowledged and stored once
    with engine.connect() as conn:
        m = t.messages
        unlinked = conn.scalar(sa.select(sa.func.count()).where(
            t.provider_events.c.message_id.is_(None)))
        statuses = dict(conn.execute(sa.select(m.c.delivery_status, sa.func.count())
                                     .group_by(m.c.delivery_status)).all())
        engagement = dict(conn.execute(sa.select(t.events.c.event_type, sa.func.count())
                                       .group_by(t.events.c.event_type)).all())
        suppressed = conn.scalar(sa.select(sa.func.count()).select_from(t.suppressions))
    assert unlinked == 0  # every callback found its message by the key the send carried
    assert statuses.get("delivered", 0) > 300 and statuses.get("bounced", 0) > 0
    assert engagement.get("opened", 0) > 50 and engagement.get("clicked", 0) > 10
    assert suppressed > 0


@pytest.mark.slow
def test_kill_9_of_clm_serve_under_load_loses_nothing(tmp_path: Path, db_url: str,
                                                      engine: sa.Engine,
                                                      sandbox: SandboxServer) -> None:
    root = project(tmp_path, db_url, sandbox, email="sendgrid", sms="twilio")
    serve = Serve(root, free_port()).start()
    kills = 0
    try:
        sandbox.store.callbacks.configure({
            "url": serve.url, "seed": 2, "rate_duplicate": 0.1, "delay_seconds": 6.0,
            "batch_size": 100, "retry_base": 0.2, "retry_max": 1.0})
        seed_outbox(engine, 1500, channel="email", prefix="k")
        seed_outbox(engine, 300, channel="sms", prefix="ks")
        assert dispatch(root, engine).sent == 1800
        for _ in range(3):  # kill -9 while callbacks are arriving, then start again
            time.sleep(1.5)
            serve.kill()
            kills += 1
            time.sleep(0.3)
            serve.start()
        snap = wait_drained(sandbox, timeout=180)
    finally:
        serve.stop()
    acked = {(p, e) for p, e, _ in snap["acked"]}
    stored = stored_events(engine)
    assert kills == 3 and snap.get("retries", 0) > 0  # some posts went unanswered
    assert acked <= stored  # every acknowledged event is stored
    assert stored == sandbox.store.callbacks.generated == acked  # all arrived in the end
    with engine.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).select_from(t.provider_events))
        opened = conn.scalar(sa.select(sa.func.count()).where(t.events.c.event_type == "opened"))
    assert n == len(stored)  # none twice
    assert opened  # engagement rows were written from the callbacks
