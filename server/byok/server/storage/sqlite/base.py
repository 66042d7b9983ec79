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

_T = TypeVar("_T")


def now_us() -> int:
    return time.time_ns() // 1000


class SqliteBase:
    _writer: aiosqlite.Connection
    _reader: aiosqlite.Connection
    _write_lock: asyncio.Lock
    _read_lock: asyncio.Lock

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
    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs `fn` in a single job on the reader's thread, its statements closed inside."""
        async with self._read_lock:
            return await _on_thread(self._reader, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs `fn` as one write transaction in a single job on the writer's thread.

        The job is not interrupted by a cancelled caller: it commits or rolls back on its
        own, and the next job waits behind it on the same thread.
        """

        def transaction(db: sqlite3.Connection) -> _T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        async with self._write_lock:
            return await _on_thread(self._writer, transaction)

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._read(lambda db: fetch_one(db, sql, params))

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._read(lambda db: fetch_all(db, sql, params))


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
