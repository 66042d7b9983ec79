"""`db copy`: SQLite → PostgreSQL, every table, resumable, verified by counts.

The source is written through SqliteStore (as a server would); the target is a fresh
PostgreSQL database per test. What the stores read back must be the same on both sides,
seqs included, and search must work on the target.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from byok.server.cli_db_copy import ProgressLine, counts_table, db_copy
from byok.server.conversations.model import Conversation, Role, Usage
from byok.server.storage import FullStore
from byok.server.storage.accounts import ApiKeyRecord, ProviderKeyRecord
from byok.server.storage.base import User
from byok.server.storage.copy import TABLES, CopyError, Progress, copy_database, count_rows
from byok.server.storage.postgres import PostgresStore
from byok.server.storage.sqlite import SqliteStore
from byok.server.storage.workspace import ModelProfile, Params, Space
from tests.storage.test_store_contract import (
    create_database,
    drop_database,
    new_conv,
    new_msg,
    record,
)

USER = "local"


@pytest.fixture
def target() -> Iterator[str]:
    url = create_database("byok_copy")
    try:
        yield url
    finally:
        drop_database(url)


async def fill(store: FullStore) -> None:
    """A bit of everything, with gaps in every seq and at the top of messages."""
    ada = await store.create_user(User("u-ada", "ada", "Ada", False, 0))
    await store.create_user(User("u-bob", "bob", "Bob", False, 0))
    await store.set_user_disabled("u-bob", True)
    for i, user_id in enumerate((ada.id, ada.id, USER)):
        await store.create_api_key(
            ApiKeyRecord(f"key{i}", user_id, f"k{i}", f"byok_{i}", 1000 + i, 0, i == 1),
            f"hash-{i}",
        )
    for provider in ("openai", "anthropic"):
        await store.put_provider_key(
            ada.id,
            ProviderKeyRecord(provider, b"\x00nonce\xff" * 2, b"\x00\x01ct" * 9, "abcd", 0, 0),
        )
    for n in range(7):
        user_id = ada.id if n % 3 == 0 else USER
        conv, _ = await store.create_conversation(
            user_id,
            new_conv(
                title=f"Thread {n} about {'rust' if n % 2 else 'cooking'}",
                metadata={"n": str(n)},
                space_id="work" if n < 3 else "",
                pinned=n == 1,
                archived=n == 2,
            ),
            request_id=f"req-{n}",
        )
        for m in range(n + 2):
            role = Role.ASSISTANT if m % 2 else Role.USER
            await store.append_messages(
                user_id,
                conv.id,
                [
                    new_msg(
                        f"message {m} of thread {n}: borrowed reference number{m}",
                        role,
                        model="gpt-x" if role is Role.ASSISTANT else "",
                        usage=Usage(m, m * 2),
                        metadata={"m": str(m)},
                    )
                ],
                request_id=f"msg-{n}-{m}",
            )
        first = await store.list_messages(
            user_id, conv.id, descending=False, limit=1, after_seq=None
        )
        assert first
        await store.delete_message(user_id, conv.id, first[0].id, expected_etag=None)
    await store.import_conversation(USER, record("chatgpt:1"), space_id="", new_id="imported")
    doomed, _ = await store.create_conversation(USER, new_conv(title="doomed"))
    await store.append_messages(USER, doomed.id, [new_msg("the newest message, deleted")])
    await store.delete_conversation(USER, doomed.id, expected_etag=None, force=True)

    for i in range(3):
        await store.create_model_profile(
            USER,
            ModelProfile(f"p{i}", "FAST", f"P{i}", params=Params(temperature=0.1 * i, stop=("x",))),
            request_id=f"prof-{i}",
        )
    await store.delete_model_profile(USER, "p0", expected_etag=None)
    for space_id in ("work", "home"):
        await store.create_space(
            USER, Space(space_id, space_id.title(), "about"), request_id=space_id
        )
    await store.link_model_profile(USER, "work", "p2", make_default=False)
    await store.link_model_profile(USER, "work", "p1", make_default=True)
    await store.link_model_profile(USER, "home", "p2", make_default=True)


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "byok.db"
    store = await SqliteStore.open(path)
    try:
        await fill(store)
    finally:
        await store.close()
    yield path


async def snapshot(store: FullStore) -> dict[str, Any]:
    """Everything the stores can read back, per user."""
    users = sorted(await store.list_users(), key=lambda u: u.id)
    out: dict[str, Any] = {
        # The target keeps its own `local` user (seeded by its first migration, so
        # with its own create time); every other row is the source's.
        "users": [(u.id, u.name, u.display_name, u.disabled) for u in users],
        "user_times": {u.id: u.create_time_us for u in users if u.id != USER},
    }
    for user in users:
        convs: list[Conversation] = [c async for c in store.export_conversations(user.id, None)]
        out[user.id] = {
            "conversations": convs,
            "keys": await store.list_api_keys(user.id),
            "provider_keys": await store.list_provider_keys(user.id),
            "profiles": await store.list_model_profiles(user.id, limit=100, before_seq=None),
            "spaces": await store.list_spaces(user.id, limit=100, before_seq=None),
        }
    return out


async def search(store: FullStore, query: str) -> list[tuple[int, str]]:
    hits = await store.search_newest(
        USER, query, conversation_id=None, conditions=[], limit=100, before_seq=None
    )
    return [(h.message.seq, h.conversation_title) for h in hits]


async def test_copy_moves_every_table_and_search_works(source: Path, target: str) -> None:
    seen: list[Progress] = []
    counts = await copy_database(source, target, batch=4, progress=seen.append)
    assert list(counts) == [t.name for t in TABLES]
    assert all(a == b and a > 0 for a, b in counts.values()), counts
    assert {p.table for p in seen} == set(counts)
    last = {p.table: p for p in seen}
    assert all(p.done == p.total == counts[p.table][0] for p in last.values())

    sqlite_store = await SqliteStore.open(source, migrate=False)
    postgres_store = await PostgresStore.open(target, migrate=False)
    try:
        before, after = await snapshot(sqlite_store), await snapshot(postgres_store)
        assert after == before
        assert before[USER]["spaces"][1].profile_ids == ["p2", "p1"]  # link order kept
        ada_keys = before["u-ada"]["provider_keys"]
        assert ada_keys[0].ciphertext == b"\x00\x01ct" * 9  # ciphertext as it was

        for query in ("borrowed", "rust", "number3", "title:cooking", '"thread 4"'):
            expected = await search(sqlite_store, query)
            assert expected and await search(postgres_store, query) == expected, query

        # The target takes new rows after every copied seq and SQLite's high-water mark.
        high = (
            sqlite3.connect(source)
            .execute("SELECT name, seq FROM sqlite_sequence ORDER BY name")
            .fetchall()
        )
        conv, _ = await postgres_store.create_conversation(USER, new_conv(title="after"))
        stored = await postgres_store.append_messages(USER, conv.id, [new_msg("new one")])
        assert stored is not None
        profile, _ = await postgres_store.create_model_profile(USER, ModelProfile("pn", "FAST"))
        space, _ = await postgres_store.create_space(USER, Space("sn", "New"))
        new_seqs = {
            "conversations": conv.seq,
            "messages": stored[0].seq,
            "model_profiles": profile.seq,
            "spaces": space.seq,
        }
        for name, seq in high:
            if name in new_seqs:
                assert new_seqs[name] == seq + 1, name
    finally:
        await sqlite_store.close()
        await postgres_store.close()


class Interrupted(Exception):
    pass


async def test_an_interrupted_copy_resumes_without_duplicates(source: Path, target: str) -> None:
    def stop_in(table: str, after_rows: int) -> Any:
        def progress(p: Progress) -> None:
            if p.table == table and p.copied >= after_rows:
                raise Interrupted(table)

        return progress

    with pytest.raises(Interrupted):
        await copy_database(source, target, batch=5, progress=stop_in("messages", 10))
    partial = await count_rows(source, target)
    assert partial["conversations"][0] == partial["conversations"][1]
    assert 0 < partial["messages"][1] < partial["messages"][0]
    assert partial["spaces"][1] == 0

    resumed: list[Progress] = []
    with pytest.raises(Interrupted):
        await copy_database(source, target, batch=3, progress=stop_in("spaces", 1))
    counts = await copy_database(source, target, batch=3, progress=resumed.append)
    assert all(a == b for a, b in counts.values()), counts
    # The tables with seq resumed after what was there: nothing read again.
    assert all(p.copied == 0 for p in resumed if p.table in ("conversations", "messages"))
    assert [p.done for p in resumed if p.table == "messages"] == [counts["messages"][0]]

    # A finished copy run again changes nothing.
    assert await copy_database(source, target) == counts
    sqlite_store = await SqliteStore.open(source, migrate=False)
    postgres_store = await PostgresStore.open(target, migrate=False)
    try:
        assert await snapshot(postgres_store) == await snapshot(sqlite_store)
        assert await search(postgres_store, "borrowed") == await search(sqlite_store, "borrowed")
    finally:
        await sqlite_store.close()
        await postgres_store.close()


async def test_a_target_with_other_data_is_refused(source: Path, target: str) -> None:
    store = await PostgresStore.open(target)
    try:
        await store.create_conversation(USER, new_conv("mine"))
    finally:
        await store.close()
    with pytest.raises(CopyError, match="not from this SQLite database"):
        await copy_database(source, target)
    with psycopg.connect(target) as conn:  # refused before anything was written
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone() == (0,)


async def test_an_old_or_missing_source_is_refused(tmp_path: Path, target: str) -> None:
    with pytest.raises(CopyError, match="is not a file"):
        await copy_database(tmp_path / "nope.db", target)
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE users (id TEXT PRIMARY KEY)").connection.close()
    with pytest.raises(CopyError, match="no table api_keys"):
        await copy_database(old, target)
    with pytest.raises(ValueError, match="batch"):
        await copy_database(old, target, batch=0)


def test_cli_prints_counts_and_fails_on_a_mismatch(source: Path, target: str) -> None:
    app = typer.Typer()
    app.command()(db_copy)
    runner = CliRunner()
    ok = runner.invoke(app, ["--from", str(source), "--to", target, "--batch", "7"])
    assert ok.exit_code == 0, ok.output
    assert "counts match" in ok.stdout and "MISMATCH" not in ok.stdout
    assert "copying messages:" in ok.stderr and "(100%)" in ok.stderr
    assert target not in ok.output  # the URL (a password, maybe) is never printed
    lines = {line.split()[0]: line.split()[1:] for line in ok.stdout.splitlines()[1:-1]}
    assert set(lines) == {t.name for t in TABLES}

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE seq = (SELECT MIN(seq) FROM messages)")
    bad = runner.invoke(app, ["--from", str(source), "--to", target])
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.stdout and "row counts differ for messages" in bad.stderr

    unreachable = "postgresql://postgres@127.0.0.1:1/nothing"
    down = runner.invoke(app, ["--from", str(source)], env={"BYOK_DATABASE_URL": unreachable})
    assert down.exit_code == 2 and "cannot open the PostgreSQL database" in down.stderr


def test_progress_line_and_counts_table() -> None:
    out = io.StringIO()
    line = ProgressLine(out, every=3600)
    line(Progress("messages", 0, 10, 0, 0.0))
    line(Progress("messages", 5, 10, 5, 1.0))  # within `every`: not printed
    line(Progress("messages", 10, 10, 10, 2.0))
    assert out.getvalue().splitlines() == [
        "copying messages: 0/10 rows (0%), 0 rows/s",
        "copying messages: 10/10 rows (100%), 5 rows/s",
    ]
    table = counts_table({"users": (3, 3), "messages": (1200, 1199)}).splitlines()
    assert table[0].split() == ["table", "source", "target"]
    assert table[1].split() == ["users", "3", "3"]
    assert table[2].split() == ["messages", "1,200", "1,199", "MISMATCH"]
