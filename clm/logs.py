"""The log file: where details go that the terminal does not show.

A command prints one line per outcome; tracebacks, Prefect's own logs and library warnings go
to ``.clm/logs/clm.log`` in the project (outside a project, ``$XDG_STATE_HOME/clm/clm.log``).
Every record passes the secret redactor first.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import traceback
from pathlib import Path

from clm_core.settings import redact

LOG_NAME = "clm.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Redacted(logging.Formatter):
    """Redacts the whole formatted record, traceback included (a secret can sit in a frame's
    message as well as in the log message)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_file(project_dir: Path | None) -> Path:
    """The project's log file, or the user's when no project is known."""
    if project_dir is not None:
        return project_dir / ".clm" / "logs" / LOG_NAME
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "clm" / LOG_NAME


def file_handler(path: Path) -> logging.Handler:
    """A size-bounded handler on ``path`` (shared by every handler asked for the same file)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            return handler
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3,
                                                   encoding="utf-8")
    handler.setFormatter(_Redacted(_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def log_exception(exc: BaseException, path: Path) -> Path:
    """Append ``exc`` with its traceback to the log; returns the file (best effort: a log that
    cannot be written never hides the error itself)."""
    try:
        handler = file_handler(path)
        record = logging.LogRecord("clm", logging.ERROR, __file__, 0, "%s",
                                   ("".join(traceback.format_exception(exc)).rstrip(),), None)
        handler.handle(record)
    except OSError:
        pass
    return path


def divert_prefect_console(path: Path) -> None:
    """Send Prefect's console output (flow and task run logs, tracebacks of failed tasks) to
    the log file instead of the terminal; the command prints its own outcome. Prefect puts its
    console handler on the root logger and a few of its own: call this after Prefect has set
    up logging (after importing a flow)."""
    handler = file_handler(path)
    manager = logging.Logger.manager
    names = ["", *[n for n in manager.loggerDict if n.split(".")[0] in ("prefect", "uvicorn",
                                                                       "fastapi")]]
    for name in names:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and type(h).__module__.startswith("prefect."):
                logger.removeHandler(h)
                if not logger.propagate and handler not in logger.handlers:
                    logger.addHandler(handler)
