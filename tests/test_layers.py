"""The layers stay apart: the domain (clm_core) never imports the orchestration (tasks, flows,
Prefect) or the application (clm); tasks never import flows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth of the file (lazy imports too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                roots.add(str(node.args[0].value).split(".")[0])
    return roots


def offenders(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & forbidden
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_domain_imports_no_orchestration_or_application() -> None:
    assert offenders("clm_core", {"flows", "tasks", "prefect", "prefect_dask", "clm"}) == {}


def test_tasks_never_import_flows_or_the_application() -> None:
    assert offenders("tasks", {"flows", "clm"}) == {}


def test_flows_never_import_the_application() -> None:
    assert offenders("flows", {"clm"}) == {}


def test_importing_every_domain_module_loads_no_orchestrator() -> None:
    """The check from the outside: import every clm_core module in a fresh interpreter."""
    code = (
        "import importlib, pkgutil, sys, clm_core\n"
        "for m in pkgutil.walk_packages(clm_core.__path__, 'clm_core.'):\n"
        "    if 'migrations' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'flows', 'tasks', 'prefect'})\n"
        "assert not bad, bad\n"
        "print(len([m for m in sys.modules if m.startswith('clm_core')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 40  # every module was really imported
