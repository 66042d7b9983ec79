"""`Store` on SQLite (aiosqlite): WAL, foreign keys on, a busy timeout.

One connection writes and one reads. WAL lets the reader see every committed write
without waiting for the writer, and one writer connection (behind an asyncio lock)
means write transactions never fight over the database lock inside one process.
Every statement is parameterized; the only SQL text built at run time joins fixed
column names chosen from whitelists.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from byok.server.conversations.model import (
    Conversation,
    Message,
    MessageStatus,
    Role,
    SearchHit,
    Usage,
)
from byok.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from byok.server.filtering import Condition
from byok.server.storage import migrations
from byok.server.storage.base import ImportRecord, User
from byok.server.storage.base import check_etag as _check_etag
from byok.server.storage.sqlite import matches
from byok.server.storage.sqlite.accounts import AccountsMixin
from byok.server.storage.sqlite.base import fetch_all, fetch_one, now_us
from byok.server.storage.sqlite.checkpoint import Checkpointer
from byok.server.storage.sqlite.group_commit import GroupCommit
from byok.server.storage.sqlite.workspace import WorkspaceMixin

CONV_COLS = (
    "c.seq, c.id, c.title, c.metadata, c.space_id, c.pinned, c.archived, c.last_model,"
    " c.message_count, c.prompt_tokens, c.completion_tokens, c.create_time, c.update_time,"
    " c.revision"
)
MSG_COLS = (
    "m.seq, m.id, c.id, m.role, m.content, m.status, m.incomplete_reason, m.model, m.route,"
    " m.prompt_tokens, m.completion_tokens, m.latency_us, m.ttft_us, m.finish_reason,"
    " m.metadata, m.create_time, m.update_time, m.revision"
)
# Filter fields → columns. Nothing outside these maps ever reaches SQL text.
CONVERSATION_COLUMNS = {
    "space": "c.space_id",
    "pinned": "c.pinned",
    "archived": "c.archived",
    "last_model": "c.last_model",
    "create_time": "c.create_time",
    "update_time": "c.update_time",
}
SEARCH_COLUMNS = {"role": "m.role", "space": "c.space_id", "create_time": "m.create_time"}
_OPS = {"=", "!=", "<", "<=", ">", ">="}
READER_CACHE_KIB = 64 * 1024
_CONVERSATION = f"SELECT {CONV_COLS} FROM conversations c WHERE c.id = ? AND c.user_id = ?"
_INSERT_CHUNK = 500  # rows per INSERT (17 parameters each, well under SQLite's limit)


def _where(conditions: Sequence[Condition], columns: Mapping[str, str]) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    for cond in conditions:
        if cond.field not in columns or cond.op not in _OPS:
            raise InvalidArgument.field("filter", f"cannot filter on {cond.field} {cond.op}")
        parts.append(f"{columns[cond.field]} {cond.op} ?")
        params.append(int(cond.value) if isinstance(cond.value, bool) else cond.value)
    return "".join(f" AND {p}" for p in parts), params


def _messages_page(cursor: str, direction: str) -> str:
    """A thread's messages by seq; binds the thread's seq, then the cursor's, then LIMIT."""
    return (
        f"SELECT {MSG_COLS} FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
        f" WHERE m.conversation_seq = ?{cursor} ORDER BY m.seq {direction} LIMIT ?"
    )


def _conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(
        seq=row[0],
        id=row[1],
        title=row[2],
        metadata=json.loads(row[3]),
        space_id=row[4],
        pinned=bool(row[5]),
        archived=bool(row[6]),
        last_model=row[7],
        message_count=row[8],
        usage=Usage(row[9], row[10]),
        create_time_us=row[11],
        update_time_us=row[12],
        revision=row[13],
    )


def _message(row: Sequence[Any]) -> Message:
    return Message(
        seq=row[0],
        id=row[1],
        conversation_id=row[2],
        role=Role(row[3]),
        content=row[4],
        status=MessageStatus(row[5]),
        incomplete_reason=row[6],
        model=row[7],
        route=row[8],
        usage=Usage(row[9], row[10]),
        latency_us=row[11],
        ttft_us=row[12],
        finish_reason=row[13],
        metadata=json.loads(row[14]),
        create_time_us=row[15],
        update_time_us=row[16],
        revision=row[17],
    )


