"""The per-wave outbox writes run from the event loop (``clm_core.delivery.wave_writes``): the
same results as ``outbox``'s threaded calls, and the threaded path whenever the loop's cannot
be used (a busy SQLite write lock, a lost PostgreSQL connection, suppressions, renewals)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.delivery import outbox
from clm_core.delivery.outbox import Resolution
from clm_core.delivery.testing import seed_outbox
from clm_core.delivery.wave_writes import (
    PostgresWaveWrites,
    SqliteWaveWrites,
    WaveWrites,
    open_wave_writes,
)
from clm_core.runs import utcnow
from tests.delivery_fixtures import rows

LEASE = timedelta(seconds=60)


def _claimed(engine: sa.Engine, n: int, prefix: str) -> tuple[sa.Engine, list[int]]:
    seed_outbox(engine, n, channel="sms", prefix=prefix)
    writer = outbox.writer_engine(engine, pinged=False)
    return writer, [r["id"] for r in outbox.claim(writer, "me", n, utcnow(), LEASE)]


def test_waves_written_from_the_loop(db_url: str, engine: sa.Engine) -> None:
    """Mark, record-and-mark and record give what ``outbox``'s threaded calls give, without a
    thread; rows another owner holds are neither marked nor recorded."""
    writer, ids = _claimed(engine, 12, "loop")
    with engine.begin() as conn:  # the last row's lease went to another dispatcher
        conn.execute(sa.update(t.messages).where(t.messages.c.id == ids[-1])
                     .values(lease_owner="other"))
    waves = open_wave_writes(writer)
    assert isinstance(waves, (SqliteWaveWrites, PostgresWaveWrites))
    now = utcnow()

    async def run() -> tuple[set[int], tuple[int, set[int]], int]:
        try:
            first = await waves.mark("me", ids[:4], ids[:4], now, LEASE,
                                     {i: f"d{i}" for i in ids[:4]})
            done = [Resolution(i, "sent", "sent", provider="twilio", provider_message_id=f"SM{i}",
                               sent_at=now) for i in ids[:4]]
            second = await waves.record_and_mark("me", done, ids[4:8], ids[4:8], now, LEASE, None)
            failed = [Resolution(i, "pending", "retry_scheduled", provider="twilio",
                                 error_code="20429", send_after=now + timedelta(minutes=5))
                      for i in ids[4:8]] + [Resolution(ids[-1], "sent", "sent")]
            return first, second, await waves.record("me", failed, now)
        finally:
            await waves.aclose()

    try:
        first, second, recorded = asyncio.run(run())
    finally:
        writer.dispose()
    assert first == set(ids[:4]) and second == (4, set(ids[4:8])) and recorded == 4
    assert waves.threaded == 0
    by_id = {r["id"]: r for r in rows(engine)}
    assert [by_id[i]["status"] for i in ids[:4]] == ["sent"] * 4
    assert by_id[ids[0]]["provider_message_id"] == f"SM{ids[0]}"
    assert by_id[ids[0]]["content_digest"] == f"d{ids[0]}"
    assert [(by_id[i]["status"], by_id[i]["reason"]) for i in ids[4:8]] == [
        ("pending", "retry_scheduled")] * 4
    assert all(by_id[i]["lease_owner"] is None for i in ids[:8])
    assert (by_id[ids[-1]]["status"], by_id[ids[-1]]["lease_owner"]) == ("claimed", "other")


def test_suppressions_and_lease_renewal_take_the_threaded_path(db_url: str,
                                                                engine: sa.Engine) -> None:
    writer, ids = _claimed(engine, 8, "thr")
    waves = open_wave_writes(writer)
    now = utcnow()
    customer = {r["id"]: r["customer_id"] for r in rows(engine)}[ids[0]]
    rejected = [Resolution(ids[0], "failed", "recipient_opted_out", provider="twilio",
                           suppress=("sms", "+13035550000", customer, "opted_out"))]
    later = now + timedelta(minutes=1)

    async def run() -> tuple[set[int], tuple[int, set[int]]]:
        try:
            marked = await waves.mark("me", ids[:1], ids, now, LEASE, None)  # renews the batch
            return marked, await waves.record_and_mark("me", rejected, ids[1:2], ids[1:2], later,
                                                       LEASE, None)
        finally:
            await waves.aclose()

    try:
        assert asyncio.run(run()) == ({ids[0]}, (1, {ids[1]}))
    finally:
        writer.dispose()
    assert waves.threaded == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.suppressions.c.address)).scalars().all() == [
            "+13035550000"]
    by_id = {r["id"]: r for r in rows(engine)}
    assert by_id[ids[0]]["status"] == "failed"
    assert all(by_id[i]["lease_expires_at"] is not None for i in ids[1:])


def test_sqlite_wave_waits_for_a_busy_write_lock_in_a_thread(tmp_path: Path) -> None:
    """Another connection holds the write lock: the wave goes to a thread that waits for it,
    and the event loop keeps running meanwhile."""
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    from clm_core.db.migrate import open_database

    engine = open_database(url)
    writer, ids = _claimed(engine, 4, "busy")
    waves = open_wave_writes(writer)
    assert isinstance(waves, SqliteWaveWrites)
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    ticks = 0

    async def run() -> set[int]:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await waves.mark("me", ids, ids, utcnow(), LEASE, None)
        finally:
            ticker.cancel()
            await waves.aclose()

    started = time.perf_counter()
    try:
        assert asyncio.run(run()) == set(ids)
    finally:
        writer.dispose()
        holder.close()
    assert time.perf_counter() - started >= 0.25 and ticks >= 10
    assert waves.threaded == 1
    assert Counter(r["reason"] for r in rows(engine)) == {"sending": 4}
    engine.dispose()


def test_postgres_wave_after_a_lost_connection(db_url: str, engine: sa.Engine) -> None:
    """The server dropped the loop's connection: the wave is written through the threaded path
    (which retries), and the next one on a new connection of the loop."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server-side disconnect needs PostgreSQL")
    writer, ids = _claimed(engine, 12, "pglost")
    waves = open_wave_writes(writer)
    assert isinstance(waves, PostgresWaveWrites)
    now = utcnow()

    async def run() -> tuple[set[int], set[int], set[int]]:
        try:
            first = await waves.mark("me", ids[:4], ids[:4], now, LEASE, None)
            [conn] = waves._free
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT pg_backend_pid()")
                (pid,) = await cursor.fetchone()
            with engine.connect() as other:
                assert other.scalar(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            done = [Resolution(i, "sent", "sent", provider="twilio") for i in ids[:4]]
            _, second = await waves.record_and_mark("me", done, ids[4:8], ids[4:8], now, LEASE,
                                                    None)
            return first, second, await waves.mark("me", ids[8:], ids[8:], now, LEASE, None)
        finally:
            await waves.aclose()

    try:
        assert asyncio.run(run()) == (set(ids[:4]), set(ids[4:8]), set(ids[8:]))
    finally:
        writer.dispose()
    assert waves.threaded == 1
    assert Counter((r["status"], r["reason"]) for r in rows(engine)) == {
        ("sent", "sent"): 4, ("claimed", "sending"): 8}


def test_other_databases_write_in_threads(tmp_path: Path) -> None:
    engine = sa.create_engine("sqlite://")
    assert type(open_wave_writes(engine)) is WaveWrites
