"""What every SQLite store mixin relies on: the connections, the write lock, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite

from byok.server.storage.sqlite.group_commit import GroupCommit

_T = TypeVar("_T")


def now_us() -> int:
    return time.time_ns() // 1000


class SqliteBase:
    _writer: aiosqlite.Connection
    _reader: aiosqlite.Connection
    _write_lock: asyncio.Lock
    _read_lock: asyncio.Lock
    _commits: GroupCommit

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any error, cancellation included."""
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await asyncio.shield(self._writer.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._writer.execute("COMMIT"))

    # Reads take turns on the reader connection: in WAL mode a statement that is still
    # open pins the connection's snapshot, so overlapping statements could keep seeing
    # the database as it was before a write that was already acknowledged.
    #
    # The locks are for the callers that make several hops on one connection (`_tx`,
    # and reads that hold `_read_lock` across statements). A single job (`_read`,
    # `_write`) needs no lock of its own: the connection's thread runs jobs one at a
    # time in the order they were queued, so one that is queued while no multi-hop
    # caller holds the lock runs whole, before anything queued after it. Taking the
    # lock anyway would make every job wait for the event loop twice (to be granted
    # the lock, and for its holder's result to come back before the next job may
    # start): under load, jobs queued behind each other at the loop's pace (14 ms p50
    # to store a chat turn's user message at 32 turns in flight, against ~0.3 ms).
    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs `fn` in a single job on the reader's thread, its statements closed inside."""
        return await _behind(self._read_lock, lambda: _on_thread(self._reader, fn))

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs `fn` as one all-or-nothing write on the writer's thread, committed (with
        whatever other writes were waiting: group_commit.py) before it returns.

        The job is not interrupted by a cancelled caller: it commits or rolls back on its
        own, and the next job waits behind it on the same thread.
        """

        return await _behind(self._write_lock, lambda: self._commits.run(fn))

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._read(lambda db: fetch_one(db, sql, params))

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._read(lambda db: fetch_all(db, sql, params))


async def _behind(lock: asyncio.Lock, job: Callable[[], Awaitable[_T]]) -> _T:
    """Runs a single job at once, or after the multi-hop caller that holds `lock`."""
    if lock.locked():
        async with lock:
            return await job()
    return await job()


async def _on_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """Runs `fn(connection)` as one job on the connection's own thread.

    Through aiosqlite's statement API every execute, fetch, cursor close, BEGIN and
    COMMIT is a thread hop (queue, wake-up, loop callback; ~8 for one append, ~1 ms of a
    chat turn), and each hop is a chance to wait for the scheduler on a busy machine.
    aiosqlite has no public "run this on the connection's thread"; `_execute` is what its
    own methods use (aiosqlite is pinned).
    """
    run = cast(Callable[[Callable[[], _T]], Awaitable[_T]], conn._execute)
    return await run(functools.partial(fn, conn._conn))


def fetch_one(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """One row; the statement is closed before returning (an open one pins a snapshot)."""
    cur = db.execute(sql, params)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def fetch_all(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    cur = db.execute(sql, params)
    try:
        return cur.fetchall()
    finally:
        cur.close()
