"""PostgreSQL migrations: head, zero and back; replicas starting together take turns.

Each test gets its own fresh database (created and dropped here). PostgreSQL not
answering is a failure, not a skip (see tests/storage/test_store_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from byok.server.storage import migrations
from byok.server.storage.postgres import PostgresStore
from byok.server.storage.postgres.store import asyncpg_dsn
from tests.storage.test_store_contract import create_database, drop_database

TABLES = {
    "users",
    "conversations",
    "messages",
    "api_keys",
    "provider_keys",
    "model_profiles",
    "spaces",
    "space_profiles",
}


@pytest.fixture
def url() -> Iterator[str]:
    created = create_database("byok_migrations")
    try:
        yield created
    finally:
        drop_database(created)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    return {str(r[0]) for r in rows if "yoyo" not in str(r[0])}


def functions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema()"
        ).fetchall()
    return {str(r[0]) for r in rows}


def sqlite_columns(path: Path) -> dict[str, list[str]]:
    migrations.upgrade(migrations.sqlite_url(path))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            table: [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in TABLES
        }


def postgres_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(str(table), []).append(str(column))
    return {table: columns.get(table, []) for table in TABLES}


def test_urls_pick_the_backend() -> None:
    assert migrations.backend_of("sqlite:////tmp/x.db") == "sqlite"
    for scheme in ("postgresql", "postgres", "postgresql+psycopg", "POSTGRESQL+asyncpg"):
        url = f"{scheme}://u:p@h:5433/db?sslmode=disable"
        assert migrations.backend_of(url) == "postgres"
        assert migrations.postgres_url(url) == "postgresql+psycopg://u:p@h:5433/db?sslmode=disable"
        assert asyncpg_dsn(url) == "postgresql://u:p@h:5433/db?sslmode=disable"
    with pytest.raises(ValueError, match="unsupported"):
        migrations.backend_of("mysql://h/db")
    with pytest.raises(ValueError, match="postgresql://"):
        migrations.postgres_url("sqlite:///x")


def test_upgrade_downgrade_zero_upgrade_again(url: str, tmp_path: Path) -> None:
    all_ids = [m.id for m in migrations.status(url)]
    assert all_ids == [m.id for m in migrations.status(url, "postgres")]
    assert all_ids == [m.id for m in migrations.status(migrations.postgres_url(url))]
    assert all_ids and all_ids == sorted(all_ids)
    assert all_ids[-1] == migrations.head("postgres")
    # Exactly the numbering and ids of SQLite: a schema version means the same on both.
    sqlite_ids = [m.id for m in migrations.status(migrations.sqlite_url(tmp_path / "x.db"))]
    assert sqlite_ids == all_ids
    assert migrations.head("postgres") == migrations.head("sqlite")

    assert migrations.upgrade(url) == all_ids
    assert all(state.applied for state in migrations.status(url))
    assert tables(url) == TABLES
    assert migrations.upgrade(url) == []  # idempotent

    assert migrations.downgrade(url, to="zero") == list(reversed(all_ids))
    assert tables(url) == set()
    assert functions(url) == set()  # rollbacks drop the trigger functions too
    assert not any(state.applied for state in migrations.status(url))

    assert migrations.upgrade(url) == all_ids
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [("local",)]


def test_same_tables_and_columns_as_sqlite(url: str, tmp_path: Path) -> None:
    """Column for column (names and order), so `db copy` and the core see one schema;
    PostgreSQL adds only the search vector (SQLite keeps it in its FTS5 table)."""
    migrations.upgrade(url)
    on_postgres = postgres_columns(url)
    on_postgres["messages"].remove("search_tsv")
    assert on_postgres == sqlite_columns(tmp_path / "x.db")


def test_rows_survive_rolling_back_later_migrations(url: str) -> None:
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (id, name, display_name, create_time) VALUES ('u2', 'ada', 'Ada', 1)"
        )
    ids = [m.id for m in migrations.status(url)]
    for target in reversed(ids[:-1]):
        migrations.downgrade(url, to=target)
        migrations.upgrade(url)
        with psycopg.connect(url) as conn:
            assert ("u2", "ada") in conn.execute("SELECT id, name FROM users").fetchall()
    migrations.downgrade(url)
    migrations.upgrade(url)
    assert "messages" in tables(url)
    with pytest.raises(ValueError, match="not applied"):
        migrations.downgrade(url, to="9999.nope")


def test_concurrent_upgrades_take_turns(url: str) -> None:
    """Replicas starting together on a fresh database: one migrates, the rest find
    nothing to do. Threads here, processes in the next test."""
    all_ids = [m.id for m in migrations.status(url)]
    start = threading.Barrier(6)

    def upgrade() -> list[str]:
        start.wait()
        return migrations.upgrade(url)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: upgrade(), range(6)))
    assert sorted(results, key=len) == [[]] * 5 + [all_ids]
    assert all(state.applied for state in migrations.status(url))


def test_concurrent_upgrade_processes(url: str) -> None:
    code = (
        "import sys; from byok.server.storage import migrations;"
        " print(len(migrations.upgrade(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    applied = sorted(int(out) for out, _ in outputs)
    assert applied == [0, 0, 0, len(migrations.status(url))]


def test_upgrade_waits_for_the_advisory_lock(url: str) -> None:
    done = threading.Event()
    result: list[list[str]] = []

    def upgrade() -> None:
        result.append(migrations.upgrade(url))
        done.set()

    with migrations.postgres_lock(url):
        worker = threading.Thread(target=upgrade)
        worker.start()
        time.sleep(0.5)
        assert not done.is_set() and tables(url) == set()
    worker.join(30)
    assert done.is_set() and result[0] == [m.id for m in migrations.status(url)]


async def test_stores_opening_together_migrate_once(url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(url, max_size=2) for _ in range(3)))
    try:
        for store in stores:
            user = await store.get_user("local")
            assert user is not None and user.display_name == "Local user"
    finally:
        for store in stores:
            await store.close()
