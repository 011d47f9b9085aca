"""Screenshots of the report's sections (docs/img/report-<section>.png) in headless Chromium.

    .venv/bin/python scripts/report_screens.py report.html [docs/img]

Prints every console message and page error and exits 1 if there was any.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

SECTIONS = ("lifecycle", "value", "churn", "journeys", "model", "deliverability")


def main(argv: list[str]) -> int:
    report = Path(argv[0]).resolve()
    out = Path(argv[1] if len(argv) > 1 else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                else problems.append(f"request to {r.url}"))
        page.goto(report.as_uri())
        for name in SECTIONS:
            page.locator(f"section#{name}").screenshot(path=str(out / f"report-{name}.png"))
        diagram = page.locator('section#journeys .diagram:has(svg[aria-label="journey winback"])')
        if diagram.count():
            diagram.screenshot(path=str(out / "report-journey-diagram.png"))
        browser.close()
    for line in problems:
        print(line)
    print(f"screenshots in {out}; {len(problems)} console messages or errors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
