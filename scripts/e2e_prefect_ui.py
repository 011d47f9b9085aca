"""End-to-end check of what an operator sees: a deployed `lifecycle` run in the Prefect UI.

Starts a real `prefect server` on loopback, creates the `clm` work pool, deploys every flow from
prefect.yaml (`prefect deploy --all`), starts a process worker, loads the CDNOW sample into a
fresh SQLite database, and triggers the `lifecycle-daily` deployment with the sandbox email
provider rejecting a share of requests. Then Debian's Chromium, driven by Playwright, opens the
flow run page and checks that it shows the Failed state and the failed-sends table artifact.

    ./run.sh clm --help >/dev/null            # set up .venv
    apt-get install -y chromium   # Debian's browser (Playwright's own download is not used)
    .venv/bin/pip install playwright
    .venv/bin/python scripts/e2e_prefect_ui.py [--shots docs/img]

Exit status 0 when every check passed. Skips (exit 0, says so) when no browser is installed
and CLM_E2E_REQUIRED is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def sh(args: list[str], env: dict[str, str], **kw: object) -> str:
    out = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def wait_final(api: str, flow_run_id: str, timeout: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        state = run.get("state") or {}
        if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise SystemExit(f"flow run {flow_run_id} did not finish in {timeout:.0f}s")


def _visible(page, text: str, exact: bool = False):  # type: ignore[no-untyped-def]
    return page.get_by_text(text, exact=exact).locator("visible=true").first


def check_ui(ui: str, flow_run_id: str, shots: Path) -> list[str]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    seen = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
            _visible(page, "Failed", exact=True).wait_for(timeout=60_000)
            seen.append("flow run page shows state Failed")
            _visible(page, "sends failed for good").wait_for(timeout=30_000)
            seen.append("the run's Logs tab shows the failure with its count")
            page.screenshot(path=str(shots / "prefect-flow-run-failed.png"), full_page=True)
            _visible(page, "Artifacts", exact=True).click()
            _visible(page, "clm-failed-sends").wait_for(timeout=30_000)
            _visible(page, "clm-summary").wait_for(timeout=30_000)
            seen.append("Artifacts tab lists clm-failed-sends and clm-summary")
            page.screenshot(path=str(shots / "prefect-flow-run-artifacts.png"), full_page=True)
            _visible(page, "clm-failed-sends").click()
            _visible(page, "attempts").wait_for(timeout=30_000)
            _visible(page, "Bad Request").wait_for(timeout=30_000)
            seen.append("the failed-sends table shows customer, journey, step, channel, provider, "
                        "error, attempts")
            page.screenshot(path=str(shots / "prefect-failed-sends-table.png"), full_page=True)
        except PlaywrightTimeout:
            page.screenshot(path=str(shots / "prefect-e2e-failure.png"), full_page=True)
            print("page text at the failure:\n" + page.inner_text("body")[:3000])
            raise
        finally:
            browser.close()
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"skipped: no browser at {CHROMIUM} (apt-get install chromium)")
        return 1 if os.environ.get("CLM_E2E_REQUIRED") else 0
    args.shots.mkdir(parents=True, exist_ok=True)

    from clm_core.db.migrate import open_database
    from clm_core.delivery.sandbox import SandboxServer
    from clm_core.ingest.cdnow import import_cdnow
    from flows.server import free_port, running_server, server_env

    work = Path(tempfile.mkdtemp(prefix="clm-e2e-"))
    db_url = f"sqlite:///{work / 'clm.db'}"
    import_cdnow(open_database(db_url), sample=True, prospects=60)
    port = free_port()
    started = time.monotonic()
    with SandboxServer("127.0.0.1", 0, None) as sandbox, \
            running_server(port=port, home=work / "server", timeout=180) as api:
        sandbox.store.set_faults({"rate_400": 0.3, "apis": ["sendgrid"], "seed": 7})
        config = work / "clm.toml"
        config.write_text(f'[delivery]\nsandbox_url = "{sandbox.url}"\n')
        env = server_env(work / "client", api) | {
            "CLM_PROJECT_DIR": str(REPO), "CLM_DATABASE_URL": db_url, "CLM_CONFIG": str(config),
            "CLM_SECRET_KEY": os.environ.get("CLM_SECRET_KEY", "e2e-signing-key-0123456789"),
            "PREFECT_LOGGING_LEVEL": "INFO"}
        (work / "client").mkdir()
        prefect = [sys.executable, "-m", "prefect"]
        sh(prefect + ["work-pool", "create", "clm", "--type", "process", "--overwrite"], env)
        print(sh(prefect + ["--no-prompt", "deploy", "--all"], env).strip().splitlines()[-1])
        worker_log = open(work / "worker.log", "wb")
        worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "clm", "--limit", "1"],
                                  env=env, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            out = sh(prefect + ["deployment", "run", "lifecycle/lifecycle-daily"], env)
            flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
            run = wait_final(api, flow_run_id, args.timeout)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            worker_log.close()
        state = run["state"]
        print(f"flow run {flow_run_id}: {state['type']}: {state.get('message')}")
        print(f"sandbox: {json.dumps(sandbox.store.stats())}")
        if state["type"] != "FAILED" or "sends failed for good" not in (state.get("message") or ""):
            print(f"expected a Failed run with failed sends; worker log: {work / 'worker.log'}")
            return 1
        checks = check_ui(api.removesuffix("/api"), flow_run_id, args.shots)
    for c in checks:
        print(f"ok: {c}")
    print(f"screenshots in {args.shots}; {time.monotonic() - started:.0f}s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
