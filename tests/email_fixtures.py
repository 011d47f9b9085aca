"""A copy of the shipped journeys and templates as a project, with customers to preview for."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.journeys.loader import load_journey
from clm_core.journeys.model import SendStep
from clm_core.journeys.store import journey_files

REPO = Path(__file__).resolve().parent.parent
# (external id, name, locale): one customer per shipped locale
CUSTOMERS = [("mail-en", "Alex Morgan", "en"), ("mail-zh", "王芳", "zh-CN")]


def sample_project(
    root: Path,
    *,
    store_url: str = "https://shop.example.org/",
    public_base_url: str = "https://clm.example.org",
    database_url: str | None = None,
    extra: str = "",
) -> Path:
    """The shipped journeys and templates under ``root`` with a clm.toml naming the store."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "journeys", root / "journeys")
    shutil.copytree(REPO / "templates", root / "templates")
    lines = ["[clm]", f'public_base_url = "{public_base_url}"']
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    lines += ["", "[delivery]", 'store_name = "Harbour Records"', f'store_url = "{store_url}"']
    (root / "clm.toml").write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return root


def add_customers(engine: sa.Engine, people: Sequence[tuple[str, str, str | None]]) -> None:
    with engine.begin() as conn:
        conn.execute(t.customers.insert(), [
            {"external_id": ext, "name": name, "locale": locale, "email": f"{ext}@example.com",
             "consent_email": True} for ext, name, locale in people])


def email_steps(root: Path) -> int:
    """Email send steps in the project's journeys (each one previewed once per customer)."""
    return sum(isinstance(step, SendStep) and step.send.channel == "email"
               for f in journey_files(root / "journeys") for step in load_journey(f).spec.steps)


def preview_all(root: Path, out: Path) -> list[Path]:
    """``clm preview JOURNEY --customer C --html DIR`` for every journey and sample customer;
    the HTML files written (one directory per customer)."""
    written: list[Path] = []
    for journey in journey_files(root / "journeys"):
        for ext, _, _ in CUSTOMERS:
            result = CliRunner().invoke(cli, ["--project", str(root), "preview", journey.stem,
                                              "--customer", ext, "--html", str(out / ext)])
            assert result.exit_code == 0, result.output
            written += [Path(line[len("(HTML: "):-1]) for line in result.output.splitlines()
                        if line.startswith("(HTML: ")]
    return written
