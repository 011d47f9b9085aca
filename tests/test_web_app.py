"""The web app in process (Starlette's test client): health, body limit, redacted access log,
the unsubscribe and preferences pages, tokens with key rotation, clicks. The same behaviour
over real HTTP against ``clm serve`` is in test_web_serve.py."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from clm_core.consent.tokens import CLICK, SUBSCRIPTION, Keyring
from clm_core.db import tables as t
from clm_core.settings import Settings, load_settings
from clm_core.web.app import create_app, redact_target
from tests.test_consent_ledger import add_customer, customer, ledger_rows, suppressions

KEY = os.environ["CLM_SECRET_KEY"].encode()
NOW = datetime(2026, 11, 3, 10, 0)
TOML = """
[clm]
public_base_url = "https://clm.shop.test"

[web]
max_body_bytes = 2048

[delivery]
store_name = "Acme <Records>"

[consent]
topics = ["offers", "tips"]

[consent.topic_labels.offers]
en = "Offers and coupons"
zh-CN = "优惠和优惠券"
"""


@pytest.fixture
def web_settings(tmp_path: Path, db_url: str) -> Settings:
    (tmp_path / "clm.toml").write_text(TOML, encoding="utf-8")
    return load_settings(tmp_path, env={"CLM_DATABASE_URL": db_url,
                                        "CLM_SECRET_KEY": KEY.decode()})


@pytest.fixture
def client(web_settings: Settings, engine: sa.Engine) -> Iterator[TestClient]:
    app = create_app(web_settings, engine, keyring=Keyring.single(KEY), clock=lambda: NOW)
    with TestClient(app, base_url="https://clm.shop.test") as c:
        yield c


def token(customer_ext: str = "c-1", channel: str = "email", ring: Keyring | None = None,
          issued: datetime = NOW - timedelta(days=1)) -> str:
    return (ring or Keyring.single(KEY)).sign(SUBSCRIPTION, channel, customer_ext, issued)


class Links(HTMLParser):
    """Every href/src/action in a page, to check none is broken or points elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in {"href", "src", "action"} and v is not None]


def links_of(page: str) -> list[str]:
    parser = Links()
    parser.feed(page)
    return parser.urls


def test_health(client: TestClient) -> None:
    got = client.get("/healthz")
    assert got.status_code == 200 and got.json() == {"status": "ok"}


def test_bodies_over_the_limit_get_413_declared_or_streamed(client: TestClient) -> None:
    tok = token()
    assert client.post(f"/u/{tok}", content=b"x" * 4096,
                       headers={"content-type": "application/x-www-form-urlencoded"}
                       ).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    assert client.post(f"/u/{tok}", content=chunks(),
                       headers={"content-type": "application/x-www-form-urlencoded"}
                       ).status_code == 413


def test_access_log_redacts_tokens(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    tok = token()
    with caplog.at_level(logging.INFO, logger="clm.web.access"):
        client.get(f"/u/{tok}?signature=abc123&x=1")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "clm.web.access"]
    assert lines and lines[-1]["path"] == "/u/<redacted>?signature=<redacted>&x=1"
    assert tok not in caplog.text and tok.split(".")[1] not in caplog.text
    assert redact_target("/c/" + token()) == "/c/<redacted>"


def test_get_shows_the_page_and_changes_nothing(client: TestClient, engine: sa.Engine) -> None:
    add_customer(engine)
    tok = token()
    got = client.get(f"/u/{tok}")
    assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
    assert "set-cookie" not in got.headers
    assert "Acme &lt;Records&gt;" in got.text  # escaped
    assert "a***@example.com" in got.text and "ann@example.com" not in got.text
    assert links_of(got.text) == [f"/u/{tok}", f"/p/{tok}"]
    assert re.search(r'<form method="post" action="/u/[^"]+">', got.text)
    assert ledger_rows(engine) == [] and customer(engine, 1)["consent_email"] is True


def test_zh_cn_customer_gets_the_chinese_page(client: TestClient, engine: sa.Engine) -> None:
    cid = add_customer(engine, "c-zh")
    with engine.begin() as conn:
        conn.execute(sa.update(t.customers).where(t.customers.c.id == cid).values(locale="zh-CN"))
    got = client.get(f"/u/{token('c-zh')}")
    assert 'lang="zh-CN"' in got.text and "退订" in got.text


def test_one_click_post_unsubscribes_once(client: TestClient, engine: sa.Engine) -> None:
    cid = add_customer(engine)
    tok = token()
    first = client.post(f"/u/{tok}", data={"List-Unsubscribe": "One-Click"})
    assert first.status_code == 200 and "set-cookie" not in first.headers
    assert "You are unsubscribed" in first.text
    assert customer(engine, cid)["consent_email"] is False
    assert customer(engine, cid)["consent_sms"] is True
    second = client.post(f"/u/{tok}", files={"List-Unsubscribe": (None, "One-Click")})  # multipart
    assert second.status_code == 200
    [row] = ledger_rows(engine)
    assert (row["source"], row["action"], row["wording_version"]) == (
        "unsubscribe", "withdrawn", "web-2026-11")
    assert row["evidence"]["one_click"] is True and row["evidence"]["key_id"] == "k1"
    assert tok not in json.dumps(row["evidence"])
    assert suppressions(engine) == {("email", "ann@example.com", "unsubscribed")}
    assert "already" in client.get(f"/u/{tok}").text


