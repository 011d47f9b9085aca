"""Click tracking without HTTP: which links are rewritten, what counts as a scanner's click."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from clm_core.consent.tokens import CLICK, Keyring
from clm_core.settings import load_settings
from clm_core.tracking import TrackingConfig, bot_reason, load_tracking_config, rewrite_links
from tests.test_web_app import links_of

BASE = "https://clm.shop.test"
RING = Keyring.single(b"tracking-test-key")
NOW = datetime(2026, 11, 5, 12, 0)


def tracked(url: str) -> str:
    return f"{BASE}/c/" + RING.sign(CLICK, "email", "c-1", NOW, message="k:1", url=url)


def test_only_web_links_outside_the_service_are_rewritten() -> None:
    body = ('<a href="https://shop.test/a?x=1&amp;y=2">A</a>'
            "<a class='b' href='http://shop.test/b'>B</a>"
            f'<a href="{BASE}/u/k1.abc.def">unsubscribe</a>'
            '<a href="mailto:help@shop.test">mail</a><a href="tel:+1202555">call</a>'
            '<a href="#top">top</a><img src="https://shop.test/logo.png">'
            '<A HREF="HTTPS://SHOP.TEST/C">C</A>')
    out = rewrite_links(body, tracked, BASE)
    urls = links_of(out)
    assert [u.startswith(f"{BASE}/c/") for u in urls] == [True, True, False, False, False, False,
                                                        False, True]
    targets = [RING.verify(u.rsplit("/", 1)[1], CLICK, NOW).url for u in urls
               if u.startswith(f"{BASE}/c/")]
    assert targets == ["https://shop.test/a?x=1&y=2", "http://shop.test/b", "HTTPS://SHOP.TEST/C"]
    assert "https://shop.test/logo.png" in out and "mailto:help@shop.test" in out


def test_scanner_clicks() -> None:
    config = TrackingConfig(bot_window=timedelta(seconds=10),
                            bot_user_agents=("barracuda", "mygateway"))
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
    sent = NOW - timedelta(minutes=5)
    assert bot_reason(firefox, NOW, sent, config) is None
    assert (
        bot_reason(firefox, sent + timedelta(seconds=3), sent, config) == "too_soon_after_sending"
    )
    assert bot_reason("Barracuda Sentinel (EE)", NOW, sent, config) == "scanner_user_agent"
    assert bot_reason("", NOW, sent, config) == "no_user_agent"
    assert bot_reason(firefox, NOW, None, config) is None


def test_config_per_project_or_journey(tmp_path: Path) -> None:
    (tmp_path / "clm.toml").write_text('[tracking]\nclick_journeys = ["winback"]\n'
                                       'bot_user_agents = ["MyGateway"]\n', encoding="utf-8")
    config = load_tracking_config(load_settings(tmp_path, env={}))
    assert config.tracks("winback") and not config.tracks("welcome") and not config.tracks(None)
    assert "mygateway" in config.bot_user_agents and "barracuda" in config.bot_user_agents
    assert TrackingConfig(clicks=True).tracks("welcome")
