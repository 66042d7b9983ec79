"""The migration system: upgrade to head, roll back to zero, upgrade again."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

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
