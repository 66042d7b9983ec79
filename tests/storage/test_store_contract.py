"""One behaviour, every backend: the `Store` contract on SQLite and on PostgreSQL.

Each test runs once per backend through the parametrized `store` fixture. SQLite gets
a temporary file; PostgreSQL gets one database for the whole run (created here, migrated
once, truncated between tests, dropped at the end). PostgreSQL not answering is a
failure, not a skip: start it with the command in POSTGRES_HINT, or point
BYOK_TEST_POSTGRES_URL at another server (a URL whose user may create databases).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import string
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from byok.server.conversations.model import Conversation, Message, Role, Usage
from byok.server.conversations.service import Conversations
from byok.server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from byok.server.filtering import Condition
from byok.server.storage import FullStore, ImportRecord, migrations
from byok.server.storage.accounts import ApiKeyRecord, ProviderKeyRecord
from byok.server.storage.base import User
from byok.server.storage.postgres import PostgresStore
from byok.server.storage.postgres.store import parse_search_query
from byok.server.storage.sqlite import SqliteStore
from byok.server.storage.workspace import ModelProfile, Params, Space

ADMIN_URL = os.environ.get("BYOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    " (or set BYOK_TEST_POSTGRES_URL to a server where this user may create databases)"
)
USER = "local"
OTHER = "bob"


# -- PostgreSQL databases for tests (also used by test_migrations_postgres.py) ----------


def admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to the admin database; fails the test if unreachable."""
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); {POSTGRES_HINT}")


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def create_database(prefix: str) -> str:
    """A new, empty database with a unique name; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin_connection() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
        )
    return database_url(name)


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with admin_connection() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def truncate_database(url: str) -> None:
    """Empties every table but yoyo's, keeping the seeded `local` user."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename NOT LIKE '%%yoyo%%' AND tablename <> 'users'"
        ).fetchall()
        if rows:
            names = sql.SQL(", ").join(sql.Identifier(str(r[0])) for r in rows)
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
        conn.execute("DELETE FROM users WHERE id <> 'local'")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One migrated database for the run's contract tests, dropped at the end."""
    url = create_database("byok_contract")
    try:
        migrations.upgrade(url)
        yield url
    finally:
        drop_database(url)


# -- the parametrized store ---------------------------------------------------------------


@dataclass
class Location:
    backend: str
    target: str  # SQLite file path or PostgreSQL URL

    async def open(self) -> FullStore:
        if self.backend == "sqlite":
            return await SqliteStore.open(Path(self.target))
        return await PostgresStore.open(self.target, migrate=False)

    def add_user(self, user_id: str) -> None:
        """A second user, inserted directly (create_user is under test itself)."""
        insert = "INSERT INTO users (id, name, display_name, create_time) VALUES ({0}, {0}, '', 1)"
        if self.backend == "sqlite":
            with sqlite3.connect(self.target) as conn:
                conn.execute(insert.format("?"), (user_id, user_id))
        else:
            with psycopg.connect(self.target, autocommit=True) as conn:
                conn.execute(insert.format("%s"), (user_id, user_id))


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "sqlite":
        return Location("sqlite", str(tmp_path / "byok.db"))
    url: str = request.getfixturevalue("postgres_database")
    truncate_database(url)
    return Location("postgres", url)


@pytest.fixture
async def store(location: Location) -> AsyncIterator[FullStore]:
    opened = await location.open()
    location.add_user(OTHER)
    try:
        yield opened
    finally:
        await opened.close()
        await opened.close()  # idempotent


# -- helpers ------------------------------------------------------------------------------


def new_conv(conv_id: str | None = None, **kw: Any) -> Conversation:
    return Conversation(id=conv_id or uuid.uuid4().hex, **kw)


def new_msg(content: str, role: Role = Role.USER, **kw: Any) -> Message:
    return Message(id=uuid.uuid4().hex, conversation_id="", role=role, content=content, **kw)


async def thread(store: FullStore, title: str = "", *texts: str, **kw: Any) -> Conversation:
    conv, created = await store.create_conversation(USER, new_conv(title=title, **kw))
    assert created
    for text in texts:
        assert await store.append_messages(USER, conv.id, [new_msg(text)])
    return conv


async def say(store: FullStore, conv: Conversation, text: str, **kw: Any) -> Message:
    stored = await store.append_messages(USER, conv.id, [new_msg(text, **kw)])
    assert stored is not None
    return stored[0]


async def search(
    store: FullStore,
    query: str,
    *,
    conversation_id: str | None = None,
    conditions: Sequence[Condition] = (),
) -> list[str]:
    """Contents of the relevance-ranked hits, best first."""
    snapshot = await store.search_snapshot()
    ranked = await store.search_rank(
        USER,
        query,
        conversation_id=conversation_id,
        conditions=conditions,
        snapshot=snapshot,
        window=2000,
    )
    hits = await store.search_hits(USER, query, ranked)
    return [h.message.content for h in hits]


# -- users --------------------------------------------------------------------------------


async def test_ping_and_users(store: FullStore) -> None:
    await store.ping()
    user = await store.get_user(USER)
    assert user is not None and user.name == "local" and not user.disabled
    assert user.create_time_us > 1_600_000_000_000_000  # microseconds
    assert await store.get_user("nobody") is None


# -- conversations ------------------------------------------------------------------------


async def test_create_get_and_request_id_idempotency(store: FullStore) -> None:
    conv, created = await store.create_conversation(
        USER,
        new_conv("c1", title="Trip", metadata={"k": "v"}, space_id="s1", pinned=True),
        request_id="r1",
    )
    assert created and conv.id == "c1" and conv.seq > 0 and conv.revision == 1
    assert conv.create_time_us == conv.update_time_us > 0
    assert (conv.title, conv.metadata, conv.space_id, conv.pinned) == (
        "Trip",
        {"k": "v"},
        "s1",
        True,
    )
    got = await store.get_conversation(USER, "c1")
    assert got is not None and got.messages is None
    assert replace(got, messages=None) == conv

    again, created = await store.create_conversation(USER, new_conv("c2"), request_id="r1")
    assert not created and again == conv
    assert await store.get_conversation(USER, "c2") is None

    # The same request id from another user is another request.
    theirs, created = await store.create_conversation(OTHER, new_conv("c3"), request_id="r1")
    assert created and theirs.id == "c3"

    with pytest.raises(AlreadyExists) as err:
        await store.create_conversation(USER, new_conv("c1"))
    assert err.value.reason == "CONVERSATION_EXISTS"
    assert err.value.metadata == {"name": "conversations/c1"}
    with pytest.raises(AlreadyExists):  # ids are global, not per user
        await store.create_conversation(OTHER, new_conv("c1"))


