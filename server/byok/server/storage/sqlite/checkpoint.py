"""WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1,000 pages.
A chat turn writes ~36 pages of WAL (143 KiB: the thread's row and its indexes, two
messages and theirs, the full-text index), so every ~28th turn's commit also copied the
changed pages back into the database file and synced it: a tail of a few ms on 1 turn
in 28, which at one turn at a time landed on the p99 of time to first token.

Here a connection of its own runs a PASSIVE checkpoint (it neither waits for nor blocks
the writer or a reader) about once a second, on its own thread, when writes pause for
`QUIET_SECONDS`. At interactive rates that keeps the WAL far below 1,000 pages, so no
commit pays for a checkpoint. Under a sustained write load writes never pause, and
SQLite's own checkpoint runs in the commit that crosses 1,000 pages, as before: there a
background one would only copy the same pages twice (a PASSIVE checkpoint never catches
up with a busy writer, so it cannot let SQLite start the WAL over either).

Measured (docs/performance.md, same-run comparisons against the code without it): one
turn at a time, time to first token p99 -1.7 to -2.9 ms, p50 unchanged. At 32 turns in
flight it stands aside, and turns/s stayed within the comparison's own spread. Run
regardless of load, it gave -4 to -9 % turns/s at c=32 in three runs of four (identical
code on both sides spreads -5 to -1 %): too close to call, so it stands aside. An earlier
attempt that also took the writer's own checkpoints off the commit cost 4-10 % more CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 1.0
QUIET_SECONDS = 0.05  # no write for this long: the store is not under a sustained load


class Checkpointer:
    """Checkpoints the database's WAL every `interval` seconds, when writes pause, until
    closed."""

    def __init__(
        self, conn: aiosqlite.Connection, writes: Callable[[], int], interval: float
    ) -> None:
        self._conn = conn
        self._writes = writes
        self._interval = interval
        self._task = asyncio.create_task(self._run(), name="sqlite-checkpoint")

    @classmethod
    async def start(
        cls,
        path: Path,
        busy_timeout_ms: int,
        writes: Callable[[], int],
        interval: float = INTERVAL_SECONDS,
    ) -> Checkpointer:
        """`writes()` counts the writes committed so far (it only has to move with them)."""
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        return cls(conn, writes, interval)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            before = self._writes()
            await asyncio.sleep(QUIET_SECONDS)
            if self._writes() != before:
                continue  # a sustained load: the writer's own checkpoint runs
            try:
                await self._conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:  # the writer's own checkpoint still runs at 1,000 pages
                log.warning("SQLite WAL checkpoint failed: %s", exc)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()
