"""What every part of the PostgreSQL store relies on: the pool, transactions, helpers.

The counterpart of `sqlite/base.py`. Each area is a mixin on `PostgresBase`:
conversations (`store.py`), accounts (`accounts.py`), workspaces (`workspace.py`).

Adding a table: a migration under `migrations/` (same number and name as on SQLite),
then its methods on a mixin: `_tx` for writes, `_pool` for reads, `_Args` for `$n`.
Several replicas write at once, so a write that reads before it writes locks what it
read (`SELECT ... FOR UPDATE`, or `_user_tx` for a user's workspace).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:  # the stubs' generic types are not subscriptable at run time
    Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]

# pg_advisory_xact_lock(class, key) class for "one user's workspace" ("ws").
# The two-key form never meets the migration lock, which uses the one-key form.
WORKSPACE_LOCK_CLASS = int.from_bytes(b"ws", "big")


def now_us() -> int:
    return time.time_ns() // 1000


class _Args:
    """Bind values of one statement: `args(value)` stores it and returns its `$n`."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _rowcount(status: str) -> int:
    """The row count of a command status ("UPDATE 1", "DELETE 0", "INSERT 0 1")."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def asyncpg_dsn(url: str) -> str:
    """asyncpg takes postgres:// and postgresql:// only; drop a +driver suffix."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower().partition("+")[0] not in ("postgres", "postgresql"):
        raise ValueError("expected a postgresql://user:password@host:port/database URL")
    return "postgresql://" + rest


async def create_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool[asyncpg.Record]:
    return await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # asyncpg prepares every statement; a generic plan (chosen after five runs)
        # cannot see which search words are rare and walks the whole table for them.
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )


class PostgresBase:
    """The pool every mixin shares, and its two kinds of write transaction."""

    _pool: asyncpg.Pool[asyncpg.Record]

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Connection]:
        """One write transaction (READ COMMITTED); rolled back on any error."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def _user_tx(self, user_id: str) -> AsyncIterator[Connection]:
        """A write transaction that first takes the user's workspace lock.

        Profiles, spaces and their links change together (deleting a profile touches the
        spaces that link it; a default must stay linked), so a user's workspace writes
        run one at a time across every replica, as on SQLite's single writer. No row
        locks are taken in varying orders, so these writers never deadlock; other
        users' writes never wait.
        """
        async with self._tx() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", WORKSPACE_LOCK_CLASS, user_id
            )
            yield conn