async def test_other_users_rows_are_invisible(store: FullStore) -> None:
    conv = await thread(store, "mine", "secret words")
    msg = await store.list_messages(USER, conv.id, descending=False, limit=10, after_seq=None)
    assert msg
    assert await store.get_conversation(OTHER, conv.id) is None
    assert (
        await store.list_messages(OTHER, conv.id, descending=False, limit=9, after_seq=None) is None
    )
    assert await store.get_message(OTHER, conv.id, msg[0].id) is None
    assert (
        await store.update_conversation(OTHER, conv.id, {"title": "x"}, expected_etag=None) is None
    )
    assert not await store.delete_conversation(OTHER, conv.id, expected_etag=None, force=True)
    assert await store.append_messages(OTHER, conv.id, [new_msg("x")]) is None
    assert (
        await store.update_message(OTHER, conv.id, msg[0].id, {"content": "x"}, expected_etag=None)
        is None
    )
    assert not await store.delete_message(OTHER, conv.id, msg[0].id, expected_etag=None)
    assert (
        await store.list_conversations(
            OTHER, [], order_field="update_time", descending=True, limit=10, cursor=None
        )
        == []
    )
    ranked = await store.search_rank(
        OTHER, "secret", conversation_id=None, conditions=[], snapshot=10**9, window=10
    )
    assert ranked == []
    mine = await store.search_rank(
        USER, "secret", conversation_id=None, conditions=[], snapshot=10**9, window=10
    )
    assert await store.search_hits(OTHER, "secret", mine) == []
    assert [c async for c in store.export_conversations(OTHER, None)] == []
    assert [c async for c in store.export_conversations(OTHER, [conv.id])] == []


async def test_update_conversation_fields_and_etag(store: FullStore) -> None:
    conv = await thread(store, "old")
    updated = await store.update_conversation(
        USER,
        conv.id,
        {"title": "new", "metadata": {"a": "b"}, "pinned": True, "archived": True, "space_id": "s"},
        expected_etag=conv.etag,
    )
    assert updated is not None and updated.revision == conv.revision + 1
    assert (
        updated.title,
        updated.metadata,
        updated.pinned,
        updated.archived,
        updated.space_id,
    ) == (
        "new",
        {"a": "b"},
        True,
        True,
        "s",
    )
    assert updated.update_time_us >= conv.update_time_us
    assert updated.create_time_us == conv.create_time_us
    assert await store.get_conversation(USER, conv.id) == updated

    with pytest.raises(Aborted) as err:
        await store.update_conversation(USER, conv.id, {"title": "x"}, expected_etag=conv.etag)
    assert err.value.reason == "ETAG_MISMATCH"
    assert err.value.metadata == {"name": f"conversations/{conv.id}"}
    unpinned = await store.update_conversation(USER, conv.id, {"pinned": False}, expected_etag=None)
    assert unpinned is not None and not unpinned.pinned and unpinned.title == "new"
    with pytest.raises(ValueError, match="cannot update"):
        await store.update_conversation(USER, conv.id, {"message_count": 3}, expected_etag=None)
    assert await store.update_conversation(USER, "nope", {"title": "x"}, expected_etag=None) is None


async def test_delete_conversation_pinned_needs_force(store: FullStore) -> None:
    conv = await thread(store, "keep", "hello there", pinned=True)
    with pytest.raises(FailedPrecondition) as err:
        await store.delete_conversation(USER, conv.id, expected_etag=None, force=False)
    assert err.value.reason == "CONVERSATION_PINNED"
    current = await store.get_conversation(USER, conv.id)
    assert current is not None
    with pytest.raises(Aborted):
        await store.delete_conversation(USER, conv.id, expected_etag=conv.etag, force=True)
    assert await store.delete_conversation(USER, conv.id, expected_etag=current.etag, force=True)
    assert await store.get_conversation(USER, conv.id) is None
    assert not await store.delete_conversation(USER, conv.id, expected_etag=None, force=True)
    assert await search(store, "hello") == []

    plain = await thread(store)
    assert await store.delete_conversation(USER, plain.id, expected_etag=None, force=False)


async def test_list_conversations_filters_order_and_keyset(store: FullStore) -> None:
    convs = []
    for i in range(7):
        conv = await thread(
            store,
            f"t{i}",
            space_id="even" if i % 2 == 0 else "odd",
            pinned=i == 3,
            archived=i == 5,
        )
        convs.append(conv)
    # Touch two threads so update order differs from create order.
    await say(store, convs[1], "bump", role=Role.ASSISTANT, model="m-1")
    await store.update_conversation(USER, convs[0].id, {"title": "t0!"}, expected_etag=None)

    async def pages(
        field: str, descending: bool, conditions: list[Condition], size: int
    ) -> list[str]:
        out: list[str] = []
        cursor: list[int] | None = None
        while True:
            page = await store.list_conversations(
                USER,
                conditions,
                order_field=field,
                descending=descending,
                limit=size,
                cursor=cursor,
            )
            out += [c.id for c in page]
            if len(page) < size:
                return out
            last = page[-1]
            cursor = [
                last.update_time_us if field == "update_time" else last.create_time_us,
                last.seq,
            ]

    everything = [c for c in [await store.get_conversation(USER, c.id) for c in convs] if c]
    for field in ("update_time", "create_time"):
        for descending in (True, False):

            def key(c: Conversation, field: str = field) -> tuple[int, int]:
                return (c.update_time_us if field == "update_time" else c.create_time_us, c.seq)

            expected = [c.id for c in sorted(everything, key=key, reverse=descending)]
            assert await pages(field, descending, [], 3) == expected, (field, descending)
            assert await pages(field, descending, [], 100) == expected
    newest = await pages("update_time", True, [], 2)
    assert newest[:2] == [convs[0].id, convs[1].id]

    def ids(*indexes: int) -> set[str]:
        return {convs[i].id for i in indexes}

    async def matching(*conditions: Condition) -> set[str]:
        return set(await pages("update_time", True, list(conditions), 100))

    assert await matching(Condition("space", "=", "even")) == ids(0, 2, 4, 6)
    assert await matching(Condition("space", "!=", "even")) == ids(1, 3, 5)
    assert await matching(Condition("pinned", "=", True)) == ids(3)
    assert await matching(Condition("archived", "=", False)) == ids(0, 1, 2, 3, 4, 6)
    assert await matching(Condition("archived", "=", True), Condition("space", "=", "odd")) == ids(
        5
    )
    assert await matching(Condition("last_model", "=", "m-1")) == ids(1)
    assert await matching(Condition("create_time", ">=", convs[4].create_time_us)) >= ids(4, 5, 6)
    assert not await matching(Condition("create_time", "<", convs[0].create_time_us))
    assert await matching(Condition("update_time", ">", 0)) == ids(*range(7))
    with pytest.raises(InvalidArgument) as err:
        await matching(Condition("title", "=", "x"))
    assert err.value.violations[0].field == "filter"


# -- messages -----------------------------------------------------------------------------


