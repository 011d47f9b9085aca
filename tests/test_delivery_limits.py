"""Provider rate limits shared through a real ``prefect server`` (not the ephemeral API).

``clm limits`` makes one Prefect global rate limit per provider with a rate; every HTTP request
a dispatcher makes takes one slot of it, however many messages the request carries, so a batch
never asks for more slots than the limit has (Prefect refuses that with a 422 and never
waits). The sandbox's request log gives the rate the providers saw.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from clm_core.db.engine import make_engine
from clm_core.delivery.sandbox import SandboxServer
from clm_core.delivery.testing import seed_outbox, write_project
from tests.delivery_fixtures import rows

# With the other test that starts a real server: the Prefect client state it points at that
# server stays out of the harness-based flow tests.
pytestmark = pytest.mark.xdist_group("dask")

RATE = 5  # requests per second, per provider
COUPON = {"kind": "percent", "value": 10, "expires_in_days": 30}


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[str]:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import running_server

    given = os.environ.get("CLM_TEST_PREFECT_API_URL")  # a server started beforehand
    with (nullcontext(given) if given else running_server(timeout=180)) as api, \
            temporary_settings({PREFECT_API_URL: api}):
        yield api
        EventsWorker.drain_all()
        APILogWorker.drain_all()


WINDOW = 10.0  # seconds


def busiest_rate(requests: list[dict[str, Any]], window: float = WINDOW) -> float:
    """Requests per second in the busiest ``window`` seconds: while a provider has work
    waiting, this is the rate the limit allows it (plus the limit's one-second burst)."""
    times = sorted(r["at"] for r in requests)
    most = max(sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times))
    return most / window


def average_rate(requests: list[dict[str, Any]], limit: int) -> float:
    """Requests per second from the first to the last, after the first second's burst."""
    times = sorted(r["at"] for r in requests)
    return (len(times) - limit) / (times[-1] - times[0])