def _insert_conversation(
    db: sqlite3.Connection, user_id: str, conv: Conversation, request_id: str | None
) -> Conversation:
    """Inserts a new thread (on the writer's thread, inside a transaction)."""
    now = now_us()
    try:
        cur = db.execute(
            "INSERT INTO conversations (id, user_id, title, metadata, space_id, pinned,"
            " archived, create_time, update_time, request_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conv.id,
                user_id,
                conv.title,
                json.dumps(conv.metadata),
                conv.space_id,
                int(conv.pinned),
                int(conv.archived),
                now,
                now,
                request_id,
            ),
        )
    except sqlite3.IntegrityError as exc:
        if "FOREIGN KEY" in str(exc):
            raise NotFound(f"no user {user_id!r}", reason="USER_NOT_FOUND") from None
        raise AlreadyExists(
            f"conversations/{conv.id} already exists",
            reason="CONVERSATION_EXISTS",
            metadata={"name": f"conversations/{conv.id}"},
        ) from None
    return Conversation(
        id=conv.id,
        title=conv.title,
        metadata=dict(conv.metadata),
        space_id=conv.space_id,
        pinned=conv.pinned,
        archived=conv.archived,
        create_time_us=now,
        update_time_us=now,
        seq=cur.lastrowid or 0,
    )


def _insert_messages(
    db: sqlite3.Connection,
    conv_seq: int,
    conversation_id: str,
    messages: Sequence[Message],
    request_id: str | None,
) -> list[Message]:
    """Inserts messages and bumps the thread's counters (on the writer's thread, inside
    a transaction). Returns the stored messages."""
    now = now_us()
    last_model = None
    prompt = completion = 0
    # One multi-row INSERT per chunk: the FTS trigger opens a savepoint per
    # statement and FTS5 flushes a segment at each, so one statement per message
    # is ~4x slower in bulk (docs/performance.md).
    rows: list[tuple[Any, ...]] = []
    for msg in messages:
        created = msg.create_time_us or now
        rows.append(
            (
                msg.id,
                conv_seq,
                int(msg.role),
                msg.content,
                int(msg.status),
                msg.incomplete_reason,
                msg.model,
                msg.route,
                msg.usage.prompt_tokens,
                msg.usage.completion_tokens,
                msg.latency_us,
                msg.ttft_us,
                msg.finish_reason,
                json.dumps(msg.metadata),
                created,
                created,
                request_id,
            )
        )
        prompt += msg.usage.prompt_tokens
        completion += msg.usage.completion_tokens
        if msg.role is Role.ASSISTANT and msg.model:
            last_model = msg.model
    seqs: dict[str, int] = {}
    for chunk in range(0, len(rows), _INSERT_CHUNK):
        part = rows[chunk : chunk + _INSERT_CHUNK]
        marks = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
        cur = db.execute(
            "INSERT INTO messages (id, conversation_seq, role, content, status,"
            " incomplete_reason, model, route, prompt_tokens, completion_tokens,"
            " latency_us, ttft_us, finish_reason, metadata, create_time, update_time,"
            f" request_id) VALUES {marks} RETURNING id, seq",
            [value for values in part for value in values],
        )
        seqs.update({r[0]: r[1] for r in cur.fetchall()})
    stored = [
        Message(
            **{
                **msg.__dict__,
                "conversation_id": conversation_id,
                "create_time_us": values[14],
                "update_time_us": values[14],
                "revision": 1,
                "seq": seqs[msg.id],
            }
        )
        for msg, values in zip(messages, rows, strict=True)
    ]
    db.execute(
        "UPDATE conversations SET message_count = message_count + ?,"
        " prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?,"
        " last_model = COALESCE(?, last_model), update_time = ?, revision = revision + 1"
        " WHERE seq = ?",
        (len(messages), prompt, completion, last_model, now, conv_seq),
    )
    return stored


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode survives a killed process; only an OS crash or power
    # loss can drop the last commits (docs/reliability.md).
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


