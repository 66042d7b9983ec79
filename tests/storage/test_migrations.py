"""The migration system: upgrade to head, roll back to zero, upgrade again."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from byok.server.conversations.model import Conversation, Message, Role
from byok.server.storage import migrations
from byok.server.storage.sqlite import SqliteStore
from tests.support.servers import BIN


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith(("_yoyo", "yoyo", "sqlite_"))}


def test_upgrade_downgrade_zero_upgrade_again(tmp_path: Path) -> None:
    db = tmp_path / "byok.db"
    url = migrations.sqlite_url(db)
    all_ids = [m.id for m in migrations.status(url)]
    assert all_ids and all_ids == sorted(all_ids)

    assert migrations.upgrade(url) == all_ids
    assert all(state.applied for state in migrations.status(url))
    assert "users" in tables(db)
    assert migrations.upgrade(url) == []  # idempotent

    assert migrations.downgrade(url, to="zero") == list(reversed(all_ids))
    assert tables(db) == set()
    assert not any(state.applied for state in migrations.status(url))

    assert migrations.upgrade(url) == all_ids
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [("local",)]


def test_rows_survive_rolling_back_later_migrations(tmp_path: Path) -> None:
    """Each step back and forth keeps the rows of the tables it does not own."""
    db = tmp_path / "byok.db"
    url = migrations.sqlite_url(db)
    migrations.upgrade(url)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO users (id, name, display_name, create_time) VALUES ('u2', 'ada', 'Ada', 1)"
        )
    ids = [m.id for m in migrations.status(url)]
    for target in reversed(ids[:-1]):  # roll back to each earlier migration, then return
        migrations.downgrade(url, to=target)
        migrations.upgrade(url)
        with sqlite3.connect(db) as conn:
            assert ("u2", "ada") in conn.execute("SELECT id, name FROM users").fetchall()
    # One step back and forth from head always works, even with one migration.
    migrations.downgrade(url)
    migrations.upgrade(url)
    assert "users" in tables(db)


async def test_prefix_index_migration_keeps_search_whole_both_ways(tmp_path: Path) -> None:
    """0005 rebuilds the search index with prefix indexes from the stored messages, and
    rolling it back rebuilds the plain one: every message stays findable either way."""
    db = tmp_path / "byok.db"
    url = migrations.sqlite_url(db)
    migrations.upgrade(url)
    assert migrations.downgrade(url, to="0004.workspace") == ["0005.search-prefix"]
    store = await SqliteStore.open(db, migrate=False)
    try:
        conv, _ = await store.create_conversation("local", Conversation(id="c1", title="Loans"))
        await store.append_messages(
            "local",
            conv.id,
            [Message(f"m{i}", conv.id, Role.USER, f"borrowed {i}") for i in range(3)],
        )
    finally:
        await store.close()

    def prefix_hits() -> tuple[int, str]:
        with sqlite3.connect(db) as conn:
            hits = conn.execute(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'bor*'"
            ).fetchone()[0]
            sql = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'messages_fts'"
            ).fetchone()[0]
            conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
        return hits, sql

    assert prefix_hits()[0] == 3
    assert migrations.upgrade(url) == ["0005.search-prefix"]
    hits, sql = prefix_hits()
    assert hits == 3 and "prefix='2 3 4'" in sql
    with sqlite3.connect(db) as conn:
        config = dict(conn.execute("SELECT k, v FROM messages_fts_config").fetchall())
    assert config.get("automerge") == 8
    migrations.downgrade(url)
    hits, sql = prefix_hits()
    assert hits == 3 and "prefix" not in sql


async def test_store_opens_at_head_and_knows_the_local_user(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "d" / "byok.db")
    try:
        await store.ping()
        user = await store.get_user("local")
        assert user is not None and user.name == "local" and not user.disabled
        assert await store.get_user("nobody") is None
        with sqlite3.connect(tmp_path / "d" / "byok.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()
        await store.close()  # idempotent


def test_db_cli(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run(
            [str(BIN / "byok-server"), "db", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "pending  0001.users" in run("status")
    assert "applied 1" in run("upgrade") or "applied" in run("status")
    assert "applied  0001.users" in run("status")
    assert "rolled back" in run("downgrade", "--to", "zero")
    assert "pending  0001.users" in run("status")
    bad = subprocess.run(
        [
            str(BIN / "byok-server"),
            "db",
            "downgrade",
            "--to",
            "9999.nope",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "not applied" in bad.stderr
