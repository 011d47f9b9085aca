"""Dispatch throughput against the sandbox (in its own process), in one run:

- bare loop: async httpx posting pre-built requests, nothing else (the ceiling);
- the same bare loop on the dispatcher's HTTP path: requests built outright and sent on one
  httpx transport per slot, without the client (the ceiling for the same HTTP work);
- clm dispatch: claim, consent/suppression check, render, send, commit every outcome;
- naive: one Prefect task per message (read, render, send, record), on a small slice, with an
  ephemeral Prefect API.

Beside each rate, this process's CPU per message (every thread: the event loop, and with SQLite
the database work too; not the sandbox's, nor a PostgreSQL server's).

    python benchmarks/bench_dispatch.py [--messages 5000] [--naive 300] [--database URL]

Non-batched providers (Twilio-style SMS, SendGrid with one message per request) are compared
with the bare loop over the same API (the goal's reference), and at the end also with the bare
loop on their own HTTP path; SendGrid batching with the bare per-message loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CLM_SECRET_KEY", "benchmark-secret-key")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from clm_core.db import tables as t  # noqa: E402
from clm_core.db.migrate import open_database  # noqa: E402
from clm_core.delivery.config import load_delivery_config  # noqa: E402
from clm_core.delivery.dispatcher import Dispatcher  # noqa: E402
from clm_core.delivery.providers.base import basic_auth  # noqa: E402
from clm_core.delivery.sandbox import spawn  # noqa: E402
from clm_core.delivery.testing import seed_outbox, write_project  # noqa: E402
from clm_core.settings import load_settings  # noqa: E402

# Requests in flight, the same for every run. The sandbox answers in about a millisecond, so a
# few connections keep it busy; httpx's pool costs more CPU per request with more connections
# (measured here: 0.9 ms at 4, 1.8 ms at 16, 3.1 ms at 32).
CONCURRENCY = 4


T = TypeVar("T")
CPU: dict[str, float] = {}  # run -> this process's CPU seconds per message


def timed(name: str, n: int, run: Callable[[], T]) -> T:
    """``run()``, with this process's CPU per message kept in ``CPU[name]``."""
    cpu = time.process_time()
    result = run()
    CPU[name] = (time.process_time() - cpu) / n
    return result


