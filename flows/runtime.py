"""Prefect settings for runs on the embedded default, set before Prefect is imported.

Without a server, Prefect starts an ephemeral API backed by ``$PREFECT_HOME/prefect.db``; two
processes sharing the default home lock each other out, so CLM gives each project its own home
(``.clm/prefect``) unless the operator set one. Telemetry is off (the machines are offline) and
logging is quiet unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(project_dir: str | Path | None = None) -> None:
    """Defaults for Prefect's environment; values the operator set win."""
    root = Path(project_dir or os.environ.get("CLM_PROJECT_DIR") or Path.cwd())
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(root / ".clm" / "prefect"))
        # Prefect does not create its home: the ephemeral server then cannot open its database.
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    # The first start migrates Prefect's own database: slow on a busy two-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