@pytest.mark.parametrize("case", ["altered", "foreign", "expired", "click_token", "garbage"])
def test_bad_tokens_get_400_and_change_nothing(client: TestClient, engine: sa.Engine,
                                               case: str) -> None:
    add_customer(engine)
    good = token()
    bad = {"altered": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
           "foreign": token(ring=Keyring.single(b"someone-elses-key")),
           "expired": token(issued=NOW - timedelta(days=401)),
           "click_token": Keyring.single(KEY).sign(CLICK, "email", "c-1", NOW, message="m",
                                                   url="https://x.test"),
           "garbage": "not-a-token"}[case]
    for method, path in (("get", "/u/"), ("post", "/u/"), ("get", "/p/"), ("post", "/p/")):
        got = getattr(client, method)(path + bad, **({"data": {"List-Unsubscribe": "One-Click"}}
                                                     if method == "post" else {}))
        assert got.status_code == 400 and "This link does not work" in got.text, (method, path)
    assert ledger_rows(engine) == [] and customer(engine, 1)["consent_email"] is True


def test_rotated_keys_old_links_verify_new_key_signs(web_settings: Settings,
                                                     engine: sa.Engine) -> None:
    add_customer(engine)
    old = Keyring("k1", {"k1": b"old-key-old-key"})
    new = Keyring("k2", {"k2": b"new-key-new-key", "k1": b"old-key-old-key"})
    app = create_app(web_settings, engine, keyring=new, clock=lambda: NOW)
    with TestClient(app) as c:
        assert c.post(f"/u/{token(ring=old)}", data={"List-Unsubscribe": "One-Click"}
                      ).status_code == 200
        assert new.sign(SUBSCRIPTION, "email", "c-1", NOW).startswith("k2.")
    assert customer(engine, 1)["consent_email"] is False
    dropped = create_app(web_settings, engine, keyring=Keyring("k2", {"k2": b"new-key-new-key"}),
                         clock=lambda: NOW)
    with TestClient(dropped) as c:
        assert c.get(f"/u/{token(ring=old)}").status_code == 400


def preferences_form(page: str) -> dict[str, str]:
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    return {"csrf": csrf.group(1)}


def test_preferences_per_channel_and_topic_with_csrf(client: TestClient,
                                                     engine: sa.Engine) -> None:
    cid = add_customer(engine)
    tok = token()
    page = client.get(f"/p/{tok}")
    assert page.status_code == 200 and "Offers and coupons" in page.text and "tips" in page.text
    assert 'name="topic_email_offers"' in page.text and 'name="ch_sms"' in page.text
    form = preferences_form(page.text)
    # Keep email but not its offers; keep SMS and all its topics.
    choice = {**form, "ch_email": "on", "topic_email_tips": "on", "ch_sms": "on",
              "topic_sms_offers": "on", "topic_sms_tips": "on"}
    saved = client.post(f"/p/{tok}", data=choice)
    assert saved.status_code == 200 and "Your choices are saved." in saved.text
    rows = ledger_rows(engine)
    assert [(r["channel"], r["topic"], r["action"], r["source"]) for r in rows] == [
        ("email", "offers", "withdrawn", "preferences")]
    assert customer(engine, cid)["consent_email"] is True
    again = client.post(f"/p/{tok}", data=choice)
    assert "already as saved" in again.text and len(ledger_rows(engine)) == 1
    # Without a valid CSRF token, or from another site, nothing changes.
    for data, headers in (({"ch_sms": "on"}, {}), ({**form, "ch_sms": "on"},
                                                    {"origin": "https://evil.test"}),
                          ({"csrf": form["csrf"][:-2] + "xx"}, {})):
        got = client.post(f"/p/{tok}", data=data, headers=headers)
        assert got.status_code == 403
    assert len(ledger_rows(engine)) == 1
    # Unticking SMS withdraws it (no suppression: a choice, not an opt-out signal).
    client.post(f"/p/{tok}", data={**form, "ch_email": "on", "topic_email_tips": "on"})
    assert customer(engine, cid)["consent_sms"] is False
    assert suppressions(engine) == set()


def test_tracked_click_redirects_to_the_signed_target_and_records_it(
        client: TestClient, engine: sa.Engine) -> None:
    cid = add_customer(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(t.messages).values(
            idempotency_key="k:1", customer_id=cid, journey="winback", channel="email",
            status="sent", send_after=NOW, created_at=NOW, updated_at=NOW,
            sent_at=NOW - timedelta(hours=1)))
    ring = Keyring.single(KEY)
    target = "https://shop.example.com/sale?x=1&y=2"
    tok = ring.sign(CLICK, "email", "c-1", NOW, message="k:1", url=target)
    person = client.get(f"/c/{tok}", follow_redirects=False,
                        headers={"user-agent": "Mozilla/5.0 (Macintosh) Safari/605"})
    assert person.status_code == 302 and person.headers["location"] == target
    scanner = client.get(f"/c/{tok}", follow_redirects=False,
                         headers={"user-agent": "Mozilla/5.0 Barracuda Sentinel"})
    assert scanner.status_code == 302
    assert client.head(f"/c/{tok}", follow_redirects=False).status_code == 302
    altered = client.get(f"/c/{tok[:-2]}xx", follow_redirects=False)
    assert altered.status_code == 400 and "location" not in altered.headers
    with engine.connect() as conn:
        events = conn.execute(sa.select(t.events.c.event_type, t.events.c.properties)
                              .order_by(t.events.c.id)).all()
    assert [e.event_type for e in events] == ["clicked", "bot_click"]
    assert events[0].properties["url"] == target and events[1].properties["bot_reason"] == \
        "scanner_user_agent"