async def bare_loop(url: str, n: int, kind: str) -> float:
    """Pre-built requests, a semaphore and a pooled client: the most a sender could do."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with slots:
                if kind == "twilio":
                    r = await client.post(
                        "/2010-04-01/Accounts/AC1/Messages.json",
                        auth=("AC1", "token"),
                        data={
                            "To": f"+1303555{i % 10000:04d}",
                            "From": "+15005550006",
                            "Body": f"CLM Store: hi Customer{i}, we miss you. Reply STOP to opt out.",  # noqa: E501  (prose or a URL: clearer whole)
                        },
                        headers={"Idempotency-Key": f"bare-{kind}-{i}"},
                    )
                else:
                    r = await client.post(
                        "/v3/mail/send",
                        headers={"Authorization": "Bearer k"},
                        json={
                            "personalizations": [
                                {
                                    "to": [{"email": f"bare{i}@example.com"}],
                                    "subject": "We miss you",
                                    "custom_args": {"clm_key": f"bare-{kind}-{i}"},
                                }
                            ],
                            "from": {"email": "shop@example.com"},
                            "content": [
                                {"type": "text/plain", "value": f"Hi Customer{i}"},
                                {"type": "text/html", "value": f"<p>Hi Customer{i}</p>"},
                            ],
                        },
                    )
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


def bare_request(base: str, headers: httpx.Headers, i: int, kind: str) -> httpx.Request:
    """Request ``i`` of the bare loop (keys of its own), as the client would build it (its
    default headers, Basic auth as a header), built outright."""
    extensions = {"timeout": httpx.Timeout(10).as_dict()}
    merged = headers.copy()
    if kind == "twilio":
        merged.update({"Authorization": basic_auth("AC1", "token"),
                       "Idempotency-Key": f"slot-{kind}-{i}"})
        return httpx.Request("POST", f"{base}/2010-04-01/Accounts/AC1/Messages.json",
                             headers=merged, extensions=extensions, data={
                                 "To": f"+1303555{i % 10000:04d}", "From": "+15005550006",
                                 "Body": f"CLM Store: hi Customer{i}, we miss you. Reply STOP to opt out."})  # noqa: E501  (prose or a URL: clearer whole)
    merged["Authorization"] = "Bearer k"
    return httpx.Request("POST", f"{base}/v3/mail/send", headers=merged, extensions=extensions,
                         json={"personalizations": [{
                             "to": [{"email": f"bare{i}@example.com"}], "subject": "We miss you",
                             "custom_args": {"clm_key": f"slot-{kind}-{i}"}}],
                             "from": {"email": "shop@example.com"},
                             "content": [{"type": "text/plain", "value": f"Hi Customer{i}"},
                                         {"type": "text/html", "value": f"<p>Hi Customer{i}</p>"}]})


async def bare_transports(url: str, n: int, kind: str) -> float:
    """The bare loop on the dispatcher's HTTP path (``HttpProvider``): each request built
    outright and sent on one transport per slot, each holding one keep-alive connection, with
    no client. Beside ``bare_loop`` because the dispatcher no longer sends through the client:
    this is the ceiling for the same HTTP work."""
    transports = [httpx.AsyncHTTPTransport(limits=httpx.Limits(
        max_connections=1, max_keepalive_connections=1)) for _ in range(CONCURRENCY)]
    headers = httpx.AsyncClient().headers  # the client's defaults, as the dispatcher sends
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with slots:
            request = bare_request(url.rstrip("/"), headers, i, kind)
            transport = transports.pop()
            try:
                response = await transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            finally:
                transports.append(transport)
            if response.status_code >= 400:
                raise RuntimeError(f"HTTP {response.status_code}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)
    finally:
        for transport in transports:
            await transport.aclose()


RUN = time.strftime("%H%M%S")  # message keys unique per run, so a database can be reused


def clm_dispatch(name: str, root: Path, engine: sa.Engine, n: int, channel: str,
                 prefix: str) -> float:
    seed_outbox(engine, n, channel=channel, prefix=f"{prefix}{RUN}")
    settings = load_settings(root)
    dispatcher = Dispatcher(engine, settings, load_delivery_config(settings),
                            signing_key=os.environ["CLM_SECRET_KEY"].encode())
    report = timed(name, n, lambda: asyncio.run(dispatcher.run()))
    assert report.sent == n, report.summary()
    return n / report.elapsed


def naive_prefect(root: Path, engine: sa.Engine, url: str, n: int) -> float:
    """One Prefect task per message: read it, render it, send it, record it."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from clm_core.templating import TemplateStore, sample_context

    keys = seed_outbox(engine, n, channel="sms", prefix=f"naive{RUN}")
    store = TemplateStore(root / "templates")
    m, c = t.messages, t.customers

    @task(cache_policy=NO_CACHE)
    def send_one(key: str) -> None:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(m.c.id, c.c.phone, c.c.name)
                .join(c, c.c.id == m.c.customer_id)
                .where(m.c.idempotency_key == key)
            ).one()
        context = sample_context() | {
            "customer": {"first_name": row.name.split()[0], "name": row.name}
        }
        text = store.render_sms("winback", "en", context).text
        r = httpx.post(f"{url}/2010-04-01/Accounts/AC1/Messages.json", auth=("AC1", "token"),
                       data={"To": row.phone, "From": "+15005550006", "Body": text},
                       headers={"Idempotency-Key": key})
        r.raise_for_status()
        with engine.begin() as conn:
            conn.execute(
                sa.update(m)
                .where(m.c.id == row.id)
                .values(status="sent", provider_message_id=r.json()["sid"])
            )

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def naive(keys: list[str]) -> None:
        for future in [send_one.submit(k) for k in keys]:
            future.result()

    naive(keys[:5])  # start the ephemeral API outside the timing
    rest = keys[5:]
    started = time.perf_counter()
    naive(rest)
    return len(rest) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--naive", type=int, default=300)
    parser.add_argument("--database", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="clm-bench-dispatch-"))
    url = args.database or f"sqlite:///{tmp / 'bench.db'}"
    proc, sandbox = spawn()
    try:
        engine = open_database(url)
        root = write_project(
            tmp / "project",
            {
                "sandbox_url": sandbox,
                "batch_size": 500,
                "lanes": 4,
                "providers": {
                    "twilio": {"concurrency": CONCURRENCY},
                    "sendgrid": {"concurrency": CONCURRENCY},
                },
            },
            url,
        )
        single = write_project(
            tmp / "single",
            {
                "sandbox_url": sandbox,
                "batch_size": 500,
                "lanes": 4,
                "providers": {"sendgrid": {"batch_size": 1, "concurrency": CONCURRENCY}},
            },
            url,
        )
        n = args.messages
        print(
            f"{n:,} messages per run; sandbox in its own process; database {engine.dialect.name}; "
            f"concurrency {CONCURRENCY}",
            flush=True,
        )
        names = ["bare httpx loop, Twilio-style SMS", "clm dispatch, Twilio-style SMS",
                 "bare httpx loop, SendGrid one per request",
                 "clm dispatch, SendGrid one per request",
                 "clm dispatch, SendGrid batched (<=1000)"]
        slot_names = ["bare transport per slot, Twilio-style SMS",
                      "bare transport per slot, SendGrid one/request"]
        bare_sms = timed(names[0], n, lambda: asyncio.run(bare_loop(sandbox, n, "twilio")))
        bare_mail = timed(names[2], n, lambda: asyncio.run(bare_loop(sandbox, n, "sendgrid")))
        slot_sms = timed(slot_names[0], n,
                         lambda: asyncio.run(bare_transports(sandbox, n, "twilio")))
        slot_mail = timed(slot_names[1], n,
                          lambda: asyncio.run(bare_transports(sandbox, n, "sendgrid")))
        rows = [
            (names[0], bare_sms, bare_sms),
            (names[1], clm_dispatch(names[1], root, engine, n, "sms", "sms"),
             bare_sms),
            (names[2], bare_mail, bare_mail),
            (names[3],
             clm_dispatch(names[3], single, engine, n, "email", "one"),
             bare_mail),
            (names[4],
             clm_dispatch(names[4], root, engine, n, "email", "batch"),
             bare_mail),
        ]
        rows += [(slot_names[0], slot_sms, bare_sms), (slot_names[1], slot_mail, bare_mail)]
        naive = naive_prefect(root, engine, sandbox, args.naive) if args.naive else float("nan")
        rows.append((f"naive: one Prefect task per message ({args.naive})", naive, bare_sms))
        print(f"\n{'run':<46} {'msg/s':>9} {'vs bare':>8} {'CPU ms/msg':>11}")
        for name, rate, base in rows:
            cpu = f"{CPU[name] * 1000:>11.2f}" if name in CPU else f"{'':>11}"
            print(f"{name:<46} {rate:>9,.0f} {rate / base:>7.2f}x {cpu}")
        sms = rows[1][1]
        print(f"\nclm dispatch / the bare loop on its HTTP path (transport per slot): "
              f"SMS {sms / slot_sms:.2f}x, SendGrid one per request {rows[3][1] / slot_mail:.2f}x")
        print(f"clm dispatch (SMS) / naive Prefect: {sms / naive:,.0f}x; "
              f"batched email / bare per-message loop: {rows[4][1] / bare_mail:,.1f}x")
        stats = httpx.get(f"{sandbox}/_sandbox/stats").json()
        print(f"sandbox: {stats['requests']:,} requests, {stats['deliveries']:,} deliveries, "
              f"{stats['duplicates']} duplicates")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
