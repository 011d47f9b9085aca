"""Webhook ingestion through uvicorn: signed SendGrid batches of 100 events posted to
``clm serve`` (verify the ECDSA signature, parse, store once, apply statuses, engagement events
and suppressions, commit, answer) on SQLite and PostgreSQL, beside a bare Starlette endpoint in
the same kind of process that reads and parses the body and stores nothing.

    python benchmarks/bench_webhooks.py [--events 20000] [--batch 100] [--concurrency 4]
                                        [--backends sqlite,postgresql]

Each server runs in a process of its own (one uvicorn worker), the client in this one; the
batches are built and signed before the clock starts. Every run starts from an empty events
table over the same messages, so each event is new (no replay shortcut).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CLM_SECRET_KEY", "benchmark-secret-key")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.delivery.testing import seed_outbox, write_project
from clm_core.feedback import signatures as sig
from clm_core.testing import DatabaseFactory, postgres_reachable

BARE_APP = '''
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hook(request):
    events = json.loads(await request.body())
    return JSONResponse({"received": len(events)})

uvicorn.run(Starlette(routes=[Route("/hooks/sendgrid", hook, methods=["POST"])]),
            host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux): under a shared, loaded machine the
    server's CPU per event is a steadier figure than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(url + "/hooks/sendgrid", content=b"[]", timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)


def build_batches(messages: list[tuple[int, str, str]], n_events: int,
                  batch: int) -> list[tuple[bytes, dict[str, str]]]:
    rng = random.Random(1)
    kinds = ["processed", "delivered", "open", "click", "delivered", "open", "deferred",
             "bounce", "spamreport"]
    # Roughly a marketing sender's mix: 1% bounces (half of them hard), 0.1% complaints.
    weights = [250, 250, 200, 80, 50, 130, 29, 10, 1]
    items = []
    for _ in range(n_events):
        mid, key, email = messages[rng.randrange(len(messages))]
        kind = rng.choices(kinds, weights)[0]
        item = {"email": email, "timestamp": int(time.time()), "event": kind,
                "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"pm-{mid}.filter",
                "clm_key": key}
        if kind == "bounce":
            item["type"] = rng.choice(["bounce", "blocked"])
        if kind == "click":
            item["url"] = "https://shop.example.com/"
        items.append(item)
    out = []
    private = sig.sandbox_sendgrid_private_key()
    for start in range(0, len(items), batch):
        body = json.dumps(items[start:start + batch]).encode()
        ts = str(int(time.time()))
        out.append((body, {"Content-Type": "application/json",
                           "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                           "X-Twilio-Email-Event-Webhook-Signature":
                               sig.sign_sendgrid(private, ts, body)}))
    return out


async def post_all(url: str, batches: list[tuple[bytes, dict[str, str]]],
                   concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one(body: bytes, headers: dict[str, str]) -> None:
            async with slots:
                r = await client.post(url + "/hooks/sendgrid", content=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(b, h) for b, h in batches))
        return time.perf_counter() - started


def run_bare(batches: list[tuple[bytes, dict[str, str]]], concurrency: int) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}", proc)
        cpu = cpu_seconds(proc.pid)
        elapsed = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches, concurrency))
        return elapsed, cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait()


def run_clm(db_url: str, workdir: Path, n_events: int, batch: int,
            concurrency: int) -> tuple[float, float, int, int]:
    engine = make_engine(db_url)
    seed_outbox(engine, 5000, channel="email", prefix="wb")
    with engine.begin() as conn:
        conn.execute(sa.update(t.messages).values(status="sent", provider="sendgrid"))
        messages = [(r[0], r[1], r[2]) for r in conn.execute(
            sa.select(t.messages.c.id, t.messages.c.idempotency_key, t.customers.c.email)
            .join(t.customers))]
    batches = build_batches(messages, n_events, batch)
    root = write_project(workdir / "project", {}, db_url)  # sandbox providers: sandbox keys
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clm", "--project", str(root), "serve",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}", proc)
        cpu = cpu_seconds(proc.pid)
        elapsed = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches, concurrency))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait()
    with engine.connect() as conn:
        stored = int(conn.scalar(sa.select(sa.func.count()).select_from(t.provider_events)) or 0)
        engaged = int(conn.scalar(sa.select(sa.func.count()).select_from(t.events)) or 0)
    engine.dispose()
    return elapsed, cpu, stored, engaged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clm-bench-webhooks-"))
    dummy = [(i, f"k{i}", f"c{i}@example.com") for i in range(1, 5001)]
    bare_batches = build_batches(dummy, args.events, args.batch)
    bare, bare_cpu = run_bare(bare_batches, args.concurrency)
    bare_rate = args.events / bare
    print(f"{args.events:,} SendGrid events in batches of {args.batch}, {args.concurrency} "
          f"requests in flight, one uvicorn process per server; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  bare Starlette endpoint (parse, store nothing): {bare_rate:9,.0f} events/s wall, "
          f"{args.events / bare_cpu:9,.0f} per server CPU-second ({bare_cpu:.2f} CPU s, "
          f"{1000 * bare_cpu / args.events:.3f} ms per event)")
    for backend in [b for b in args.backends.split(",") if b]:
        if backend == "postgresql" and not postgres_reachable():
            print("  postgresql: not reachable, skipped")
            continue
        (workdir / backend).mkdir(parents=True, exist_ok=True)
        factory = DatabaseFactory(backend, workdir / backend)
        url = factory.create()
        try:
            elapsed, cpu, stored, engaged = run_clm(url, workdir / f"run-{backend}", args.events,
                                               args.batch, args.concurrency)
        finally:
            factory.drop(url)
            factory.close()
        rate = args.events / elapsed
        print(f"  clm serve on {backend:<10} (verify, store once, apply): {rate:9,.0f} events/s "
              f"wall ({rate / bare_rate:.2f}x bare), {args.events / cpu:9,.0f} per server "
              f"CPU-second ({cpu:.2f} CPU s, {1000 * cpu / args.events:.3f} ms per event"
              f"{', + the PostgreSQL server' if backend == 'postgresql' else ''}); "
              f"stored {stored:,}, engagement rows {engaged:,}")


if __name__ == "__main__":
    main()
