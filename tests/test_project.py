"""A store's project: ``clm init``, finding the project like git, one-line errors with details
in the log file, one signing key, and prefect.yaml in the store's time zone.

The command line runs as a user runs it: ``python -m clm`` in a subprocess, in directories
outside the repository, with CLM's environment variables removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from clm.project import render_prefect_yaml
from clm_core.delivery.unsubscribe import ensure_key_file, signing_key
from clm_core.errors import ConfigError
from clm_core.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
# A user's environment: no CLM settings, and Prefect's home inside the project (.clm/prefect).
CLEAN = {k: v for k, v in os.environ.items()
         if not k.startswith("CLM_") and k not in ("PREFECT_API_URL", "PREFECT_HOME")}


def clm(cwd: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clm", *args], cwd=cwd, capture_output=True,
                          text=True, env={**CLEAN, **(env or {})}, timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure printed exactly one line on stderr, no traceback, naming ``words``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    made = clm(tmp_path, "init", "shop", "--timezone", "Asia/Shanghai", "--region", "CN")
    assert made.returncode == 0, made.stderr
    return tmp_path / "shop"


def test_init_writes_a_project_with_the_shipped_journeys_and_templates(shop: Path) -> None:
    for name in ("journeys", "templates"):
        shipped = sorted(p.relative_to(REPO / name) for p in (REPO / name).rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        copied = sorted(p.relative_to(shop / name) for p in (shop / name).rglob("*") if p.is_file())
        assert copied == shipped and len(copied) > 5
    assert (shop / "journeys" / "lifecycle.yaml").read_bytes() == \
        (REPO / "journeys" / "lifecycle.yaml").read_bytes()
    assert "clm validate" in (shop / "README.md").read_text()
    assert ".clm/" in (shop / ".gitignore").read_text()
    settings = load_settings(shop, env={})
    assert (settings.default_timezone, settings.default_region) == ("Asia/Shanghai", "CN")
    assert settings.database_url == f"sqlite:///{shop.resolve() / 'clm.db'}"
    checked = clm(shop, "validate")
    assert checked.returncode == 0 and "0 error(s)" in checked.stdout, checked.stdout


def test_init_refuses_to_overwrite_a_project(shop: Path) -> None:
    before = (shop / "clm.toml").read_text()
    one_line_error(clm(shop.parent, "init", "shop"), "already exists")
    assert (shop / "clm.toml").read_text() == before


def test_outside_a_project_every_command_fails_at_once_with_one_line(tmp_path: Path) -> None:
    for args in (["status"], ["run", "--no-dispatch"], ["demo"], ["import", "cdnow", "--sample"]):
        result = clm(tmp_path, *args)
        one_line_error(result, "not in a CLM project", "clm init")
        assert result.stdout == ""
    assert not list(tmp_path.iterdir()), "nothing written outside a project"
    one_line_error(clm(tmp_path, "--project", str(tmp_path / "nowhere"), "status"),
                   "no clm.toml", "clm init")


def test_commands_that_need_no_project_work_anywhere(tmp_path: Path) -> None:
    for args in (["--help"], ["demo", "--help"]):
        result = clm(tmp_path, *args)
        assert result.returncode == 0 and "Usage" in result.stdout, (args, result.stderr)
    made = clm(tmp_path, "generate", "--customers", "40", "--csv", "out")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out" / "orders.csv").is_file()


def test_the_project_is_found_from_a_subdirectory_or_named(shop: Path, tmp_path: Path) -> None:
    deep = shop / "templates" / "welcome_thanks"
    counted = clm(deep, "db", "counts")
    assert counted.returncode == 0, counted.stderr
    assert (shop / "clm.db").is_file() and not (deep / "clm.db").exists()
    named = clm(tmp_path, "--project", str(shop), "validate")
    assert named.returncode == 0, named.stderr


def test_expected_errors_print_one_located_line_and_log_the_details(shop: Path) -> None:
    log = shop / ".clm" / "logs" / "clm.log"
    toml = shop / "clm.toml"
    good = toml.read_text()
    toml.write_text(good + "\n[clm\n")
    one_line_error(clm(shop, "status"), "clm.toml", "line")
    assert "Traceback" in log.read_text()
    # A key above every section is not silently ignored (it would name another database).
    toml.write_text('database_url = "sqlite:///elsewhere.db"\n' + good)
    one_line_error(clm(shop, "status"), "clm.toml", "database_url is outside any section",
                   "move it under [clm]")
    toml.write_text(good.replace('default_timezone = "Asia/Shanghai"',
                                 'default_timezone = "Mars/Olympus"'))
    one_line_error(clm(shop, "run", "--no-dispatch"), "Mars/Olympus")
    toml.write_text(good)

    (shop / "journeys" / "lifecycle.yaml").unlink()
    for args in (["run", "--no-dispatch"], ["demo", "--sample"]):
        one_line_error(clm(shop, *args), "lifecycle.yaml")
    assert not (shop / ".clm" / "prefect").exists(), "failed before starting Prefect"


def test_a_missing_signing_key_fails_at_once(shop: Path) -> None:
    for args in (["run"], ["dispatch"]):
        one_line_error(clm(shop, *args), "CLM_SECRET_KEY", ".clm/secret-key")


def test_one_signing_key_per_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clm.toml").write_text("[clm]\n")
    settings = load_settings(tmp_path, env={})
    monkeypatch.delenv("CLM_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="CLM_SECRET_KEY is not set"):
        signing_key(settings)
    path = ensure_key_file(settings)
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    key = signing_key(settings)
    assert key == path.read_text().strip().encode() and len(key) >= 32
    assert ensure_key_file(settings) == path and signing_key(settings) == key, "kept, not remade"
    monkeypatch.setenv("CLM_SECRET_KEY", "from-the-environment")
    assert signing_key(settings) == b"from-the-environment"
    assert ensure_key_file(settings) is None


def _schedules(text: str) -> list[dict[str, object]]:
    return [s for d in yaml.safe_load(text)["deployments"] for s in d["schedules"]]


def test_prefect_yaml_schedules_follow_the_store_time_zone(shop: Path) -> None:
    text = (shop / "prefect.yaml").read_text()
    assert {s["timezone"] for s in _schedules(text)} == {"Asia/Shanghai"}
    for d in yaml.safe_load(text)["deployments"]:
        module, name = d["entrypoint"].split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))

    toml = shop / "clm.toml"
    toml.write_text(toml.read_text().replace("Asia/Shanghai", "America/New_York")
                    .replace('# lifecycle_cron = "30 2 * * *"', 'lifecycle_cron = "0 4 * * *"'))
    one_line_error(clm(shop, "deployments", "--check"), "prefect.yaml", "America/New_York")
    assert clm(shop, "deployments").returncode == 0
    schedules = _schedules((shop / "prefect.yaml").read_text())
    assert {s["timezone"] for s in schedules} == {"America/New_York"}
    assert schedules[0]["cron"] == "0 4 * * *"
    assert clm(shop, "deployments", "--check").returncode == 0


def test_the_repository_prefect_yaml_is_written_from_its_clm_toml() -> None:
    assert (REPO / "prefect.yaml").read_text() == render_prefect_yaml(load_settings(REPO, env={}))


def test_a_built_package_carries_the_samples(tmp_path: Path) -> None:
    """What a non-editable install gets: the journeys and templates inside the package (built
    from a copy of the tracked files, as from a fresh clone; pip fetches the build backend)."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("clm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("journeys", "templates"):
        for p in (REPO / name).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                assert f"clm/skeleton/{name}/{p.relative_to(REPO / name).as_posix()}" in names
    assert {"clm/skeleton/clm.toml", "clm/skeleton/prefect.yaml", "clm/skeleton/README.md",
            "clm/skeleton/gitignore"} <= names
