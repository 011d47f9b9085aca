"""The outbox writes of every wave of a send (mark the wave ``sending``; record a lane's last
wave and mark its next; record the last one), run from the event loop without a trip to a
worker thread wherever the database allows it.

Why: without provider batching a wave is a few messages (the provider's concurrency), so these
writes run for every few messages sent. Through ``asyncio.to_thread`` each one paid the hop (a
work item, a worker thread woken, the event loop woken again by the result), and the worker
then contended with the event loop for the interpreter lock: in a dispatch of SMS a wave's
write cost its thread about twice the CPU that the same write costs run alone. Here:

- PostgreSQL (psycopg): the usual wave is one statement in autocommit (as in
  ``outbox.record_and_mark``), sent on an asynchronous connection of psycopg, one per lane
  writing at once: the event loop waits for its answer as it waits for a provider's.
- SQLite (a database file): the database runs in this process and a wave's transaction is a
  few short statements, so it runs on the event loop's own thread, on a connection that does
  not wait for the write lock: when another connection holds it, the wave goes to a thread
  that waits its turn, as before. That connection never checkpoints the write-ahead log (a
  checkpoint ends in an fsync, which would stall the loop); the dispatcher's claims, which
  still run in threads, and other processes' writes do.

Anything else (suppressions to insert, the batch's lease renewed with the wave, any error of
the loop's path) takes ``outbox``'s threaded path, with its retries. The statements and their
parameters are ``outbox``'s own: every write is conditional on the rows' state and lease, so a
wave whose write failed on the loop's path (a lost connection, after which the statement may
or may not have committed) is safely written again by the threaded path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from clm_core.delivery import outbox
from clm_core.delivery.outbox import Resolution
from clm_core.delivery.outbox_sql import mark_sql, record_and_mark_pg, record_sql

T = TypeVar("T")


class WaveWrites:
    """Every write through ``outbox`` in a worker thread: any database, and the fallback of
    the loop-side writers below."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.threaded = 0  # writes that went to a thread (for tests and profiles)

    async def mark(self, owner: str, ids: Sequence[int], batch_ids: Sequence[int],
                   now: datetime, lease: timedelta, digests: dict[int, str] | None) -> set[int]:
        """``outbox.mark_sending``."""
        self.threaded += 1
        return await asyncio.to_thread(outbox.mark_sending, self.engine, owner, ids, batch_ids,
                                       now, lease, digests)

    async def record_and_mark(self, owner: str, outcomes: Sequence[Resolution],
                              ids: Sequence[int], batch_ids: Sequence[int], now: datetime,
                              lease: timedelta, digests: dict[int, str] | None
                              ) -> tuple[int, set[int]]:
        """``outbox.record_and_mark``."""
        self.threaded += 1
        return await asyncio.to_thread(outbox.record_and_mark, self.engine, owner, outcomes, ids,
                                       batch_ids, now, lease, digests)

    async def record(self, owner: str, outcomes: Sequence[Resolution], now: datetime) -> int:
        """``outbox.record``."""
        self.threaded += 1
        return await asyncio.to_thread(outbox.record, self.engine, owner, outcomes, now)

    async def start(self, lanes: int) -> None:
        """Open what the writes need before the first wave (``lanes`` may write at once), so
        that the first waves do not wait for connections; a failure is left to the writes."""

    async def aclose(self) -> None:
        pass


def open_wave_writes(engine: Engine) -> WaveWrites:
    """The writer for ``engine`` (the dispatcher's writer engine)."""
    url = engine.url
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresWaveWrites(engine)
    if (engine.dialect.name == "sqlite" and url.database and url.database != ":memory:"
            and not url.database.startswith("file:") and not url.query):
        return SqliteWaveWrites(engine, url.database)
    return WaveWrites(engine)


