"""Fixtures shared by the delivery tests: a sandbox server, a project, dispatch runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.delivery.config import load_delivery_config
from clm_core.delivery.dispatcher import Dispatcher, DispatchReport
from clm_core.delivery.sandbox import SandboxServer
from clm_core.delivery.testing import write_project
from clm_core.settings import load_settings

KEY = os.environ["CLM_SECRET_KEY"].encode()


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(smtp_port=0) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    sandbox_server.store.reset()
    sandbox_server.store.set_faults({})
    return sandbox_server


def project(tmp_path: Path, db_url: str, sandbox: SandboxServer, **delivery: Any) -> Path:
    return write_project(tmp_path / "project", {"sandbox_url": sandbox.url, **delivery}, db_url)


def dispatch(root: Path, engine: sa.Engine, *, limit: int | None = None, wait: float = 0.0,
             env: dict[str, str] | None = None) -> DispatchReport:
    settings = load_settings(root, env={**os.environ, **(env or {})})
    config = load_delivery_config(settings, env={**os.environ, **(env or {})})
    return asyncio.run(
        Dispatcher(engine, settings, config, signing_key=KEY).run(limit=limit, wait=wait)
    )


def clm(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``clm dispatch ...`` (or any command) in its own process."""
    return subprocess.Popen([sys.executable, "-m", "clm", "--project", str(root), *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(sa.select(t.messages).order_by(t.messages.c.id))
        ]
