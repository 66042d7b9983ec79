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
        """Runs `fn` in a single job on the reader's thread, its statements closed inside.

        Through aiosqlite's statement API a read pays a thread hop (queue, wake-up, loop
        callback) for the execute, the fetch and the cursor close; one job pays one. Each
        hop is also a chance to wait for the scheduler on a busy machine. aiosqlite has
        no public "run this on the connection's thread"; `_execute` is what its own
        methods use (aiosqlite is pinned).
        """
        reader = self._reader
        run = cast(Callable[[Callable[[], _T]], Awaitable[_T]], reader._execute)
        async with self._read_lock:
            return await run(functools.partial(fn, reader._conn))

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._read(lambda db: fetch_one(db, sql, params))

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._read(lambda db: fetch_all(db, sql, params))


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
