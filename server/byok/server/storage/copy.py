"""`byok-server db copy`: every row of a SQLite database into PostgreSQL.

    counts = await copy_database(Path("byok.db"), "postgresql://byok@db/byok")

Tables go in foreign-key order (users, api_keys, provider_keys, conversations, messages,
model_profiles, spaces, space_profiles), each in batches read in key order: `seq` for
the tables that have one, the primary key for the others. Every row keeps its values,
`seq` included, so messages keep their order, page tokens stay meaningful, and
`conversation_seq`/`space_seq`/`profile_seq` need no mapping. Provider keys are copied
as they are (ciphertext and nonce): the target needs the same BYOK_MASTER_KEY.

Each batch is one transaction: COPY into a temporary table, then `INSERT ... SELECT ...
ON CONFLICT DO NOTHING`, so a row already in the target is skipped, never duplicated.
The `messages` insert trigger fills each message's search vector. Interrupted, the copy
resumes where it stopped: a table with `seq` continues after the target's highest
`seq` (batches commit in `seq` order, so everything below it is there); the small
tables without one are read again and their present rows skipped. Before writing, the
target's newest rows are checked against the source: a target that holds rows of
another database is refused. At the end each `seq` sequence is moved past the copied
rows (and past SQLite's own high-water mark), the tables are analyzed, and the row
counts of both sides are returned for the caller to compare.

Stop the server that writes the SQLite file first: rows written during the copy may be
missed (the counts then differ; run the copy again).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg

from byok.server.storage import migrations
from byok.server.storage.postgres.base import asyncpg_dsn

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]  # the read order and resume cursor: ("seq",) or the primary key

    @property
    def serial(self) -> bool:
        return self.key == ("seq",)


# Parents before children, so every foreign key finds its row.
TABLES = (
    Table("users", ("id",)),
    Table("api_keys", ("id",)),
    Table("provider_keys", ("user_id", "provider")),
    Table("conversations", ("seq",)),
    Table("messages", ("seq",)),
    Table("model_profiles", ("seq",)),
    Table("spaces", ("seq",)),
    Table("space_profiles", ("space_seq", "profile_seq")),
)

# The copy's own session. Inserting into the search (GIN) index is most of the cost: a
# larger pending list merges less often (~15% faster here). A commit lost to a crash with
# synchronous_commit off is a batch not there, which the next run copies again.
_BULK = {
    "gin_pending_list_limit": "65536",  # kB
    "work_mem": "65536",  # kB, for merging that list
    "synchronous_commit": "off",
}
_GIN_INDEXES = ("messages_search_index",)


@dataclass(frozen=True)
class Progress:
    """Where a copy is: `done` of `total` source rows of `table` are in the target."""

    table: str
    done: int
    total: int
    copied: int  # rows this run inserted into this table so far
    seconds: float  # since this table started

    @property
    def rate(self) -> float:
        """Rows read per second in this run (inserted or found present)."""
        return self.copied / self.seconds if self.seconds > 0 else 0.0


class CopyError(Exception):
    """The copy cannot start or go on; the message says why (never the URL)."""


@dataclass(frozen=True)
class _Column:
    name: str
    pg_type: str  # information_schema data_type: boolean, jsonb, bytea, bigint, text, ...


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Source:
    """The SQLite file, read-only, read from a worker thread."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CopyError(f"{path} is not a file")
        self.path = path
        self.conn = sqlite3.connect(
            f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False
        )

    def close(self) -> None:
        self.conn.close()

    def columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({_quote(table)})")]

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0])

    def count_upto(self, table: str, seq: int) -> int:
        row = self.conn.execute(f"SELECT COUNT(*) FROM {_quote(table)} WHERE seq <= ?", (seq,))
        return int(row.fetchone()[0])

    def id_at(self, table: str, seq: int) -> str | None:
        row = self.conn.execute(f"SELECT id FROM {_quote(table)} WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def high_water(self, table: str) -> int:
        """The highest seq SQLite ever gave out in the table (AUTOINCREMENT's record)."""
        with contextlib.suppress(sqlite3.OperationalError):
            row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
            found = row.fetchone()
            if found is not None:
                return int(found[0])
        return 0

    def batch(
        self, table: Table, columns: Sequence[str], after: Sequence[Any] | None, size: int
    ) -> list[tuple[Any, ...]]:
        keys = ", ".join(_quote(k) for k in table.key)
        where, params = "", list(after or ())
        if after is not None:
            marks = ", ".join("?" * len(table.key))
            where = f" WHERE ({keys}) > ({marks})" if len(table.key) > 1 else f" WHERE {keys} > ?"
        sql = (
            f"SELECT {', '.join(_quote(c) for c in columns)} FROM {_quote(table.name)}"
            f"{where} ORDER BY {keys} LIMIT ?"
        )
        return self.conn.execute(sql, (*params, size)).fetchall()


def _converter(columns: Sequence[_Column]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """SQLite values → what the staging table's binary COPY takes (INTEGER flags become
    booleans; JSON stays text and is cast to jsonb by the INSERT)."""
    flags = [i for i, c in enumerate(columns) if c.pg_type == "boolean"]
    blobs = [i for i, c in enumerate(columns) if c.pg_type == "bytea"]
    if not flags and not blobs:
        return lambda row: row

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in flags:
            values[i] = None if values[i] is None else bool(values[i])
        for i in blobs:
            values[i] = None if values[i] is None else bytes(values[i])
        return tuple(values)

    return convert


async def _target_columns(conn: Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1",
        table,
    )
    return {str(r[0]): str(r[1]) for r in rows}


async def _columns(source: _Source, conn: Connection, table: str) -> list[_Column]:
    """The columns both sides have (all of the source's; the target may add derived ones
    such as messages.search_tsv, which its triggers fill)."""
    on_source = await asyncio.to_thread(source.columns, table)
    on_target = await _target_columns(conn, table)
    if not on_source:
        raise CopyError(
            f"the SQLite database has no table {table}: bring it to the current schema"
            " first (byok-server db upgrade --data-dir <its folder>)"
        )
    missing = [c for c in on_source if c not in on_target]
    if missing:
        raise CopyError(
            f"the PostgreSQL table {table} has no column {', '.join(missing)}:"
            " the two schemas differ; upgrade both to the same version"
        )
    return [_Column(c, on_target[c]) for c in on_source]


async def _check_target(source: _Source, conn: Connection, table: Table) -> int:
    """The target's highest seq (0 if empty), after making sure its newest row is the
    source's row with that seq: anything else is another database's data."""
    top = await conn.fetchrow(f"SELECT seq, id FROM {_quote(table.name)} ORDER BY seq DESC LIMIT 1")
    if top is None:
        return 0
    seq, row_id = int(top[0]), str(top[1])
    if await asyncio.to_thread(source.id_at, table.name, seq) != row_id:
        raise CopyError(
            f"the target's {table.name} holds rows that are not from this SQLite database"
            f" ({table.name} seq {seq} is {row_id!r} there); copy into an empty database"
        )
    return seq


async def _advance_sequence(conn: Connection, table: str, high_water: int) -> None:
    """Moves the table's seq sequence past every copied row and SQLite's high-water mark,
    so the next row a server inserts takes a new seq."""
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'seq')", table)
    top = await conn.fetchval(f"SELECT COALESCE(MAX(seq), 0) FROM {_quote(table)}")
    last = await conn.fetchval("SELECT pg_sequence_last_value($1::regclass)", sequence)
    await conn.execute(
        "SELECT setval($1::regclass, $2, false)",
        sequence,
        max(int(top), int(last or 0), high_water) + 1,
    )


async def _copy_table(
    source: _Source,
    conn: Connection,
    table: Table,
    columns: Sequence[_Column],
    *,
    resume: int,
    batch: int,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Copies the table's rows after `resume` (a seq; 0 = from the start)."""
    names = [c.name for c in columns]
    stage = f"byok_copy_{table.name}"
    # No constraints on the stage (CREATE TABLE AS copies none); JSON travels as text.
    staged = ", ".join(
        f"{_quote(c.name)}::text AS {_quote(c.name)}"
        if c.pg_type in ("json", "jsonb")
        else _quote(c.name)
        for c in columns
    )
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_quote(stage)} ON COMMIT DELETE ROWS AS"
        f" SELECT {staged} FROM {_quote(table.name)} WITH NO DATA"
    )
    select = ", ".join(
        f"{_quote(c.name)}::{c.pg_type}" if c.pg_type in ("json", "jsonb") else _quote(c.name)
        for c in columns
    )
    insert = (
        f"INSERT INTO {_quote(table.name)} ({', '.join(_quote(n) for n in names)})"
        f" SELECT {select} FROM {_quote(stage)}"
        f" ORDER BY {', '.join(_quote(k) for k in table.key)} ON CONFLICT DO NOTHING"
    )
    convert = _converter(columns)
    key_at = [names.index(k) for k in table.key]

    total = await asyncio.to_thread(source.count, table.name)
    after: tuple[Any, ...] | None = None
    done = copied = 0
    if resume:
        after = (resume,)
        done = await asyncio.to_thread(source.count_upto, table.name, resume)
    started = time.monotonic()

    def report() -> None:
        if progress is not None:
            progress(Progress(table.name, done, total, copied, time.monotonic() - started))

    report()
    pending = asyncio.create_task(asyncio.to_thread(source.batch, table, names, after, batch))
    try:
        while rows := await pending:
            after = tuple(rows[-1][i] for i in key_at)
            # Read the next batch while this one is written.
            pending = asyncio.create_task(
                asyncio.to_thread(source.batch, table, names, after, batch)
            )
            async with conn.transaction():
                await conn.copy_records_to_table(
                    stage, records=[convert(r) for r in rows], columns=names
                )
                await conn.execute(insert)
            done += len(rows)
            copied += len(rows)
            report()
    finally:
        # A read in its thread cannot be cancelled: let it end before the file closes.
        with contextlib.suppress(Exception):
            await pending
    if table.serial:
        high_water = await asyncio.to_thread(source.high_water, table.name)
        await _advance_sequence(conn, table.name, high_water)


