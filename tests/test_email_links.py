"""Every HTML email of every shipped journey, as ``clm preview --html`` writes it, links only to
absolute URLs built from the configuration; in Chromium, every link answers and the main button
leads to the shop."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import sqlalchemy as sa

from clm_core.journeys import template_checks as tc
from tests.email_fixtures import CUSTOMERS, add_customers, email_steps, preview_all, sample_project

SHOP = "https://shop.example.org/"
BASE = "https://clm.example.org"


def test_every_preview_links_to_absolute_configured_urls(tmp_path: Path, db_url: str,
                                                          engine: sa.Engine) -> None:
    root = sample_project(tmp_path / "shop", store_url=SHOP, public_base_url=BASE,
                          database_url=db_url)
    add_customers(engine, CUSTOMERS)
    files = preview_all(root, tmp_path / "html")
    assert len(files) == email_steps(root) * len(CUSTOMERS) > 0, files
    for f in files:
        html = f.read_text(encoding="utf-8")
        found = tc.links(html)
        assert found and not tc.bad_links(html), (f, tc.bad_links(html))
        hrefs = {value for tag, attr, value in found if tag == "a"}
        assert SHOP in hrefs, (f, hrefs)  # the main button
        assert f"{BASE}/u/preview" in hrefs and f"{BASE}/p/preview" in hrefs, (f, hrefs)
        body = html.split("</style>")[-1]
        assert "{" not in body, f  # no placeholder left
        assert not re.search(r"\bNone\b", body), f  # these customers have no scores yet


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a small page and records the path."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        body = b"<!doctype html><title>ok</title><p>ok</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_email_in_chromium_has_working_links_and_a_main_button_to_the_shop(
        tmp_path: Path, db_url: str, engine: sa.Engine, recorder: tuple[str, list[str]]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e .[e2e])")
    server, seen = recorder
    root = sample_project(tmp_path / "shop", store_url=f"{server}/shop",
                          public_base_url=f"{server}/clm", database_url=db_url)
    add_customers(engine, CUSTOMERS)
    files = preview_all(root, tmp_path / "html")
    assert len(files) == email_steps(root) * len(CUSTOMERS) > 0, files
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            for f in files:
                page.goto(f.as_uri())
                hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
                srcs = page.eval_on_selector_all("[src]", "els => els.map(e => e.src)")
                assert hrefs, f
                for url in hrefs + srcs:
                    assert url.startswith(server + "/"), (
                        f,
                        url,
                    )  # absolute, to the configured host
                    response = page.request.get(url)
                    assert response.status == 200, (f, url, response.status)
                seen.clear()
                button = page.locator("a.button")
                assert button.count() == 1, f
                with page.expect_navigation():
                    button.click()
                assert page.url == f"{server}/shop", (f, page.url)
                assert [s for s in seen if s != "/favicon.ico"] == ["/shop"], (f, seen)
        finally:
            browser.close()
    assert {f.parent.name for f in files} == {c[0] for c in CUSTOMERS}
