"""WAL checkpoints off the commit path, on a real SQLite file: committed writes reach the
database file itself within about a second, although no commit checkpoints them."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

from byok.server.conversations.model import Conversation
from byok.server.storage.base import DEFAULT_USER_ID
from byok.server.storage.sqlite import SqliteStore
from byok.server.storage.sqlite.checkpoint import INTERVAL_SECONDS


def in_database_file(path: Path, conversation_id: str) -> bool:
    """Whether the row is in the main database file, not only in the WAL: an immutable
    connection reads the file alone."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:
        row = db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,))
        return row.fetchone() is not None


async def test_writes_reach_the_database_file_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "byok.db"
    store = await SqliteStore.open(path)
    try:
        for i in range(3):
            conv, _ = await store.create_conversation(
                DEFAULT_USER_ID, Conversation(id=f"c{i}", create_time_us=1, update_time_us=1)
            )
            # A few pages of WAL, far below any automatic checkpoint: only the
            # background one can copy the row into the file, and it does so while the
            # store is open and idle.
            deadline = time.monotonic() + INTERVAL_SECONDS * 5
            while not in_database_file(path, conv.id):
                assert time.monotonic() < deadline, f"{conv.id} never reached the file"
                await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_close_stops_the_checkpoints(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "byok.db")
    await store.close()
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "sqlite-checkpoint"]
    assert tasks == []
