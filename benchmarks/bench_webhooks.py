"""Webhook ingestion through uvicorn: signed SendGrid batches of 100 events posted to
``clm serve`` (verify the ECDSA signature, parse, store once, apply statuses, engagement events
and suppressions, commit, answer) on SQLite and PostgreSQL, beside a bare Starlette endpoint in
the same kind of process that reads and parses the body and stores nothing.

    python benchmarks/bench_webhooks.py [--events 20000] [--batch 100] [--concurrency 4]
                                        [--bare-concurrency 4,16] [--backends sqlite,postgresql]
                                        [--client httpx|raw]

Each server runs in a process of its own (one uvicorn worker), the client in this one; the
batches are built and signed before the clock starts. Every run starts from an empty events
table over the same messages, so each event is new (no replay shortcut).

Beside each rate: the server's CPU per event, and how busy the server process was (its CPU
seconds over the wall seconds) and the client's CPU. A server well under one busy core while
the client uses the rest of the machine is bounded by the client, not by itself: the bare
endpoint is, so it is measured at more than one concurrency.
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


async def post_all(url: str, batches: list[tuple[bytes, dict[str, str]]], concurrency: int,
                   kind: str = "httpx") -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) to post every batch with a ``kind`` client."""
    if kind == "raw":
        return await post_raw(url, batches, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one(body: bytes, headers: dict[str, str]) -> None:
            async with slots:
                r = await client.post(url + "/hooks/sendgrid", content=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(b, h) for b, h in batches))
        return time.perf_counter() - started, time.process_time() - cpu


async def post_raw(url: str, batches: list[tuple[bytes, dict[str, str]]],
                   concurrency: int) -> tuple[float, float]:
    """``post_all`` over plain keep-alive HTTP/1.1 connections with the requests encoded
    beforehand: a tenth of httpx's CPU per request, so that the client, which shares the
    machine with the server, is not what a fast server waits for."""
    host, port = url.removeprefix("http://").split(":")
    requests = []
    for body, headers in batches:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(f"POST /hooks/sendgrid HTTP/1.1\r\nHost: {host}\r\n{head}"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    queue = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in queue:
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                if status.split()[1:2] != [b"200"]:
                    raise RuntimeError(f"{status.decode().strip()}: {answer[:200]!r}")
        finally:
            writer.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - started, time.process_time() - cpu


def run_bare(batches: list[tuple[bytes, dict[str, str]]], concurrency: int,
             client: str) -> tuple[float, float, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}", proc)
        cpu = cpu_seconds(proc.pid)
        elapsed, used = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches, concurrency,
                                             client))
        return elapsed, cpu_seconds(proc.pid) - cpu, used
    finally:
        proc.terminate()
        proc.wait()


def run_clm(db_url: str, workdir: Path, n_events: int, batch: int, concurrency: int,
            client: str) -> tuple[float, float, float, int, int]:
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
        elapsed, used = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches, concurrency,
                                             client))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait()
    with engine.connect() as conn:
        stored = int(conn.scalar(sa.select(sa.func.count()).select_from(t.provider_events)) or 0)
        engaged = int(conn.scalar(sa.select(sa.func.count()).select_from(t.events)) or 0)
    engine.dispose()
    return elapsed, cpu, used, stored, engaged


def busy(cpu: float, elapsed: float, client: float) -> str:
    return f"server busy {cpu / elapsed:.0%} of a core, client {client / elapsed:.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--bare-concurrency", default="4,16",
                    help="requests in flight for the bare endpoint, comma-separated")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--client", choices=["httpx", "raw"], default="httpx",
                    help="httpx.AsyncClient, or plain HTTP/1.1 over asyncio streams (less CPU)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clm-bench-webhooks-"))
    dummy = [(i, f"k{i}", f"c{i}@example.com") for i in range(1, 5001)]
    bare_batches = build_batches(dummy, args.events, args.batch)
    print(f"{args.events:,} SendGrid events in batches of {args.batch}, {args.concurrency} "
          f"requests in flight, {args.client} client, one uvicorn process per server; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    bare_rate = 0.0
    for n in [int(c) for c in args.bare_concurrency.split(",") if c]:
        bare, bare_cpu, client = run_bare(bare_batches, n, args.client)
        rate = args.events / bare
        if n == args.concurrency or not bare_rate:
            bare_rate = rate  # the one compared with: the same requests in flight
        print(f"  bare Starlette endpoint (parse, store nothing), {n:2d} in flight: {rate:9,.0f} "
              f"events/s wall, {1000 * bare_cpu / args.events:.3f} ms server CPU per event "
              f"({bare_cpu:.2f} s); {busy(bare_cpu, bare, client)}")
    for backend in [b for b in args.backends.split(",") if b]:
        if backend == "postgresql" and not postgres_reachable():
            print("  postgresql: not reachable, skipped")
            continue
        (workdir / backend).mkdir(parents=True, exist_ok=True)
        factory = DatabaseFactory(backend, workdir / backend)
        url = factory.create()
        try:
            elapsed, cpu, client, stored, engaged = run_clm(
                url, workdir / f"run-{backend}", args.events, args.batch, args.concurrency,
                args.client)
        finally:
            factory.drop(url)
            factory.close()
        rate = args.events / elapsed
        extra = ", + the PostgreSQL server's" if backend == "postgresql" else ""
        print(f"  clm serve on {backend:<10} (verify, store once, apply): {rate:9,.0f} events/s "
              f"wall ({rate / bare_rate:.2f}x bare), {1000 * cpu / args.events:.3f} ms server "
              f"CPU per event ({cpu:.2f} s{extra}); "
              f"{busy(cpu, elapsed, client)}; stored {stored:,}, engagement rows {engaged:,}")


if __name__ == "__main__":
    main()
