"""Secrets from Prefect Secret blocks, for workers that have no environment variables set.

Registered with ``clm_core.settings`` when the task layer is imported, so the domain can ask
for a secret by name without knowing Prefect exists.
"""

from __future__ import annotations

import os
from typing import Any

from clm_core.settings import add_secret_source


def prefect_secret(name: str) -> str | None:
    """The value of the Secret block ``clm-<name>`` (lower case, dashes), or None."""
    if not os.environ.get("PREFECT_API_URL"):
        # Without a server, a block look-up would start Prefect's ephemeral API just to fail.
        return None
    from prefect.blocks.system import Secret

    block: Any = Secret.load(block_name(name), _sync=True)  # type: ignore[call-arg]
    return str(block.get())


def block_name(name: str) -> str:
    """``CLM_SECRET_KEY`` -> ``clm-secret-key``: block names allow no capitals or underscores."""
    return name.lower().replace("_", "-")


def register() -> None:
    add_secret_source(lambda name: f"create the Prefect Secret block {block_name(name)!r}",
                      prefect_secret)