def run_dispatch(prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 url: str, emails: int, coupons: int, per_request: int) -> dict[str, Any]:
    """``emails`` due emails, the first ``coupons`` of them with a coupon, sent by the
    dispatch flow on the real server at ``RATE`` requests/s per provider."""
    from flows.dispatch import dispatch

    engine = make_engine(url)
    with SandboxServer("127.0.0.1", 0, None) as sandbox:
        root = write_project(tmp_path / "project", {
            "sandbox_url": sandbox.url, "batch_size": 100,
            "providers": {"sendgrid": {"rate_per_second": RATE, "batch_size": per_request},
                          "stripe": {"rate_per_second": RATE}}}, url)
        env = {
            "CLM_PROJECT_DIR": str(root),
            "CLM_DATABASE_URL": url,
            "PREFECT_API_URL": prefect_server,
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        made = subprocess.run([sys.executable, "-m", "clm", "limits"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        assert f"clm-rate-sendgrid: {RATE} slots, {float(RATE)}/s" in made.stdout
        keys = seed_outbox(engine, coupons, coupon=COUPON, prefix="c")
        keys += seed_outbox(engine, emails - coupons, prefix="e")
        # Four chunks, each a dispatcher with its own (per-process) token buckets: only the
        # shared limit keeps their sum at RATE.
        state = dispatch(chunk_size=emails // 4 + 1, max_chunks=4, return_state=True)
        final = rows(engine)
        requests = list(sandbox.store.requests)
        delivered = dict(sandbox.store.delivered)
    engine.dispose()
    by_api = {api: [r for r in requests if r["api"] == api] for api in ("sendgrid", "stripe")}
    return {"state": state, "rows": final, "keys": keys, "delivered": delivered, "by_api": by_api}


def check(result: dict[str, Any], emails: int, coupons: int,
          at_the_limit: bool = False) -> dict[str, float]:
    state, final = result["state"], result["rows"]
    assert state.is_completed(), state.message
    assert Counter(r["status"] for r in final) == {"sent": emails}
    assert all(r["attempts"] == 1 for r in final)
    sendgrid, stripe = result["by_api"]["sendgrid"], result["by_api"]["stripe"]
    # Every email reached the sandbox once; every coupon was issued once (a coupon and a
    # promotion code: two requests each).
    sent_keys = Counter(k for r in sendgrid for k in _keys_in(r["body"]))
    assert sent_keys == Counter(result["keys"])
    assert Counter(r["path"] for r in stripe) == {"/v1/coupons": coupons,
                                                  "/v1/promotion_codes": coupons}
    assert all(r["fault"] is None for r in sendgrid + stripe)
    assert all(n == 1 for n in result["delivered"].values())
    rates = {}
    for api, requests in (("sendgrid", sendgrid), ("stripe", stripe)):
        rates[api] = busiest_rate(requests)
        # The limit holds across the four dispatchers (each alone would allow RATE).
        assert rates[api] <= 1.2 * RATE, f"{api}: {rates[api]:.2f} requests/s"
        assert average_rate(requests, RATE) <= 1.05 * RATE
    if at_the_limit:
        # Requests are waiting from the start for both providers, so each is kept at the
        # limit's rate while it has work (the emails that carry a coupon wait for it, so the
        # email average over the whole run is lower and only reported).
        for api in ("stripe", "sendgrid"):
            assert rates[api] >= 0.8 * RATE, f"{api}: {rates[api]:.2f} requests/s"
    print(f"\n{emails} emails in {len(sendgrid)} requests: busiest {WINDOW:.0f} s at "
          f"{rates['sendgrid']:.2f}/s, average {average_rate(sendgrid, RATE):.2f}/s; "
          f"{coupons} coupons in {len(stripe)} requests: busiest {rates['stripe']:.2f}/s, "
          f"average {average_rate(stripe, RATE):.2f}/s (limit {RATE}/s each)")
    return rates


def _keys_in(body: str) -> list[str]:
    import json

    return [p["custom_args"]["clm_key"] for p in json.loads(body)["personalizations"]]


def test_shared_rate_limit_sends_batches_once_at_the_limit(
        prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    """Emails in batches and coupons under a 5 requests/s limit: no batch is refused,
    everything is sent once, the providers see the limit's rate."""
    check(run_dispatch(prefect_server, tmp_path, monkeypatch, db_url, emails=200, coupons=40,
                       per_request=2), 200, 40, at_the_limit=True)


@pytest.mark.slow
def test_shared_rate_limit_at_scale(prefect_server: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    """The acceptance volume: 3,000 emails in batches and 300 coupons at 5 requests/s, and
    the coupon service kept within 20% of the limit (needs a machine that is not saturated:
    the Prefect server and the dispatchers share its cores)."""
    check(run_dispatch(prefect_server, tmp_path, monkeypatch, db_url, emails=3000, coupons=300,
                       per_request=10), 3000, 300, at_the_limit=True)


def test_missing_limit_halts_the_channel_and_spends_no_attempt(
        prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    """A provider with a rate but no limit on this server: nothing is sent unthrottled, the
    run fails saying why, and the messages wait with their attempts intact."""
    from flows.dispatch import dispatch

    url = db_url
    engine = make_engine(url)
    with SandboxServer("127.0.0.1", 0, None) as sandbox:
        root = write_project(tmp_path / "project", {
            "sandbox_url": sandbox.url, "providers": {"twilio": {"rate_per_second": 3}}}, url)
        for k, v in {"CLM_PROJECT_DIR": str(root), "CLM_DATABASE_URL": url,
                     "PREFECT_API_URL": prefect_server}.items():
            monkeypatch.setenv(k, v)
        seed_outbox(engine, 5, channel="sms", prefix="s")
        state = dispatch(return_state=True)
        assert not sandbox.store.requests
    final = rows(engine)
    engine.dispose()
    assert state.is_failed()
    assert "channel sms halted" in state.message and "clm-rate-twilio" in state.message
    assert {(r["status"], r["reason"], r["attempts"]) for r in final} == {
        ("pending", "provider_halted", 0)}
