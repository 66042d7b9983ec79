"""`Store` on SQLite (aiosqlite): WAL, foreign keys on, a busy timeout.

One connection writes and one reads. WAL lets the reader see every committed
write without waiting for the writer, and a single writer connection means write
transactions never fight each other for the database lock inside one process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite

from byok.server.storage import migrations
from byok.server.storage.base import User


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode survives a killed process; only an OS crash or power
    # loss can drop the last commits (docs/reliability.md).
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


class SqliteStore:
    """Open with `SqliteStore.open(path)`, which also brings the schema to head."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout_ms: int = 5000, migrate: bool = True
    ) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            await asyncio.to_thread(migrations.upgrade, migrations.sqlite_url(path))
        writer = await _connect(path, busy_timeout_ms)
        reader = await _connect(path, busy_timeout_ms)
        return cls(path, writer, reader)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()

    async def ping(self) -> None:
        async with self._reader.execute("SELECT 1") as cur:
            await cur.fetchone()

    async def get_user(self, user_id: str) -> User | None:
        async with self._reader.execute(
            "SELECT id, name, display_name, disabled, create_time FROM users WHERE id = ?",
            (user_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return User(row[0], row[1], row[2], bool(row[3]), row[4])