class SqliteWaveWrites(WaveWrites):
    def __init__(self, engine: Engine, path: str):
        super().__init__(engine)
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # As every connection of the project (``clm_core.db.engine``), except: never wait
            # for the write lock, and never checkpoint (both would block the event loop).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn = conn
        return self._conn

    def _inline(self, write: Callable[[sqlite3.Cursor], T]) -> T | None:
        """``write`` in a transaction holding the write lock, if the lock is free now; None
        when it is not or anything failed (rolled back: nothing was written)."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return None
        try:
            cursor = conn.cursor()
            try:
                result = write(cursor)
            finally:
                cursor.close()
            conn.execute("COMMIT")
        except sqlite3.Error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # the transaction is gone already; a fresh connection next
                conn.close()
                self._conn = None
            return None
        return result

    @staticmethod
    def _mark_rows(cursor: sqlite3.Cursor, rows: list[tuple[Any, ...]]) -> set[int]:
        held = set()
        for row in rows:
            cursor.execute(mark_sql("sqlite"), row)
            if cursor.rowcount:
                held.add(row[3])  # the id
        return held

    @staticmethod
    def _record_rows(cursor: sqlite3.Cursor, rows: list[tuple[Any, ...]]) -> int:
        cursor.executemany(record_sql("sqlite"), rows)
        return int(cursor.rowcount or 0)

    async def mark(self, owner: str, ids: Sequence[int], batch_ids: Sequence[int],
                   now: datetime, lease: timedelta, digests: dict[int, str] | None) -> set[int]:
        if ids and outbox.plain_wave(ids, batch_ids):
            rows = outbox.mark_rows(owner, ids, now, lease, digests or {})
            held = self._inline(lambda cursor: self._mark_rows(cursor, rows))
            if held is not None:
                return held
        return await super().mark(owner, ids, batch_ids, now, lease, digests)

    async def record_and_mark(self, owner: str, outcomes: Sequence[Resolution],
                              ids: Sequence[int], batch_ids: Sequence[int], now: datetime,
                              lease: timedelta, digests: dict[int, str] | None
                              ) -> tuple[int, set[int]]:
        if ids and outbox.plain_wave(ids, batch_ids, outcomes):
            recorded = outbox.record_rows(owner, outcomes, now)
            marks = outbox.mark_rows(owner, ids, now, lease, digests or {})
            got = self._inline(lambda cursor: (self._record_rows(cursor, recorded),
                                               self._mark_rows(cursor, marks)))
            if got is not None:
                return got
        return await super().record_and_mark(owner, outcomes, ids, batch_ids, now, lease,
                                             digests)

    async def record(self, owner: str, outcomes: Sequence[Resolution], now: datetime) -> int:
        if outcomes and outbox.plain_wave(outcomes=outcomes):
            rows = outbox.record_rows(owner, outcomes, now)
            updated = self._inline(lambda cursor: self._record_rows(cursor, rows))
            if updated is not None:
                return updated
        return await super().record(owner, outcomes, now)

    async def start(self, lanes: int) -> None:
        try:
            self._connection()
        except sqlite3.Error:
            pass

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresWaveWrites(WaveWrites):
    def __init__(self, engine: Engine):
        super().__init__(engine)
        # The engine's own connection arguments (host, credentials, its type adapters).
        self._args, self._kwargs = engine.dialect.create_connect_args(engine.url)
        self._free: list[Any] = []  # idle psycopg.AsyncConnection
        self._open: list[Any] = []

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(*self._args, autocommit=True,
                                                     **self._kwargs)
        self._open.append(conn)
        return conn

    async def start(self, lanes: int) -> None:
        import psycopg

        for got in await asyncio.gather(*(self._connect() for _ in range(lanes)),
                                        return_exceptions=True):
            if isinstance(got, psycopg.Error):
                continue
            if isinstance(got, BaseException):
                raise got
            self._free.append(got)

    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Any], int] | None:
        """Run one statement in autocommit on a free connection: its rows and row count; None
        when it failed (the connection is then dropped)."""
        import psycopg

        conn = self._free.pop() if self._free else None
        done = False
        try:
            if conn is None:
                conn = await self._connect()
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params)
                rows = await cursor.fetchall() if cursor.description else []
                count = cursor.rowcount
            done = True
            return rows, count
        except psycopg.Error:
            return None
        finally:
            if conn is not None:
                if done:
                    self._free.append(conn)
                else:
                    self._open.remove(conn)
                    await conn.close()

    async def mark(self, owner: str, ids: Sequence[int], batch_ids: Sequence[int],
                   now: datetime, lease: timedelta, digests: dict[int, str] | None) -> set[int]:
        if ids and outbox.plain_wave(ids, batch_ids):
            got = await self._execute(mark_sql("postgresql"),
                                      outbox.mark_params(owner, ids, now, lease, digests or {}))
            if got is not None:
                return {r[0] for r in got[0]}
        return await super().mark(owner, ids, batch_ids, now, lease, digests)

    async def record_and_mark(self, owner: str, outcomes: Sequence[Resolution],
                              ids: Sequence[int], batch_ids: Sequence[int], now: datetime,
                              lease: timedelta, digests: dict[int, str] | None
                              ) -> tuple[int, set[int]]:
        if ids and outcomes and outbox.plain_wave(ids, batch_ids, outcomes):
            params = outbox.record_and_mark_params(owner, outcomes, ids, now, lease, digests or {})
            got = await self._execute(record_and_mark_pg(), params)
            if got is not None:
                [(updated, marked)] = got[0]
                return int(updated), set(marked or ())
        return await super().record_and_mark(owner, outcomes, ids, batch_ids, now, lease,
                                             digests)

    async def record(self, owner: str, outcomes: Sequence[Resolution], now: datetime) -> int:
        if outcomes and outbox.plain_wave(outcomes=outcomes):
            got = await self._execute(record_sql("postgresql"),
                                      outbox.record_params(owner, outcomes, now))
            if got is not None:
                return int(got[1] or 0)
        return await super().record(owner, outcomes, now)

    async def aclose(self) -> None:
        while self._open:
            await self._open.pop().close()
        self._free.clear()