async def _tidy(conn: Connection) -> None:
    """Merges the search index's pending entries (searches read them linearly until a
    vacuum would) and refreshes the planner's statistics for the new rows."""
    for index in _GIN_INDEXES:
        if await conn.fetchval("SELECT to_regclass($1)", index) is not None:
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SELECT gin_clean_pending_list($1::regclass)", index)
    for table in TABLES:
        await conn.execute(f"ANALYZE {_quote(table.name)}")


async def count_rows(
    sqlite_path: Path, postgres_url: str, tables: Sequence[str] = ()
) -> dict[str, tuple[int, int]]:
    """{table: (rows in SQLite, rows in PostgreSQL)} for every copied table."""
    names = list(tables) or [t.name for t in TABLES]
    source = _Source(Path(sqlite_path))
    try:
        conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            counts: dict[str, tuple[int, int]] = {}
            for name in names:
                on_source = await asyncio.to_thread(source.count, name)
                on_target = await conn.fetchval(f"SELECT COUNT(*) FROM {_quote(name)}")
                counts[name] = (on_source, int(on_target))
            return counts
        finally:
            await conn.close()
    finally:
        source.close()


async def copy_database(
    sqlite_path: Path | str,
    postgres_url: str,
    *,
    batch: int = 1000,
    progress: Callable[[Progress], None] | None = None,
    migrate: bool = True,
) -> dict[str, tuple[int, int]]:
    """Copies every table; returns {table: (source rows, target rows)} counted at the
    end. Equal counts mean a complete copy; the caller reports any difference.

    The target is migrated to head first (under the migration advisory lock) unless
    `migrate=False`. Safe to run again after an interruption or on a finished copy.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    path = Path(sqlite_path)
    source = _Source(path)
    try:
        try:
            if migrate:
                await asyncio.to_thread(migrations.upgrade, postgres_url, "postgres")
            conn = await asyncpg.connect(asyncpg_dsn(postgres_url), server_settings=_BULK)
        except (OSError, asyncpg.PostgresError, psycopg.Error) as exc:
            raise CopyError(f"cannot open the PostgreSQL database: {exc}") from exc
        try:
            # Every check before the first write: a refused target stays as it was.
            plan = []
            for table in TABLES:
                columns = await _columns(source, conn, table.name)
                resume = await _check_target(source, conn, table) if table.serial else 0
                plan.append((table, columns, resume))
            for table, columns, resume in plan:
                await _copy_table(
                    source, conn, table, columns, resume=resume, batch=batch, progress=progress
                )
            await _tidy(conn)
        finally:
            await conn.close()
    except sqlite3.DatabaseError as exc:
        raise CopyError(f"cannot read the SQLite database {path}: {exc}") from exc
    finally:
        source.close()
    return await count_rows(path, postgres_url)