async def test_append_messages_counters_and_last_model(store: FullStore) -> None:
    conv = await thread(store, "t")
    stored = await store.append_messages(
        USER,
        conv.id,
        [
            new_msg("question", usage=Usage(10, 0), metadata={"x": "1"}),
            new_msg(
                "answer",
                Role.ASSISTANT,
                model="gpt-x",
                route="r",
                usage=Usage(3, 7),
                latency_us=900,
                ttft_us=100,
                finish_reason="stop",
            ),
            new_msg("old", Role.USER, create_time_us=1234),
        ],
    )
    assert stored is not None and [m.content for m in stored] == ["question", "answer", "old"]
    assert stored[0].seq < stored[1].seq < stored[2].seq
    assert all(m.conversation_id == conv.id and m.revision == 1 for m in stored)
    assert stored[0].create_time_us == stored[0].update_time_us > 0
    assert stored[2].create_time_us == 1234  # an explicit time is kept
    for m in stored:
        got = await store.get_message(USER, conv.id, m.id)
        assert got == m
    after = await store.get_conversation(USER, conv.id)
    assert after is not None
    assert (after.message_count, after.usage, after.last_model) == (3, Usage(13, 7), "gpt-x")
    assert after.revision == conv.revision + 1 and after.update_time_us >= conv.update_time_us

    await say(store, conv, "no model here", role=Role.ASSISTANT)
    await say(store, conv, "user text")
    again = await store.get_conversation(USER, conv.id)
    assert again is not None and again.last_model == "gpt-x" and again.message_count == 5

    full = await store.get_conversation(USER, conv.id, with_messages=True)
    assert full is not None and full.messages is not None
    assert [m.content for m in full.messages] == [
        "question",
        "answer",
        "old",
        "no model here",
        "user text",
    ]
    assert full.messages[1].usage == Usage(3, 7) and full.messages[1].route == "r"
    assert full.messages[0].metadata == {"x": "1"} and full.messages[1].finish_reason == "stop"
    limited = await store.get_conversation(USER, conv.id, with_messages=True, message_limit=2)
    assert limited is not None and len(limited.messages or []) == 2
    assert await store.append_messages(USER, "nope", [new_msg("x")]) is None
    assert await store.get_message(USER, conv.id, "nope") is None


async def test_append_request_id_returns_the_first_message(store: FullStore) -> None:
    conv = await thread(store)
    first = await store.append_messages(USER, conv.id, [new_msg("once")], request_id="q1")
    retry = await store.append_messages(USER, conv.id, [new_msg("twice")], request_id="q1")
    assert first is not None and retry is not None
    assert retry[0].id == first[0].id and retry[0].content == "once"
    other = await thread(store)
    elsewhere = await store.append_messages(USER, other.id, [new_msg("x")], request_id="q1")
    assert elsewhere is not None and elsewhere[0].content == "x"
    after = await store.get_conversation(USER, conv.id)
    assert after is not None and after.message_count == 1


async def test_create_conversation_with_messages_is_create_then_append(
    store: FullStore,
) -> None:
    conv, stored = await store.create_conversation_with_messages(
        USER,
        new_conv("w1", title="Turn", space_id="s1"),
        [
            new_msg("hello", usage=Usage(4, 0)),
            new_msg("hi", Role.ASSISTANT, model="gpt-x", usage=Usage(1, 2)),
        ],
    )
    assert [m.content for m in stored] == ["hello", "hi"]
    assert all(m.conversation_id == "w1" and m.revision == 1 for m in stored)
    assert 0 < stored[0].seq < stored[1].seq
    got = await store.get_conversation(USER, "w1", with_messages=True)
    assert got is not None and got.messages == stored
    assert replace(got, messages=None) == conv
    assert (conv.title, conv.space_id, conv.message_count) == ("Turn", "s1", 2)
    assert (conv.usage, conv.last_model) == (Usage(5, 2), "gpt-x")

    # The same thread built in two steps ends in the same state (counters, revision).
    two, _ = await store.create_conversation(USER, new_conv("w2", title="Turn", space_id="s1"))
    assert await store.append_messages(
        USER,
        two.id,
        [
            new_msg("hello", usage=Usage(4, 0)),
            new_msg("hi", Role.ASSISTANT, model="gpt-x", usage=Usage(1, 2)),
        ],
    )
    stepwise = await store.get_conversation(USER, "w2")
    assert stepwise is not None
    same = ("title", "space_id", "message_count", "usage", "last_model", "revision")
    assert [getattr(stepwise, f) for f in same] == [getattr(conv, f) for f in same]

    empty, none = await store.create_conversation_with_messages(USER, new_conv("w3"), [])
    assert none == [] and empty.message_count == 0 and empty.revision == 1

    with pytest.raises(AlreadyExists) as err:
        await store.create_conversation_with_messages(USER, new_conv("w1"), [new_msg("again")])
    assert err.value.reason == "CONVERSATION_EXISTS"
    with pytest.raises(NotFound) as missing:
        await store.create_conversation_with_messages("nobody", new_conv("w4"), [new_msg("x")])
    assert missing.value.reason == "USER_NOT_FOUND"
    # A failed create stores nothing: no thread, no message.
    assert await store.get_conversation(USER, "w4") is None
    after = await store.get_conversation(USER, "w1")
    assert after is not None and after.message_count == 2


