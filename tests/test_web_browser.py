"""The consent pages in headless Chromium against ``clm serve``: the button really POSTs (the
page's Content-Security-Policy allows its own form), the preferences form saves with its CSRF
token, both locales render. Screenshots go to CLM_WEB_SHOTS (e.g. docs/img) when it is set.

Skips, saying why, without /usr/bin/chromium or the playwright package; the browser-free
checks of the same pages (links, forms, escaping) are in test_web_app.py and test_web_serve.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.consent.tokens import SUBSCRIPTION, Keyring
from clm_core.db import tables as t
from clm_core.runs import utcnow
from tests.web_server import clm_serve

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run "
                                 "the browser tests (Debian's chromium is used, no download)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)

KEY = os.environ["CLM_SECRET_KEY"].encode()
SHOTS = os.environ.get("CLM_WEB_SHOTS")
T0 = datetime(2026, 11, 1)


def write_toml(root: Path, db_url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "clm.toml").write_text(f'''[clm]
database_url = "{db_url}"

[delivery]
store_name = "Maple & Co."

[consent]
topics = ["offers", "new_arrivals"]

[consent.topic_labels.offers]
en = "Offers and coupons"
zh-CN = "优惠和优惠券"

[consent.topic_labels.new_arrivals]
en = "New arrivals"
zh-CN = "新品上架"
''', encoding="utf-8")
    return root


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def shot(page: object, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)


def test_pages_in_chromium(tmp_path: Path, db_url: str, engine: sa.Engine, browser) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(sa.insert(t.customers), [
            {"external_id": "en-1", "name": "Ann Lee", "email": "ann.lee@example.com",
             "phone": "+12025550101", "locale": "en", "consent_email": True, "consent_sms": True},
            {"external_id": "zh-1", "name": "王芳", "email": "wang.fang@example.cn",
             "phone": "+8613800138000", "locale": "zh-CN", "consent_email": True,
             "consent_sms": True}])
    ring = Keyring.single(KEY)
    issued = utcnow() - timedelta(hours=1)
    root = write_toml(tmp_path / "project", db_url)
    with clm_serve(root) as (base, _proc):
        page = browser.new_page(viewport={"width": 800, "height": 700})  # type: ignore[attr-defined]
        for ext, locale, done in (
            ("en-1", "en", "You are unsubscribed"),
            ("zh-1", "zh-CN", "您已退订"),
        ):
            token = ring.sign(SUBSCRIPTION, "email", ext, issued)
            page.goto(f"{base}/u/{token}")
            assert page.locator("html").get_attribute("lang") == locale
            shot(page, f"web-unsubscribe-{locale}.png", tmp_path)
            page.locator("button[type=submit]").click()
            page.wait_for_load_state()
            assert done in page.content()
            page.goto(f"{base}/p/{token}")
            shot(page, f"web-preferences-{locale}.png", tmp_path)
            # Opt back in to email, but not to offers; save.
            page.check("input[name=ch_email]")
            page.uncheck("input[name=topic_email_offers]")
            page.locator("button[type=submit]").click()
            page.wait_for_load_state()
            assert (
                "Your choices are saved." if locale == "en" else "您的选择已保存"
            ) in page.content()
            if locale == "en":
                shot(page, "web-preferences-saved-en.png", tmp_path)
        page.goto(f"{base}/u/k1.altered.token")
        assert "This link does not work" in page.content()
        shot(page, "web-invalid-en.png", tmp_path)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.consent_ledger.c.customer_id, t.consent_ledger.c.topic,
                                      t.consent_ledger.c.action, t.consent_ledger.c.source)
                            .order_by(t.consent_ledger.c.id)).all()
        consent = conn.execute(sa.select(t.customers.c.consent_email)).scalars().all()
    per_customer = [(r.topic, r.action, r.source) for r in rows if r.customer_id == 1]
    assert per_customer == [(None, "withdrawn", "unsubscribe"), (None, "granted", "preferences"),
                            ("offers", "withdrawn", "preferences")]
    assert len(rows) == 6 and consent == [True, True]
