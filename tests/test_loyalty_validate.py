"""``clm validate`` on the loyalty programme and on journeys that enter on tiers."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from clm import cli

REPO = Path(__file__).resolve().parent.parent
JOURNEY = """name: vip
status: active
tags: [transactional]
entry:
  tier: {to: glod, from: [member]}
steps:
  - id: done
    exit: {}
"""


def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "journeys").mkdir(parents=True)
    shutil.copy(REPO / "journeys" / "loyalty.yaml", root / "journeys" / "loyalty.yaml")
    (root / "clm.toml").write_text(f'[clm]\ndatabase_url = "sqlite:///{root}/clm.db"\n')
    return root


def validate(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--project", str(root), "validate"])
    return result.exit_code, result.output


def test_shipped_programme_is_valid(tmp_path: Path) -> None:
    code, out = validate(project(tmp_path))
    assert code == 0, out


def test_unknown_tier_in_an_entry_is_located(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "journeys" / "vip.yaml").write_text(JOURNEY)
    code, out = validate(root)
    assert code == 1
    assert "vip.yaml:5:" in out and "unknown tier 'glod'" in out
    assert "did you mean 'gold'" in out


def test_tier_entry_without_programme(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "journeys" / "loyalty.yaml").unlink()
    (root / "journeys" / "vip.yaml").write_text(JOURNEY.replace("glod", "gold"))
    code, out = validate(root)
    assert code == 1 and "no loyalty programme" in out


def test_malformed_programme_fails_validate_with_line_and_column(tmp_path: Path) -> None:
    root = project(tmp_path)
    path = root / "journeys" / "loyalty.yaml"
    path.write_text(path.read_text().replace("rounding: down", "rounding: sideways"))
    code, out = validate(root)
    assert code == 1
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "sideways" in text)
    assert f"loyalty.yaml:{line}:" in out and "'down'" in out
