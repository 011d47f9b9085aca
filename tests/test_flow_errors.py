"""A flow run that fails: the command prints one line naming the cause and the log file, exits
1, and Prefect's traceback goes to the log file, not the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from clm.context import App
from clm.flows import failure, finish
from clm.logs import divert_prefect_console
from clm_core.errors import ConfigError
from tests.test_flows import prefect_api  # noqa: F401  (the session's Prefect harness)

pytestmark = pytest.mark.xdist_group("prefect")


def test_a_failed_flow_run_is_one_line_and_exit_status_1(
        prefect_api: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from prefect import flow

    (tmp_path / "clm.toml").write_text("[clm]\n")
    app = App(project_dir=str(tmp_path))
    app.settings  # noqa: B018

    @flow(name="broken")
    def broken() -> None:
        raise ConfigError("secret SENDGRID_API_KEY is not set: export SENDGRID_API_KEY")

    divert_prefect_console(app.log_path)
    capfd.readouterr()
    state = broken(return_state=True)
    assert failure(state) == "secret SENDGRID_API_KEY is not set: export SENDGRID_API_KEY"
    with pytest.raises(SystemExit) as exited:
        finish(app, state)
    assert exited.value.code == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SENDGRID_API_KEY is not set" in lines[0]
    assert str(app.log_path) in lines[0]
    logged = app.log_path.read_text()
    assert "Traceback" in logged and "ConfigError" in logged
