"""What every SQLite store mixin relies on: the connections, the write lock, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite


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
    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())
