"""Group commit on a real SQLite file: waiting writes share a transaction, yet each one
is all-or-nothing and acknowledged only once committed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import pytest

from byok.server.storage.sqlite.group_commit import GroupCommit


@pytest.fixture
async def conn(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    db = await aiosqlite.connect(tmp_path / "g.db", isolation_level=None)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    yield db
    await db.close()


def rows(path: Path) -> dict[str, int]:
    """What another connection sees: only committed rows."""
    with sqlite3.connect(path) as other:
        return dict(other.execute("SELECT k, v FROM t").fetchall())


def insert(*pairs: tuple[str, int]) -> Callable[[sqlite3.Connection], int]:
    def job(db: sqlite3.Connection) -> int:
        for k, v in pairs:
            db.execute("INSERT INTO t VALUES (?, ?)", (k, v))
        return len(pairs)

    return job


async def test_writes_waiting_together_commit_together(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    commits = GroupCommit(conn)
    results = await asyncio.gather(*(commits.run(insert((f"k{i}", i))) for i in range(200)))
    assert results == [1] * 200
    assert rows(tmp_path / "g.db") == {f"k{i}": i for i in range(200)}
    assert commits.jobs == 200
    assert commits.batches < 200 / 4  # they did share transactions


async def test_a_failing_write_is_rolled_back_alone(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    commits = GroupCommit(conn)
    await commits.run(insert(("taken", 0)))
    # The bad job writes a row before it fails: that row must not survive.
    outcomes = await asyncio.gather(
        commits.run(insert(("a", 1))),
        commits.run(insert(("half", 2), ("taken", 3))),
        commits.run(insert(("b", 4))),
        return_exceptions=True,
    )
    assert outcomes[0] == 1 and outcomes[2] == 1
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert rows(tmp_path / "g.db") == {"taken": 0, "a": 1, "b": 4}


async def test_acknowledged_means_committed(conn: aiosqlite.Connection, tmp_path: Path) -> None:
    commits = GroupCommit(conn)
    for i in range(20):
        await commits.run(insert((f"k{i}", i)))
        assert rows(tmp_path / "g.db")[f"k{i}"] == i


async def test_a_cancelled_caller_still_gets_its_write_committed(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    commits = GroupCommit(conn)
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES ('slow', 1)")
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.2)  # still running when its caller is cancelled

    caller = asyncio.create_task(commits.run(slow))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await commits.run(insert(("after", 2)))  # queued behind it, so it has committed
    assert rows(tmp_path / "g.db") == {"slow": 1, "after": 2}


async def test_a_transaction_that_cannot_begin_fails_its_batch_and_the_next_one_runs(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    commits = GroupCommit(conn)
    await conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        outcomes = await asyncio.gather(
            commits.run(insert(("x", 1))), commits.run(insert(("y", 2))), return_exceptions=True
        )
        assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await commits.run(insert(("z", 3))) == 1
    assert rows(tmp_path / "g.db") == {"z": 3}


async def test_a_closed_connection_is_an_error_not_a_hang(tmp_path: Path) -> None:
    db = await aiosqlite.connect(tmp_path / "c.db", isolation_level=None)
    commits = GroupCommit(db)
    await db.close()
    with pytest.raises(ValueError, match="closed"):
        await asyncio.wait_for(commits.run(insert(("k", 1))), 5)


async def test_a_failing_write_on_its_own_stores_nothing(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    commits = GroupCommit(conn)
    await commits.run(insert(("taken", 0)))
    with pytest.raises(sqlite3.IntegrityError):
        await commits.run(insert(("half", 2), ("taken", 3)))
    assert rows(tmp_path / "g.db") == {"taken": 0}
    assert await commits.run(insert(("next", 4))) == 1  # the connection is usable