class SqliteStore(AccountsMixin, WorkspaceMixin):
    """Open with `SqliteStore.open(path)`, which also brings the schema to head.

    Conversations live here; accounts (users, API keys, provider keys) and workspaces
    (spaces, model profiles) in their mixins, on the same connections and lock.
    """

    _checkpointer: Checkpointer | None = None

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._commits = GroupCommit(writer)
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout_ms: int = 5000, migrate: bool = True
    ) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            await asyncio.to_thread(migrations.upgrade, migrations.sqlite_url(path))
        writer = await _connect(path, busy_timeout_ms)
        reader = await _connect(path, busy_timeout_ms)
        # Searches touch a few hundred scattered rows and index pages per query: a 64 MiB
        # page cache (SQLite's default is 2 MiB) keeps the recent ones in process.
        await reader.execute(f"PRAGMA cache_size = {-READER_CACHE_KIB}")
        store = cls(path, writer, reader)
        # WAL checkpoints in the background, so that commits need not (checkpoint.py).
        store._checkpointer = await Checkpointer.start(
            path, busy_timeout_ms, lambda: store._commits.jobs
        )
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            await self._checkpointer.close()
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def get_user(self, user_id: str) -> User | None:
        row = await self._one(
            "SELECT id, name, display_name, disabled, create_time FROM users WHERE id = ?",
            (user_id,),
        )
        if row is None:
            return None
        return User(row[0], row[1], row[2], bool(row[3]), row[4])

    # -- conversations ----------------------------------------------------------------

    async def create_conversation(
        self, user_id: str, conv: Conversation, *, request_id: str | None = None
    ) -> tuple[Conversation, bool]:
        """Returns (conversation, created). A known request_id returns the first result."""

        def create(db: sqlite3.Connection) -> tuple[Conversation, bool]:
            if request_id:
                row = db.execute(
                    f"SELECT {CONV_COLS} FROM conversations c WHERE user_id = ? AND request_id = ?",
                    (user_id, request_id),
                ).fetchone()
                if row is not None:
                    return _conversation(row), False
            return _insert_conversation(db, user_id, conv, request_id), True

        return await self._write(create)

    async def create_conversation_with_messages(
        self, user_id: str, conv: Conversation, messages: Sequence[Message]
    ) -> tuple[Conversation, list[Message]]:
        """`create_conversation` then `append_messages`, in one transaction (one thread
        hop): a new chat turn stores its thread and user message before the upstream call."""

        def create(db: sqlite3.Connection) -> tuple[Conversation, list[Message]]:
            created = _insert_conversation(db, user_id, conv, None)
            if not messages:
                return created, []
            stored = _insert_messages(db, created.seq, conv.id, messages, None)
            row = db.execute(
                f"SELECT {CONV_COLS} FROM conversations c WHERE seq = ?", (created.seq,)
            ).fetchone()
            return _conversation(row), stored

        return await self._write(create)

    async def get_conversation(
        self,
        user_id: str,
        conversation_id: str,
        *,
        with_messages: bool = False,
        message_limit: int = 10_000,
    ) -> Conversation | None:
        row = await self._one(_CONVERSATION, (conversation_id, user_id))
        if row is None:
            return None
        conv = _conversation(row)
        if with_messages:
            rows = await self._all(_messages_page("", "ASC"), (conv.seq, message_limit))
            conv.messages = [_message(r) for r in rows]
        return conv

    async def get_thread(
        self, user_id: str, conversation_id: str, *, history_limit: int
    ) -> tuple[Conversation, list[Message]] | None:
        """One job on the reader's thread, both reads in one read transaction: in WAL
        mode its first SELECT fixes the snapshot the second one sees too, so the
        counters of the thread match the history returned."""

        def read(db: sqlite3.Connection) -> tuple[Any, list[Any]] | None:
            db.execute("BEGIN")
            try:
                row = fetch_one(db, _CONVERSATION, (conversation_id, user_id))
                if row is None:
                    return None
                return row, fetch_all(db, _messages_page("", "DESC"), (row[0], history_limit))
            finally:
                db.execute("COMMIT")  # a read: nothing to write, the snapshot is released

        found = await self._read(read)
        if found is None:
            return None
        row, rows = found
        return _conversation(row), [_message(r) for r in reversed(rows)]

    async def list_conversations(
        self,
        user_id: str,
        conditions: Sequence[Condition],
        *,
        order_field: str,
        descending: bool,
        limit: int,
        cursor: Sequence[int] | None,
    ) -> list[Conversation]:
        """Keyset page ordered by (order_field, seq); cursor is the last (time, seq)."""
        column = {"update_time": "c.update_time", "create_time": "c.create_time"}[order_field]
        where, params = _where(conditions, CONVERSATION_COLUMNS)
        direction, compare = ("DESC", "<") if descending else ("ASC", ">")
        if cursor is not None:
            where += f" AND ({column}, c.seq) {compare} (?, ?)"
            params += [int(cursor[0]), int(cursor[1])]
        rows = await self._all(
            f"SELECT {CONV_COLS} FROM conversations c WHERE c.user_id = ?{where}"
            f" ORDER BY {column} {direction}, c.seq {direction} LIMIT ?",
            (user_id, *params, limit),
        )
        return [_conversation(r) for r in rows]

    async def update_conversation(
        self,
        user_id: str,
        conversation_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Conversation | None:
        columns = {"title", "metadata", "pinned", "archived", "space_id"}
        async with self._tx() as db:
            async with db.execute(
                "SELECT revision FROM conversations WHERE id = ? AND user_id = ?",
                (conversation_id, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            _check_etag(expected_etag, conversation_id, row[0], f"conversations/{conversation_id}")
            sets = ["update_time = ?", "revision = revision + 1"]
            params: list[Any] = [now_us()]
            for key, value in changes.items():
                if key not in columns:
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = ?")
                params.append(
                    json.dumps(value)
                    if key == "metadata"
                    else int(value)
                    if isinstance(value, bool)
                    else value
                )
            await db.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = ? AND user_id = ?",
                (*params, conversation_id, user_id),
            )
            async with db.execute(
                f"SELECT {CONV_COLS} FROM conversations c WHERE c.id = ?", (conversation_id,)
            ) as cur:
                return _conversation(await cur.fetchone())  # type: ignore[arg-type]

    async def delete_conversation(
        self, user_id: str, conversation_id: str, *, expected_etag: str | None, force: bool
    ) -> bool:
        async with self._tx() as db:
            async with db.execute(
                "SELECT revision, pinned FROM conversations WHERE id = ? AND user_id = ?",
                (conversation_id, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            name = f"conversations/{conversation_id}"
            _check_etag(expected_etag, conversation_id, row[0], name)
            if row[1] and not force:
                raise FailedPrecondition(
                    f"{name} is pinned; unpin it or delete with force",
                    reason="CONVERSATION_PINNED",
                    metadata={"name": name},
                )
            await db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return True

    # -- messages ---------------------------------------------------------------------

    async def append_messages(
        self,
        user_id: str,
        conversation_id: str,
        messages: Sequence[Message],
        *,
        request_id: str | None = None,
    ) -> list[Message] | None:
        """Appends in one transaction and updates the thread's counters; None if no thread.

        With a request_id (single message), a retry returns the message first stored.
        """

        def append(db: sqlite3.Connection) -> list[Message] | None:
            row = db.execute(
                "SELECT seq FROM conversations WHERE id = ? AND user_id = ?",
                (conversation_id, user_id),
            ).fetchone()
            if row is None:
                return None
            conv_seq = row[0]
            if request_id:
                existing = db.execute(
                    f"SELECT {MSG_COLS} FROM messages m JOIN conversations c"
                    " ON c.seq = m.conversation_seq"
                    " WHERE m.conversation_seq = ? AND m.request_id = ?",
                    (conv_seq, request_id),
                ).fetchone()
                if existing is not None:
                    return [_message(existing)]
            return _insert_messages(db, conv_seq, conversation_id, messages, request_id)

        return await self._write(append)

    async def get_message(
        self, user_id: str, conversation_id: str, message_id: str
    ) -> Message | None:
        row = await self._one(
            f"SELECT {MSG_COLS} FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
            " WHERE m.id = ? AND c.id = ? AND c.user_id = ?",
            (message_id, conversation_id, user_id),
        )
        return _message(row) if row else None

    async def list_messages(
        self,
        user_id: str,
        conversation_id: str,
        *,
        descending: bool,
        limit: int,
        after_seq: int | None,
    ) -> list[Message] | None:
        """A keyset page of a thread's messages; None if the thread does not exist."""
        row = await self._one(
            "SELECT seq FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
        )
        if row is None:
            return None
        direction, compare = ("DESC", "<") if descending else ("ASC", ">")
        cursor = f" AND m.seq {compare} ?" if after_seq is not None else ""
        params: list[Any] = [row[0]] + ([after_seq] if after_seq is not None else [])
        rows = await self._all(_messages_page(cursor, direction), (*params, limit))
        return [_message(r) for r in rows]

    async def update_message(
        self,
        user_id: str,
        conversation_id: str,
        message_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Message | None:
        async with self._tx() as db:
            async with db.execute(
                "SELECT m.revision, m.conversation_seq FROM messages m JOIN conversations c"
                " ON c.seq = m.conversation_seq WHERE m.id = ? AND c.id = ? AND c.user_id = ?",
                (message_id, conversation_id, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            name = f"conversations/{conversation_id}/messages/{message_id}"
            _check_etag(expected_etag, message_id, row[0], name)
            now = now_us()
            sets = ["update_time = ?", "revision = revision + 1"]
            params: list[Any] = [now]
            for key, value in changes.items():
                if key not in ("content", "metadata"):
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = ?")
                params.append(json.dumps(value) if key == "metadata" else value)
            await db.execute(
                f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*params, message_id)
            )
            await db.execute(
                "UPDATE conversations SET update_time = ?, revision = revision + 1 WHERE seq = ?",
                (now, row[1]),
            )
            async with db.execute(
                f"SELECT {MSG_COLS} FROM messages m JOIN conversations c"
                " ON c.seq = m.conversation_seq WHERE m.id = ?",
                (message_id,),
            ) as cur:
                return _message(await cur.fetchone())  # type: ignore[arg-type]

    async def delete_message(
        self, user_id: str, conversation_id: str, message_id: str, *, expected_etag: str | None
    ) -> bool:
        async with self._tx() as db:
            async with db.execute(
                "SELECT m.revision, m.conversation_seq, m.prompt_tokens, m.completion_tokens"
                " FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
                " WHERE m.id = ? AND c.id = ? AND c.user_id = ?",
                (message_id, conversation_id, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            name = f"conversations/{conversation_id}/messages/{message_id}"
            _check_etag(expected_etag, message_id, row[0], name)
            await db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            await db.execute(
                "UPDATE conversations SET message_count = message_count - 1,"
                " prompt_tokens = prompt_tokens - ?, completion_tokens = completion_tokens - ?,"
                " update_time = ?, revision = revision + 1 WHERE seq = ?",
                (row[2], row[3], now_us(), row[1]),
            )
            return True

    # -- search -----------------------------------------------------------------------

    def _search_base(
        self,
        user_id: str,
        conversation_id: str | None,
        conditions: Sequence[Condition],
        join: str = "",
    ) -> tuple[str, list[Any]]:
        where, params = _where(conditions, SEARCH_COLUMNS)
        if conversation_id is not None:
            where += " AND c.id = ?"
            params.append(conversation_id)
        base = (
            "FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
            f" JOIN conversations c ON c.seq = m.conversation_seq{join}"
            f" WHERE messages_fts MATCH ? AND c.user_id = ?{where}"
        )
        return base, [user_id, *params]

    async def search_newest(
        self,
        user_id: str,
        query: str,
        *,
        conversation_id: str | None,
        conditions: Sequence[Condition],
        limit: int,
        before_seq: int | None,
    ) -> list[SearchHit]:
        """Every match, newest stored first (FTS5 walks its rowids backwards and stops)."""
        base, params = self._search_base(user_id, conversation_id, conditions)
        after = " AND messages_fts.rowid < ?" if before_seq is not None else ""
        extra = [before_seq] if before_seq is not None else []
        try:
            rows = await self._all(
                f"SELECT {MSG_COLS}, c.title {base}{after}"
                " ORDER BY messages_fts.rowid DESC LIMIT ?",
                (query, *params, *extra, limit),
            )
        except sqlite3.OperationalError as exc:
            raise _query_error(exc) from None
        query_phrases = matches.phrases(query)
        return [
            SearchHit(_message(r), r[18], matches.best_snippet(r[4], r[18], query_phrases), 0.0)
            for r in rows
        ]

    async def search_snapshot(self) -> int:
        """The newest message seq: matches after it are not part of a ranked result."""
        row = await self._one("SELECT COALESCE(MAX(seq), 0) FROM messages")
        return int(row[0])

    async def search_rank(
        self,
        user_id: str,
        query: str,
        *,
        conversation_id: str | None,
        conditions: Sequence[Condition],
        snapshot: int,
        window: int,
    ) -> list[tuple[int, float]]:
        """(seq, score) of the newest `window` matches up to `snapshot`, best first.

        Ranking only a bounded window keeps a very common word as cheap as a rare one;
        the scoring is `matches.rank` (FTS5's bm25 without its pass over every match).
        """
        base, params = self._search_base(
            user_id,
            conversation_id,
            conditions,
            " LEFT JOIN messages_fts_docsize d ON d.id = messages_fts.rowid",
        )
        query_phrases = matches.phrases(query)

        def window_and_statistics(
            db: sqlite3.Connection,
        ) -> tuple[list[matches.Candidate], int, float, list[float]]:
            rows = fetch_all(
                db,
                f"SELECT messages_fts.rowid, m.content, c.title, d.sz {base}"
                " AND messages_fts.rowid <= ? ORDER BY messages_fts.rowid DESC LIMIT ?",
                (query, *params, snapshot, window),
            )
            if not rows:
                return [], 0, 1.0, []
            totals = fetch_one(db, "SELECT block FROM messages_fts_data WHERE id = 1")
            counts = matches.varints(totals[0]) if totals and totals[0] else []
            documents = counts[0] if counts else len(rows)
            average = sum(counts[1:]) / documents if len(counts) > 1 and documents else 1.0
            if len(query_phrases) == 1:
                # One phrase: its IDF scales every score alike, so the window's own
                # density is estimate enough (no second pass over the index).
                oldest = rows[-1][0]
                dfs = [matches.estimated_df(len(rows), oldest, snapshot, documents, window)]
            else:
                dfs = [
                    _document_frequency(db, phrase, snapshot, documents, len(rows))
                    for phrase in query_phrases
                ]
            return rows, documents, average, dfs

        try:
            rows, documents, average, dfs = await self._read(window_and_statistics)
        except sqlite3.OperationalError as exc:
            raise _query_error(exc) from None
        if not rows:
            return []
        return matches.rank(rows, query_phrases, dfs, documents, average)

    async def search_hits(
        self, user_id: str, query: str, ranked: Sequence[tuple[int, float]]
    ) -> list[SearchHit]:
        """The messages (with snippets) of already ranked seqs, in the given order.

        Plain lookups by seq, with the snippets cut from the text in Python: asking FTS5
        (`messages_fts MATCH ? AND rowid IN (...)`) evaluates the query once per seq.
        Messages deleted or edited out of the result since the ranking are left out: a
        plain query (words, phrases, prefixes) is checked against the text here, any
        other by FTS5.
        """
        if not ranked:
            return []
        seqs = [seq for seq, _ in ranked]
        marks = ",".join("?" * len(seqs))
        plain = matches.plain_phrases(query)

        def fetch(db: sqlite3.Connection) -> dict[int, Any]:
            rows = fetch_all(
                db,
                f"SELECT {MSG_COLS}, c.title FROM messages m"
                " CROSS JOIN conversations c ON c.seq = m.conversation_seq"
                f" WHERE m.seq IN ({marks}) AND c.user_id = ?",
                (*seqs, user_id),
            )
            if plain is not None:
                return {r[0]: r for r in rows if matches.contains_all(r[4], r[18], plain)}
            still = fetch_all(
                db,
                f"SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? AND rowid IN ({marks})",
                (query, *seqs),
            )
            kept = {r[0] for r in still}
            return {r[0]: r for r in rows if r[0] in kept}

        by_seq = await self._read(fetch)
        query_phrases = plain if plain is not None else matches.phrases(query)
        return [
            SearchHit(
                _message(row),
                row[18],
                matches.best_snippet(row[4], row[18], query_phrases),
                score,
            )
            for seq, score in ranked
            if (row := by_seq.get(seq)) is not None
        ]

    # -- export / import --------------------------------------------------------------

    async def export_conversations(
        self, user_id: str, conversation_ids: Sequence[str] | None
    ) -> AsyncIterator[Conversation]:
        """Every (or the named) conversation with its messages, one at a time."""
        if conversation_ids is None:
            rows = await self._all(
                "SELECT id FROM conversations WHERE user_id = ? ORDER BY seq", (user_id,)
            )
            conversation_ids = [r[0] for r in rows]
        for conversation_id in conversation_ids:
            conv = await self.get_conversation(
                user_id, conversation_id, with_messages=True, message_limit=-1
            )
            if conv is not None:
                yield conv

    async def import_conversation(
        self, user_id: str, record: ImportRecord, *, space_id: str, new_id: str
    ) -> tuple[str, bool]:
        """Stores one imported thread in one transaction. Returns (id, created);
        a thread whose source_key (or preferred id) the user already has is skipped."""
        async with self._tx() as db:
            async with db.execute(
                "SELECT id FROM conversations WHERE user_id = ? AND (source_key = ? OR id = ?)",
                (user_id, record.source_key, record.preferred_id or ""),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                return str(row[0]), False
            conversation_id = new_id
            if record.preferred_id:
                async with db.execute(
                    "SELECT 1 FROM conversations WHERE id = ?", (record.preferred_id,)
                ) as cur:
                    if await cur.fetchone() is None:
                        conversation_id = record.preferred_id
            now = now_us()
            prompt = sum(m.usage.prompt_tokens for m in record.messages)
            completion = sum(m.usage.completion_tokens for m in record.messages)
            last_model = next(
                (
                    m.model
                    for m in reversed(record.messages)
                    if m.role is Role.ASSISTANT and m.model
                ),
                "",
            )
            cur = await db.execute(
                "INSERT INTO conversations (id, user_id, title, metadata, space_id, pinned,"
                " archived, last_model, message_count, prompt_tokens, completion_tokens,"
                " create_time,"
                " update_time, source_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    user_id,
                    record.title,
                    json.dumps(record.metadata),
                    space_id,
                    int(record.pinned),
                    int(record.archived),
                    last_model,
                    len(record.messages),
                    prompt,
                    completion,
                    record.create_time_us or now,
                    record.update_time_us or now,
                    record.source_key,
                ),
            )
            conv_seq = cur.lastrowid
            await db.executemany(
                "INSERT INTO messages (id, conversation_seq, role, content, status,"
                " incomplete_reason, model, route, prompt_tokens, completion_tokens, latency_us,"
                " ttft_us, finish_reason, metadata, create_time, update_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.id,
                        conv_seq,
                        int(m.role),
                        m.content,
                        int(m.status),
                        m.incomplete_reason,
                        m.model,
                        m.route,
                        m.usage.prompt_tokens,
                        m.usage.completion_tokens,
                        m.latency_us,
                        m.ttft_us,
                        m.finish_reason,
                        json.dumps(m.metadata),
                        m.create_time_us or now,
                        m.create_time_us or now,
                    )
                    for m in record.messages
                ],
            )
            return conversation_id, True


def _document_frequency(
    db: sqlite3.Connection, phrase: matches.Phrase, newest: int, documents: int, fallback: int
) -> float:
    """How many messages hold the phrase, bounded in cost (see `matches`)."""
    try:
        if len(phrase.tokens) == 1:
            counted, oldest = fetch_one(
                db,
                "SELECT count(*), min(rowid) FROM (SELECT rowid FROM messages_fts"
                " WHERE messages_fts MATCH ? ORDER BY rowid DESC LIMIT ?)",
                (phrase.fts_query(), matches.DF_EXACT_LIMIT),
            )
            return matches.estimated_df(counted, oldest, newest, documents)
        (counted,) = fetch_one(
            db,
            "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ? AND rowid > ?",
            (phrase.fts_query(), newest - matches.PHRASE_SAMPLE_ROWS),
        )
        return matches.sampled_df(counted, documents)
    except sqlite3.OperationalError:  # a token the index reads differently
        return float(fallback)


def _query_error(exc: sqlite3.OperationalError) -> InvalidArgument:
    text = str(exc)
    if any(m in text for m in ("fts5", "no such column", "unterminated", "special query")):
        detail = text.removeprefix("fts5: ")
        return InvalidArgument.field(
            "query", f"is not a valid search query ({detail}); see docs/search.md"
        )
    raise exc