async def test_concurrent_appends_from_two_stores_keep_exact_counters(
    store: FullStore, location: Location
) -> None:
    """Two replicas (two stores on one database) appending to one thread at once."""
    conv = await thread(store)
    replica = await location.open()
    try:

        async def writer(s: FullStore, n: int) -> None:
            for i in range(n):
                await s.append_messages(USER, conv.id, [new_msg(f"m{i}", usage=Usage(1, 2))])

        await asyncio.gather(writer(store, 15), writer(replica, 15), writer(store, 10))
        got = await replica.get_conversation(USER, conv.id, with_messages=True)
        assert got is not None and got.messages is not None
        assert got.message_count == len(got.messages) == 40
        assert got.usage == Usage(40, 80) and got.revision == 41
        seqs = [m.seq for m in got.messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == 40

        same = await asyncio.gather(
            *(
                s.append_messages(USER, conv.id, [new_msg(f"retry {i}")], request_id="dup")
                for i, s in enumerate([store, replica] * 3)
            )
        )
        assert len({r[0].id for r in same if r}) == 1
        created = await asyncio.gather(
            *(
                s.create_conversation(USER, new_conv(), request_id="same")
                for s in [store, replica] * 3
            )
        )
        assert len({c.id for c, _ in created}) == 1 and sum(new for _, new in created) == 1
    finally:
        await replica.close()


async def test_list_messages_paging(store: FullStore) -> None:
    conv = await thread(store, "t", *(f"m{i}" for i in range(7)))
    for descending in (False, True):
        seen: list[str] = []
        after: int | None = None
        while True:
            page = await store.list_messages(
                USER, conv.id, descending=descending, limit=3, after_seq=after
            )
            assert page is not None
            seen += [m.content for m in page]
            if len(page) < 3:
                break
            after = page[-1].seq
        expected = [f"m{i}" for i in range(7)]
        assert seen == (expected[::-1] if descending else expected)
    assert (
        await store.list_messages(USER, "nope", descending=False, limit=3, after_seq=None) is None
    )
    empty = await thread(store)
    assert await store.list_messages(USER, empty.id, descending=True, limit=3, after_seq=None) == []


async def test_get_thread_is_the_thread_and_its_newest_messages(store: FullStore) -> None:
    conv = await thread(store, "t", *(f"m{i}" for i in range(5)))
    found = await store.get_thread(USER, conv.id, history_limit=3)
    assert found is not None
    got, history = found
    assert got == await store.get_conversation(USER, conv.id) and got.message_count == 5
    assert [m.content for m in history] == ["m2", "m3", "m4"]  # newest 3, oldest first
    page = await store.list_messages(USER, conv.id, descending=False, limit=10, after_seq=None)
    assert page is not None and history == page[2:]

    found = await store.get_thread(USER, conv.id, history_limit=10)
    assert found is not None and found[1] == page  # fewer than the limit: all of them

    empty = await thread(store, "e")
    found = await store.get_thread(USER, empty.id, history_limit=10)
    assert found == (await store.get_conversation(USER, empty.id), [])

    assert await store.get_thread(USER, "nope", history_limit=10) is None
    assert await store.get_thread(OTHER, conv.id, history_limit=10) is None


async def test_update_and_delete_message_keep_counters(store: FullStore) -> None:
    conv = await thread(store)
    question = await say(store, conv, "hello", usage=Usage(5, 0))
    answer = await say(store, conv, "world", role=Role.ASSISTANT, usage=Usage(1, 9), model="m")
    before = await store.get_conversation(USER, conv.id)
    assert before is not None

    edited = await store.update_message(
        USER,
        conv.id,
        answer.id,
        {"content": "planet", "metadata": {"e": "1"}},
        expected_etag=answer.etag,
    )
    assert edited is not None and edited.content == "planet" and edited.metadata == {"e": "1"}
    assert edited.revision == 2 and edited.seq == answer.seq
    assert edited.create_time_us == answer.create_time_us <= edited.update_time_us
    assert await store.get_message(USER, conv.id, answer.id) == edited
    touched = await store.get_conversation(USER, conv.id)
    assert touched is not None and touched.revision == before.revision + 1
    assert touched.message_count == 2

    with pytest.raises(Aborted) as err:
        await store.update_message(
            USER, conv.id, answer.id, {"content": "x"}, expected_etag=answer.etag
        )
    assert err.value.metadata == {"name": f"conversations/{conv.id}/messages/{answer.id}"}
    with pytest.raises(ValueError, match="cannot update"):
        await store.update_message(USER, conv.id, answer.id, {"role": 1}, expected_etag=None)
    assert (
        await store.update_message(USER, conv.id, "nope", {"content": "x"}, expected_etag=None)
        is None
    )
    assert (
        await store.update_message(USER, "nope", answer.id, {"content": "x"}, expected_etag=None)
        is None
    )

    with pytest.raises(Aborted):
        await store.delete_message(USER, conv.id, answer.id, expected_etag=answer.etag)
    assert await store.delete_message(USER, conv.id, answer.id, expected_etag=edited.etag)
    assert not await store.delete_message(USER, conv.id, answer.id, expected_etag=None)
    assert await store.get_message(USER, conv.id, answer.id) is None
    after = await store.get_conversation(USER, conv.id)
    assert after is not None and after.message_count == 1 and after.usage == Usage(5, 0)
    assert after.revision == touched.revision + 1
    assert await store.delete_message(USER, conv.id, question.id, expected_etag=None)
    empty = await store.get_conversation(USER, conv.id)
    assert empty is not None and (empty.message_count, empty.usage) == (0, Usage(0, 0))


# -- search -------------------------------------------------------------------------------


async def test_search_words_phrases_prefix_and_titles(store: FullStore) -> None:
    rust = await thread(store, "Rust lifetimes")
    cook = await thread(store, "Cooking")
    question = await say(store, rust, "How do lifetimes work with borrowed references?")
    answer = await say(
        store, rust, "A borrowed reference cannot outlive its owner.", role=Role.ASSISTANT
    )
    await say(store, cook, "How long do I boil an egg?")

    snapshot = await store.search_snapshot()
    ranked = await store.search_rank(
        USER, "borrowed", conversation_id=None, conditions=[], snapshot=snapshot, window=50
    )
    assert {seq for seq, _ in ranked} == {question.seq, answer.seq}
    assert all(score > 0 for _, score in ranked)
    hits = await store.search_hits(USER, "borrowed", ranked)
    assert [h.message.seq for h in hits] == [seq for seq, _ in ranked]
    assert [h.score for h in hits] == [score for _, score in ranked]
    for hit in hits:
        assert "[borrowed]" in hit.snippet
        assert hit.conversation_title == "Rust lifetimes"
        assert hit.message.conversation_id == rust.id

    assert await search(store, '"cannot outlive"') == [answer.content]
    assert await search(store, '"outlive cannot"') == []
    assert len(await search(store, "bor*")) == 2
    assert await search(store, '"a borrowed ref"*') == [answer.content]
    assert len(await search(store, "how")) == 2
    assert len(await search(store, "HOW")) == 2  # case-insensitive
    assert await search(store, "borrowed owner") == [answer.content]  # all words
    assert len(await search(store, "owner OR egg")) == 2
    assert await search(store, "borrowed NOT owner") == [question.content]
    assert await search(store, "(owner OR egg) AND boil") == ["How long do I boil an egg?"]
    assert await search(store, "nothinglikethis") == []

    # The thread title is searched too, weighted below the message itself.
    assert await search(store, "cooking") == ["How long do I boil an egg?"]
    assert await search(store, "title:cooking") == ["How long do I boil an egg?"]
    assert await search(store, "content:cooking") == []
    assert len(await search(store, "rust")) == 2
    assert await search(store, "rust owner") == [answer.content]  # title + content
    assert await search(store, '"lifetimes rust"') == []  # no phrase across columns
    cooking_hits = await store.search_hits(
        USER,
        "cooking",
        await store.search_rank(
            USER, "cooking", conversation_id=None, conditions=[], snapshot=snapshot, window=9
        ),
    )
    assert "[Cooking]" in cooking_hits[0].snippet
    # A word in the message outranks the same word only in the title.
    mixed = await thread(store, "lifetimes")
    await say(store, mixed, "nothing relevant")
    ranking = await search(store, "lifetimes")
    assert ranking[0] == question.content and ranking[-1] in (answer.content, "nothing relevant")


async def test_search_ranks_by_relevance(store: FullStore) -> None:
    conv = await thread(store)
    await say(store, conv, "apple cherry date elderberry fig grape")
    await say(store, conv, "apple banana apple")
    await say(store, conv, "pear")
    assert await search(store, "apple") == [
        "apple banana apple",
        "apple cherry date elderberry fig grape",
    ]


async def test_search_filters_and_scope(store: FullStore) -> None:
    a = await thread(store, "A", space_id="s1")
    b = await thread(store, "B", space_id="s2")
    first = await say(store, a, "shared word from user")
    await say(store, a, "shared word from assistant", role=Role.ASSISTANT)
    await say(store, b, "shared word elsewhere")

    assert len(await search(store, "shared")) == 3
    assert set(await search(store, "shared", conversation_id=a.id)) == {
        "shared word from user",
        "shared word from assistant",
    }
    assert await search(
        store, "shared", conditions=[Condition("role", "=", int(Role.ASSISTANT))]
    ) == ["shared word from assistant"]
    assert len(await search(store, "shared", conditions=[Condition("role", "!=", 3)])) == 2
    assert await search(store, "shared", conditions=[Condition("space", "=", "s2")]) == [
        "shared word elsewhere"
    ]
    later = [Condition("create_time", ">", first.create_time_us)]
    assert "shared word from user" not in await search(store, "shared", conditions=later)
    assert await search(store, "shared", conversation_id="nope") == []
    with pytest.raises(InvalidArgument) as err:
        await search(store, "shared", conditions=[Condition("model", "=", "x")])
    assert err.value.violations[0].field == "filter"


async def test_search_newest_pages_backwards(store: FullStore) -> None:
    conv = await thread(store)
    for i in range(7):
        await say(store, conv, f"kiwi number {i}")
    await say(store, conv, "banana")
    seen: list[str] = []
    before: int | None = None
    while True:
        page = await store.search_newest(
            USER, "kiwi", conversation_id=None, conditions=[], limit=3, before_seq=before
        )
        assert all(h.score == 0.0 and "[kiwi]" in h.snippet for h in page)
        seen += [h.message.content for h in page]
        if len(page) < 3:
            break
        before = page[-1].message.seq
    assert seen == [f"kiwi number {i}" for i in reversed(range(7))]
    scoped = await store.search_newest(
        USER,
        "kiwi",
        conversation_id=conv.id,
        conditions=[Condition("role", "=", int(Role.USER))],
        limit=2,
        before_seq=None,
    )
    assert [h.message.content for h in scoped] == ["kiwi number 6", "kiwi number 5"]
    assert scoped[0].conversation_title == ""


async def test_search_rank_window_and_snapshot(store: FullStore) -> None:
    conv = await thread(store)
    for i in range(6):
        await say(store, conv, f"plum {i}")
    snapshot = await store.search_snapshot()
    late = await say(store, conv, "plum late")
    assert late.seq > snapshot == (await store.search_snapshot()) - 1

    ranked = await store.search_rank(
        USER, "plum", conversation_id=None, conditions=[], snapshot=snapshot, window=100
    )
    assert len(ranked) == 6 and late.seq not in {seq for seq, _ in ranked}
    window = await store.search_rank(
        USER, "plum", conversation_id=None, conditions=[], snapshot=snapshot, window=4
    )
    newest_four = sorted((seq for seq, _ in ranked), reverse=True)[:4]
    assert sorted(seq for seq, _ in window) == sorted(newest_four)
    # Hits come back in the order given; seqs that no longer match are dropped.
    order = list(reversed(window))
    hits = await store.search_hits(USER, "plum", [*order, (10**9, 1.0)])
    assert [h.message.seq for h in hits] == [seq for seq, _ in order]
    assert await store.search_hits(USER, "plum", []) == []


async def test_search_index_follows_edits_and_deletes(store: FullStore) -> None:
    rust = await thread(store, "Rust")
    cook = await thread(store, "Cooking")
    answer = await say(store, rust, "A borrowed reference cannot outlive its owner.")
    await say(store, cook, "How long do I boil an egg?")

    await store.update_message(
        USER, rust.id, answer.id, {"content": "Owners outlive references."}, expected_etag=None
    )
    assert await search(store, "outlive") == ["Owners outlive references."]
    assert await search(store, '"cannot outlive"') == []
    assert await search(store, "rust outlive") == ["Owners outlive references."]
    await store.delete_message(USER, rust.id, answer.id, expected_etag=None)
    assert await search(store, "outlive") == []

    await store.update_conversation(USER, cook.id, {"title": "Eggs"}, expected_etag=None)
    assert await search(store, "cooking") == []
    assert await search(store, "eggs") == ["How long do I boil an egg?"]
    await store.update_conversation(USER, cook.id, {"pinned": True}, expected_etag=None)
    assert await search(store, "eggs") == ["How long do I boil an egg?"]
    await store.delete_conversation(USER, cook.id, expected_etag=None, force=True)
    assert await search(store, "egg*") == []


async def test_core_search_pages_are_stable(store: FullStore) -> None:
    """The conversations core over this store: relevance pages come from one ranking
    per snapshot, time pages by keyset; later inserts never repeat or reorder hits."""
    core = Conversations(store)
    conv = await core.create(USER, title="fruit")
    for i in range(9):
        await core.append(USER, conv.name, new_msg(f"apple number {i} " + "apple " * (i % 3)))
    for order in ("relevance", "create_time desc"):
        seen: list[str] = []
        token = ""
        while True:
            hits, token = await core.search(
                USER, "conversations/-", "apple", page_size=4, page_token=token, order_by=order
            )
            seen += [h.message.name for h in hits]
            await core.append(USER, conv.name, new_msg("apple inserted later"))
            if not token:
                break
        assert len(seen) == len(set(seen)), order
        if order == "relevance":
            assert len(seen) == 9  # the snapshot excludes later inserts


@pytest.mark.parametrize(
    "bad", ['"unbalanced', "AND", "nosuchcolumn: x", "a OR", "NOT a", "(a", "a)"]
)
async def test_search_query_syntax_errors(store: FullStore, bad: str) -> None:
    await thread(store, "t", "a b c")
    with pytest.raises(InvalidArgument) as err:
        await search(store, bad)
    assert err.value.violations[0].field == "query", err.value.message
    with pytest.raises(InvalidArgument):
        await store.search_newest(
            USER, bad, conversation_id=None, conditions=[], limit=5, before_seq=None
        )


async def test_large_message_is_stored_and_found(store: FullStore) -> None:
    """1 MiB of distinct words: past PostgreSQL's tsvector size, still stored."""
    rng = random.Random(7)
    words = (
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(200_000)
    )
    content = ("zebrafirst " + " ".join(words))[: 1024 * 1024]
    conv = await thread(store)
    stored = await say(store, conv, content)
    assert (await store.get_message(USER, conv.id, stored.id)) == stored
    hits = await store.search_newest(
        USER, "zebrafirst", conversation_id=None, conditions=[], limit=5, before_seq=None
    )
    assert [h.message.id for h in hits] == [stored.id]
    assert hits[0].snippet.startswith("[zebrafirst]") and hits[0].snippet.endswith("…")


# -- export / import ----------------------------------------------------------------------


async def test_export_conversations(store: FullStore) -> None:
    a = await thread(store, "A", "one", "two")
    b = await thread(store, "B")
    c = await thread(store, "C", "three")
    exported = [conv async for conv in store.export_conversations(USER, None)]
    assert [conv.id for conv in exported] == [a.id, b.id, c.id]
    assert [[m.content for m in conv.messages or []] for conv in exported] == [
        ["one", "two"],
        [],
        ["three"],
    ]
    named = [conv async for conv in store.export_conversations(USER, [c.id, "nope", a.id])]
    assert [conv.id for conv in named] == [c.id, a.id]
    assert named[0].message_count == 1 and named[0].title == "C"


def record(source_key: str, preferred_id: str | None = None, **kw: object) -> ImportRecord:
    fields: dict[str, Any] = {
        "source_key": source_key,
        "preferred_id": preferred_id,
        "title": "Imported thread",
        "metadata": {"from": "test"},
        "pinned": False,
        "archived": True,
        "create_time_us": 1_000_000,
        "update_time_us": 2_000_000,
        "messages": [
            new_msg("imported question", create_time_us=1_500_000),
            new_msg("imported answer", Role.ASSISTANT, model="old-model", usage=Usage(4, 6)),
            new_msg("follow up", usage=Usage(1, 0)),
        ],
    }
    fields.update(kw)
    return ImportRecord(**fields)


async def test_import_conversation(store: FullStore) -> None:
    conv_id, created = await store.import_conversation(
        USER, record("chatgpt:1"), space_id="sp", new_id="fresh-1"
    )
    assert (conv_id, created) == ("fresh-1", True)
    conv = await store.get_conversation(USER, conv_id, with_messages=True)
    assert conv is not None and conv.messages is not None
    assert (conv.title, conv.metadata, conv.space_id, conv.pinned, conv.archived) == (
        "Imported thread",
        {"from": "test"},
        "sp",
        False,
        True,
    )
    assert (conv.create_time_us, conv.update_time_us) == (1_000_000, 2_000_000)
    assert (conv.message_count, conv.usage, conv.last_model) == (3, Usage(5, 6), "old-model")
    assert [m.content for m in conv.messages] == [
        "imported question",
        "imported answer",
        "follow up",
    ]
    assert conv.messages[0].create_time_us == conv.messages[0].update_time_us == 1_500_000
    assert conv.messages[1].create_time_us > 2_000_000  # no time given: now
    assert await search(store, "imported") != []

    # The same source again is skipped, whatever new id is offered.
    assert await store.import_conversation(
        USER, record("chatgpt:1"), space_id="", new_id="fresh-2"
    ) == ("fresh-1", False)
    # Another user's import of the same source is theirs.
    assert await store.import_conversation(
        OTHER, record("chatgpt:1"), space_id="", new_id="fresh-3"
    ) == ("fresh-3", True)

    # A preferred id is used when free, skipped when the user has it, replaced when
    # someone else has it.
    assert await store.import_conversation(
        USER, record("byok:x", preferred_id="wanted"), space_id="", new_id="fresh-4"
    ) == ("wanted", True)
    assert await store.import_conversation(
        USER, record("byok:y", preferred_id="wanted"), space_id="", new_id="fresh-5"
    ) == ("wanted", False)
    assert await store.import_conversation(
        OTHER, record("byok:z", preferred_id="wanted"), space_id="", new_id="fresh-6"
    ) == ("fresh-6", True)

    empty_id, created = await store.import_conversation(
        USER,
        record("empty", messages=[], create_time_us=0, update_time_us=0),
        space_id="",
        new_id="fresh-7",
    )
    empty = await store.get_conversation(USER, empty_id)
    assert created and empty is not None
    assert (empty.message_count, empty.last_model) == (0, "")
    assert empty.create_time_us > 2_000_000


# -- accounts -----------------------------------------------------------------------------


def api_key(key_id: str, user_id: str = USER, name: str = "", at: int = 1_000) -> ApiKeyRecord:
    return ApiKeyRecord(key_id, user_id, name, f"byok_{key_id[:7]}", at, 0, False)


def provider_key(provider: str, secret: bytes = b"\x00\xffsecret\x00") -> ProviderKeyRecord:
    return ProviderKeyRecord(provider, b"\x01" * 12, secret, "cret", 0, 0)


async def test_users_create_find_list_and_disable(store: FullStore) -> None:
    ada = await store.create_user(User("u-ada", "ada", "Ada L.", True, 0))
    assert (ada.id, ada.name, ada.display_name, ada.disabled) == ("u-ada", "ada", "Ada L.", False)
    assert ada.create_time_us > 1_600_000_000_000_000
    assert await store.get_user("u-ada") == ada
    assert await store.get_user_by_name("ada") == ada
    assert await store.get_user_by_name("nobody") is None
    with pytest.raises(AlreadyExists) as err:
        await store.create_user(User("u-other", "ada", "", False, 0))
    assert err.value.reason == "USER_EXISTS"

    users = await store.list_users()
    assert [u.name for u in users] == [OTHER, "local", "ada"]  # by create time (bob's is 1)
    assert users[-1] == ada

    assert await store.set_user_disabled("u-ada", True)
    got = await store.get_user_by_name("ada")
    assert got is not None and got.disabled
    assert await store.set_user_disabled("u-ada", False)
    assert not (await store.get_user("u-ada") or got).disabled
    assert not await store.set_user_disabled("nobody", True)


async def test_api_keys(store: FullStore) -> None:
    await store.create_api_key(api_key("k2", name="laptop", at=2_000), "hash-2")
    await store.create_api_key(api_key("k1", name="phone", at=1_000), "hash-1")
    await store.create_api_key(api_key("k3", OTHER), "hash-3")
    mine = await store.list_api_keys(USER)
    assert [k.id for k in mine] == ["k1", "k2"]  # by create time
    assert mine[1] == ApiKeyRecord("k2", USER, "laptop", "byok_k2", 2_000, 0, False)
    assert [k.id for k in await store.list_api_keys(OTHER)] == ["k3"]

    found = await store.find_api_key("hash-2")
    assert found is not None
    record, user = found
    assert record == mine[1] and user.id == USER and user.name == "local"
    assert await store.find_api_key("nope") is None

    assert await store.revoke_api_key("k2")
    revoked = await store.find_api_key("hash-2")
    assert revoked is not None and revoked[0].revoked
    assert await store.revoke_api_key("k2")  # again: still there, still revoked
    assert not await store.revoke_api_key("nope")
    assert [k.revoked for k in await store.list_api_keys(USER)] == [False, True]


async def test_provider_keys(store: FullStore) -> None:
    first = await store.put_provider_key(USER, provider_key("openai"))
    assert first.provider == "openai" and first.ciphertext == b"\x00\xffsecret\x00"
    assert first.nonce == b"\x01" * 12 and first.last4 == "cret"
    assert first.create_time_us == first.update_time_us > 0
    assert await store.get_provider_key(USER, "openai") == first

    await store.put_provider_key(USER, provider_key("anthropic"))
    await store.put_provider_key(OTHER, provider_key("openai", b"theirs"))
    assert [k.provider for k in await store.list_provider_keys(USER)] == ["anthropic", "openai"]

    replaced = await store.put_provider_key(
        USER, ProviderKeyRecord("openai", b"\x02" * 12, b"new", "4321", 0, 0)
    )
    assert (replaced.nonce, replaced.ciphertext, replaced.last4) == (b"\x02" * 12, b"new", "4321")
    assert replaced.create_time_us == first.create_time_us
    assert replaced.update_time_us >= first.update_time_us
    theirs = await store.get_provider_key(OTHER, "openai")
    assert theirs is not None and theirs.ciphertext == b"theirs"

    assert await store.delete_provider_key(USER, "openai")
    assert not await store.delete_provider_key(USER, "openai")
    assert await store.get_provider_key(USER, "openai") is None
    assert await store.get_provider_key(OTHER, "openai") is not None
    assert [k.provider for k in await store.list_provider_keys(USER)] == ["anthropic"]


async def test_concurrent_provider_key_puts_leave_one_row(
    store: FullStore, location: Location
) -> None:
    replica = await location.open()
    try:
        await asyncio.gather(
            *(
                s.put_provider_key(USER, provider_key("openai", f"v{i}".encode()))
                for i, s in enumerate([store, replica] * 5)
            )
        )
        keys = await replica.list_provider_keys(USER)
        assert len(keys) == 1 and keys[0].ciphertext in {f"v{i}".encode() for i in range(10)}
    finally:
        await replica.close()


# -- workspace: model profiles ------------------------------------------------------------


def profile(profile_id: str, model_key: str = "FAST", **kw: Any) -> ModelProfile:
    return ModelProfile(id=profile_id, model_key=model_key, **kw)


async def test_model_profiles_create_get_list(store: FullStore) -> None:
    params = Params(system_prompt="Be brief.", temperature=0.2, max_tokens=100, stop=("END",))
    made, created = await store.create_model_profile(
        USER,
        profile("p1", display_name="Brief", description="short answers", params=params),
        request_id="r1",
    )
    assert created and made.seq > 0 and made.revision == 1
    assert (made.id, made.model_key, made.display_name, made.description) == (
        "p1",
        "FAST",
        "Brief",
        "short answers",
    )
    assert made.params == params and made.create_time_us == made.update_time_us > 0
    assert await store.get_model_profile(USER, "p1") == made
    assert await store.get_model_profile(OTHER, "p1") is None

    again, created = await store.create_model_profile(USER, profile("p-x"), request_id="r1")
    assert not created and again == made
    assert await store.get_model_profile(USER, "p-x") is None
    with pytest.raises(AlreadyExists) as err:
        await store.create_model_profile(OTHER, profile("p1"))
    assert err.value.reason == "MODEL_PROFILE_EXISTS"
    assert err.value.metadata == {"name": "modelProfiles/p1"}

    for i in range(2, 7):
        await store.create_model_profile(USER, profile(f"p{i}"))
    await store.create_model_profile(OTHER, profile("theirs"))
    seen: list[str] = []
    before: int | None = None
    while True:
        page = await store.list_model_profiles(USER, limit=4, before_seq=before)
        seen += [p.id for p in page]
        if len(page) < 4:
            break
        before = page[-1].seq
    assert seen == ["p6", "p5", "p4", "p3", "p2", "p1"]  # newest first
    assert [p.id for p in await store.list_model_profiles(OTHER, limit=9, before_seq=None)] == [
        "theirs"
    ]


async def test_update_model_profile_fields_params_and_etag(store: FullStore) -> None:
    made, _ = await store.create_model_profile(
        USER, profile("p", params=Params(temperature=0.5, top_p=0.9))
    )
    updated = await store.update_model_profile(
        USER,
        "p",
        {"display_name": "New", "description": "d", "model_key": "SMART"},
        expected_etag=made.etag,
    )
    assert updated is not None and updated.revision == 2
    assert (updated.display_name, updated.description, updated.model_key) == ("New", "d", "SMART")
    assert updated.params == made.params and updated.create_time_us == made.create_time_us
    assert await store.get_model_profile(USER, "p") == updated

    merged = await store.update_model_profile(
        USER, "p", {"param_fields": {"temperature": None, "max_tokens": 7}}, expected_etag=None
    )
    assert merged is not None and merged.params == Params(top_p=0.9, max_tokens=7)
    whole = await store.update_model_profile(
        USER, "p", {"params": Params(stop=("a", "b"))}, expected_etag=None
    )
    assert whole is not None and whole.params == Params(stop=("a", "b"))
    assert (await store.get_model_profile(USER, "p") or made).params == Params(stop=("a", "b"))

    with pytest.raises(Aborted) as err:
        await store.update_model_profile(USER, "p", {"description": "x"}, expected_etag=made.etag)
    assert err.value.metadata == {"name": "modelProfiles/p"}
    with pytest.raises(ValueError, match="cannot update"):
        await store.update_model_profile(USER, "p", {"seq": 1}, expected_etag=None)
    assert (
        await store.update_model_profile(OTHER, "p", {"description": "x"}, expected_etag=None)
        is None
    )
    assert (
        await store.update_model_profile(USER, "nope", {"description": "x"}, expected_etag=None)
        is None
    )


# -- workspace: spaces --------------------------------------------------------------------


async def test_spaces_create_get_list_and_count(store: FullStore) -> None:
    made, created = await store.create_space(
        USER, Space("s1", display_name="Work", description="job"), request_id="r1"
    )
    assert created and made.seq > 0 and made.revision == 1
    assert (made.id, made.display_name, made.description, made.default_profile_id) == (
        "s1",
        "Work",
        "job",
        "",
    )
    assert made.profile_ids == [] and made.conversation_count == 0
    assert made.create_time_us == made.update_time_us > 0
    again, created = await store.create_space(USER, Space("s-x", "x"), request_id="r1")
    assert not created and again == made
    with pytest.raises(AlreadyExists) as err:
        await store.create_space(OTHER, Space("s1", "theirs"))
    assert err.value.reason == "SPACE_EXISTS" and err.value.metadata == {"name": "spaces/s1"}

    await thread(store, "a", space_id="s1")
    await thread(store, "b", space_id="s1")
    await thread(store, "c", space_id="")
    got = await store.get_space(USER, "s1")
    assert got is not None and got.conversation_count == 2
    assert replace(got, conversation_count=0) == made
    assert await store.space_exists(USER, "s1")
    assert not await store.space_exists(OTHER, "s1")
    assert not await store.space_exists(USER, "s-x")
    assert await store.get_space(OTHER, "s1") is None

    for i in range(2, 6):
        await store.create_space(USER, Space(f"s{i}", f"S{i}"))
    seen: list[str] = []
    before: int | None = None
    while True:
        page = await store.list_spaces(USER, limit=2, before_seq=before)
        seen += [s.id for s in page]
        if len(page) < 2:
            break
        before = page[-1].seq
    assert seen == ["s5", "s4", "s3", "s2", "s1"]
    assert await store.list_spaces(OTHER, limit=5, before_seq=None) == []


async def test_link_unlink_and_default_profile(store: FullStore) -> None:
    space, _ = await store.create_space(USER, Space("s", "S"))
    for i in (1, 2, 3):
        await store.create_model_profile(USER, profile(f"p{i}"))
    await store.create_model_profile(OTHER, profile("theirs"))

    one = await store.link_model_profile(USER, "s", "p2", make_default=False)
    assert one is not None and one.profile_ids == ["p2"] and one.revision == 2
    two = await store.link_model_profile(USER, "s", "p1", make_default=True)
    assert two is not None and two.profile_ids == ["p2", "p1"]  # link order
    assert two.default_profile_id == "p1" and two.revision == 3
    same = await store.link_model_profile(USER, "s", "p1", make_default=True)
    assert same == two  # linking again changes nothing, not even the etag
    listed = await store.list_spaces(USER, limit=5, before_seq=None)
    assert listed == [two]

    with pytest.raises(NotFound) as missing:
        await store.link_model_profile(USER, "s", "theirs", make_default=False)
    assert missing.value.metadata == {"name": "modelProfiles/theirs"}
    assert await store.link_model_profile(USER, "nope", "p1", make_default=False) is None
    assert await store.link_model_profile(OTHER, "s", "theirs", make_default=False) is None

    with pytest.raises(FailedPrecondition) as err:
        await store.update_space(USER, "s", {"default_profile_id": "p3"}, expected_etag=None)
    assert err.value.reason == "MODEL_PROFILE_NOT_LINKED"
    assert err.value.metadata == {"space": "spaces/s", "model_profile": "modelProfiles/p3"}
    with pytest.raises(NotFound):
        await store.update_space(USER, "s", {"default_profile_id": "theirs"}, expected_etag=None)
    moved = await store.update_space(
        USER, "s", {"default_profile_id": "p2", "display_name": "S2"}, expected_etag=two.etag
    )
    assert moved is not None and moved.default_profile_id == "p2" and moved.display_name == "S2"
    with pytest.raises(Aborted):
        await store.update_space(USER, "s", {"description": "x"}, expected_etag=two.etag)
    cleared = await store.update_space(USER, "s", {"default_profile_id": ""}, expected_etag=None)
    assert cleared is not None and cleared.default_profile_id == ""
    with pytest.raises(ValueError, match="cannot update"):
        await store.update_space(USER, "s", {"user_id": "x"}, expected_etag=None)
    assert await store.update_space(OTHER, "s", {"description": "x"}, expected_etag=None) is None

    await store.link_model_profile(USER, "s", "p2", make_default=True)
    unlinked = await store.unlink_model_profile(USER, "s", "p2")  # the default: cleared
    assert unlinked is not None and unlinked.profile_ids == ["p1"]
    assert unlinked.default_profile_id == ""
    again = await store.unlink_model_profile(USER, "s", "p2")  # not linked: no change
    assert again == unlinked
    with pytest.raises(NotFound):
        await store.unlink_model_profile(USER, "s", "nope")
    assert await store.unlink_model_profile(USER, "nope", "p1") is None
    assert space.revision == 1


async def test_delete_model_profile_updates_the_spaces_linking_it(store: FullStore) -> None:
    await store.create_model_profile(USER, profile("p1"))
    made, _ = await store.create_model_profile(USER, profile("p2"))
    for space_id in ("a", "b", "c"):
        await store.create_space(USER, Space(space_id, space_id))
    await store.link_model_profile(USER, "a", "p1", make_default=False)
    await store.link_model_profile(USER, "a", "p2", make_default=True)
    await store.link_model_profile(USER, "b", "p2", make_default=False)
    await store.link_model_profile(USER, "c", "p1", make_default=True)
    before = {s.id: s for s in await store.list_spaces(USER, limit=9, before_seq=None)}

    with pytest.raises(Aborted):
        await store.delete_model_profile(USER, "p2", expected_etag="stale")
    assert not await store.delete_model_profile(OTHER, "p2", expected_etag=None)
    assert await store.delete_model_profile(USER, "p2", expected_etag=made.etag)
    assert await store.get_model_profile(USER, "p2") is None
    assert not await store.delete_model_profile(USER, "p2", expected_etag=None)

    after = {s.id: s for s in await store.list_spaces(USER, limit=9, before_seq=None)}
    assert (after["a"].profile_ids, after["a"].default_profile_id) == (["p1"], "")
    assert (after["b"].profile_ids, after["b"].default_profile_id) == ([], "")
    assert after["c"] == before["c"]  # untouched, same etag
    assert after["a"].revision == before["a"].revision + 1
    assert after["b"].revision == before["b"].revision + 1


async def test_delete_space_with_conversations_needs_force(store: FullStore) -> None:
    space, _ = await store.create_space(USER, Space("s", "S"))
    await store.create_model_profile(USER, profile("p"))
    await store.link_model_profile(USER, "s", "p", make_default=True)
    inside = await thread(store, "inside", "kept words", space_id="s")
    outside = await thread(store, "outside", space_id="")
    with pytest.raises(FailedPrecondition) as err:
        await store.delete_space(USER, "s", expected_etag=None, force=False)
    assert err.value.reason == "SPACE_NOT_EMPTY"
    assert err.value.metadata == {"name": "spaces/s", "conversation_count": "1"}
    with pytest.raises(Aborted):
        await store.delete_space(USER, "s", expected_etag=space.etag, force=True)
    assert not await store.delete_space(OTHER, "s", expected_etag=None, force=True)

    assert await store.delete_space(USER, "s", expected_etag=None, force=True)
    assert await store.get_space(USER, "s") is None
    assert await store.get_conversation(USER, inside.id) is None
    assert await store.get_conversation(USER, outside.id) is not None
    assert await search(store, "kept") == []
    assert await store.get_model_profile(USER, "p") is not None  # profiles stay
    assert not await store.delete_space(USER, "s", expected_etag=None, force=True)

    empty, _ = await store.create_space(USER, Space("e", "E"))
    assert await store.delete_space(USER, "e", expected_etag=empty.etag, force=False)


async def test_concurrent_workspace_writes_from_two_stores(
    store: FullStore, location: Location
) -> None:
    """Two replicas linking, unlinking, re-defaulting and deleting profiles of the same
    spaces at once: no deadlock, no error, and every default stays a linked profile."""
    replica = await location.open()
    try:
        for i in range(4):
            await store.create_space(USER, Space(f"s{i}", f"S{i}"))
            await store.create_model_profile(USER, profile(f"p{i}"))
        rng = random.Random(3)

        async def churn(s: FullStore, n: int) -> None:
            for _ in range(n):
                space_id, profile_id = f"s{rng.randrange(4)}", f"p{rng.randrange(4)}"
                action = rng.randrange(3)
                if action == 0:
                    await s.link_model_profile(USER, space_id, profile_id, make_default=True)
                elif action == 1:
                    await s.unlink_model_profile(USER, space_id, profile_id)
                else:
                    await s.link_model_profile(USER, space_id, profile_id, make_default=False)

        await asyncio.gather(churn(store, 30), churn(replica, 30), churn(store, 30))
        deleted = await asyncio.gather(
            store.delete_model_profile(USER, "p0", expected_etag=None),
            replica.delete_model_profile(USER, "p0", expected_etag=None),
            replica.link_model_profile(USER, "s1", "p1", make_default=True),
        )
        assert sorted(deleted[:2]) == [False, True]
        for space in await replica.list_spaces(USER, limit=9, before_seq=None):
            assert "p0" not in space.profile_ids
            assert space.default_profile_id in ("", *space.profile_ids), space
        created = await asyncio.gather(
            *(
                s.create_space(USER, Space(f"dup{i}", "D"), request_id="once")
                for i, s in enumerate([store, replica] * 3)
            )
        )
        assert len({sp.id for sp, _ in created}) == 1 and sum(new for _, new in created) == 1
    finally:
        await replica.close()


# -- PostgreSQL only: the search query parser ------------------------------------------


@pytest.mark.parametrize(
    ("query", "tsquery"),
    [
        ("borrowed", "'borrowed'"),
        ('"cannot outlive"', "( 'cannot' <-> 'outlive' )"),
        ("bor*", "'bor':*"),
        ('"with bor"*', "( 'with' <-> 'bor':* )"),
        ("a b OR c", "( 'a' & 'b' | 'c' )"),
        ("a -b", "'a' & !( 'b' )"),
        ("a NOT b", "'a' & !( 'b' )"),
        ("Title:rust*", "'rust':*B"),
        ("content:(x OR y)", "( ( 'x':A | 'y':A ) )"),
        ("it's", "'it''s'"),
        ("x' | 'y", "'x''' & '''y'"),
        ("a\\ b", "'a\\\\' & 'b'"),
        ("a - b ???", "'a' & 'b'"),
    ],
)
def test_parse_search_query_quotes_every_lexeme(query: str, tsquery: str) -> None:
    assert parse_search_query(query) == tsquery


@pytest.mark.parametrize(
    "bad", ["", "???", '"" ""', "NEAR(a b)", "http://x", "title:", "(" * 40 + "a"]
)
def test_parse_search_query_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_search_query(bad)
    assert err.value.violations[0].field == "query"
