"""`Store` on PostgreSQL (asyncpg): a connection pool, one transaction per write.

Several replicas may share the database, so every write that reads before it writes
locks the conversation row first (`SELECT ... FOR UPDATE`): appends, edits and deletes of
one thread are serialized across processes, counters stay exact, and messages get their
`seq` (a BIGSERIAL, the paging key) in commit order within a thread. Locks are always
taken conversation first, then its messages, so writers never deadlock.

Every statement is parameterized (`$n`); the only SQL text built at run time joins
fixed column names chosen from whitelists. Search queries are parsed here into tsquery
text, which travels as a bind parameter to `to_tsquery` (see `parse_search_query`).

Accounts and workspaces live in their mixins (`accounts.py`, `workspace.py`), on the
pool and transactions of `base.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from byok.server.conversations.model import (
    Conversation,
    Message,
    MessageStatus,
    Role,
    SearchHit,
    Usage,
)
from byok.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from byok.server.filtering import Condition
from byok.server.storage import migrations
from byok.server.storage.base import ImportRecord, User
from byok.server.storage.base import check_etag as _check_etag
from byok.server.storage.postgres.accounts import AccountsMixin
from byok.server.storage.postgres.base import (
    _Args,
    asyncpg_dsn,
    create_pool,
    now_us,
)
from byok.server.storage.postgres.workspace import WorkspaceMixin

if TYPE_CHECKING:
    from byok.server.storage.postgres.base import Connection

__all__ = ["PostgresStore", "asyncpg_dsn", "parse_search_query"]

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
_MSG_WIDTH = len(MSG_COLS.split(","))
MSG_INSERT_COLS = (
    "id, conversation_seq, role, content, status, incomplete_reason, model, route,"
    " prompt_tokens, completion_tokens, latency_us, ttft_us, finish_reason, metadata,"
    " create_time, update_time, request_id"
)
MSG_INSERT = (
    f"INSERT INTO messages ({MSG_INSERT_COLS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
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
CONVERSATION_MUTABLE = {"title", "metadata", "pinned", "archived", "space_id"}
MESSAGE_MUTABLE = {"content", "metadata"}
_OPS = {"=", "!=", "<", "<=", ">", ">="}

# ts_rank_cd weights {D, C, B, A}: content is A, the thread title B. A word in the
# message counts more than the same word in the title (as bm25 1.0/0.3 on SQLite).
# Normalization 1 divides by 1 + log(length), so long texts do not win by size alone.
_RANK = "ts_rank_cd('{{0.1, 0.2, 0.3, 1.0}}'::float4[], m.search_tsv, {q}, 1)"
# Private-use marks stand for the `[` `]` of a snippet until we know where the snippet
# sits in its text (for the … ends); the text itself may contain brackets.
_START, _STOP = "\ue000", "\ue001"
_HEADLINE_OPTIONS = f"StartSel={_START}, StopSel={_STOP}, MaxWords=16, MinWords=8"
_SNIPPET = (
    "CASE WHEN ts_filter(m.search_tsv, '{{a}}') @@ {q}"
    " OR NOT ts_filter(m.search_tsv, '{{b}}') @@ {q}"
    " THEN ts_headline('simple', m.content, {q}, {opts})"
    " ELSE ts_headline('simple', c.title, {q}, {opts}) END,"
    " ts_filter(m.search_tsv, '{{a}}') @@ {q} OR NOT ts_filter(m.search_tsv, '{{b}}') @@ {q}"
)


def _where(conditions: Sequence[Condition], columns: Mapping[str, str], args: _Args) -> str:
    parts: list[str] = []
    for cond in conditions:
        if cond.field not in columns or cond.op not in _OPS:
            raise InvalidArgument.field("filter", f"cannot filter on {cond.field} {cond.op}")
        parts.append(f" AND {columns[cond.field]} {cond.op} {args(cond.value)}")
    return "".join(parts)


def _conversation(row: asyncpg.Record | tuple[Any, ...]) -> Conversation:
    return Conversation(
        seq=row[0],
        id=row[1],
        title=row[2],
        metadata=row[3],
        space_id=row[4],
        pinned=row[5],
        archived=row[6],
        last_model=row[7],
        message_count=row[8],
        usage=Usage(row[9], row[10]),
        create_time_us=row[11],
        update_time_us=row[12],
        revision=row[13],
    )


def _message(row: asyncpg.Record) -> Message:
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
        metadata=row[14],
        create_time_us=row[15],
        update_time_us=row[16],
        revision=row[17],
    )


def _message_values(
    msg: Message, conv_seq: int, created: int, request_id: str | None
) -> tuple[Any, ...]:
    return (
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
        dict(msg.metadata),
        created,
        created,
        request_id,
    )


async def _insert_messages(
    db: Connection,
    conv_seq: int,
    conversation_id: str,
    messages: Sequence[Message],
    request_id: str | None,
) -> tuple[list[Message], asyncpg.Record]:
    """Inserts messages into a thread whose row the transaction owns (locked or just
    created) and bumps its counters; returns the stored messages and the thread's row."""
    now = now_us()
    stored: list[Message] = []
    last_model = None
    prompt = completion = 0
    for msg in messages:
        created = msg.create_time_us or now
        seq = await db.fetchval(
            MSG_INSERT + " RETURNING seq",
            *_message_values(msg, conv_seq, created, request_id),
        )
        prompt += msg.usage.prompt_tokens
        completion += msg.usage.completion_tokens
        if msg.role is Role.ASSISTANT and msg.model:
            last_model = msg.model
        stored.append(
            Message(
                **{
                    **msg.__dict__,
                    "conversation_id": conversation_id,
                    "create_time_us": created,
                    "update_time_us": created,
                    "revision": 1,
                    "seq": seq,
                }
            )
        )
    row = await db.fetchrow(
        "UPDATE conversations AS c SET message_count = message_count + $1,"
        " prompt_tokens = prompt_tokens + $2, completion_tokens = completion_tokens + $3,"
        " last_model = COALESCE($4, last_model), update_time = $5,"
        f" revision = revision + 1 WHERE seq = $6 RETURNING {CONV_COLS}",
        len(messages),
        prompt,
        completion,
        last_model,
        now,
        conv_seq,
    )
    assert row is not None
    return stored, row


async def _insert_conversation(
    db: Connection, user_id: str, conv: Conversation, request_id: str | None
) -> asyncpg.Record:
    """Inserts a new thread and returns its row; the caller maps constraint errors."""
    now = now_us()
    row = await db.fetchrow(
        "INSERT INTO conversations AS c (id, user_id, title, metadata, space_id,"
        " pinned, archived, create_time, update_time, request_id)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING {CONV_COLS}",
        conv.id,
        user_id,
        conv.title,
        dict(conv.metadata),
        conv.space_id,
        conv.pinned,
        conv.archived,
        now,
        request_id,
    )
    assert row is not None
    return row


def _conversation_exists(conversation_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"conversations/{conversation_id} already exists",
        reason="CONVERSATION_EXISTS",
        metadata={"name": f"conversations/{conversation_id}"},
    )


class PostgresStore(AccountsMixin, WorkspaceMixin):
    """Open with `PostgresStore.open(url)`, which also brings the schema to head.

    Conversations live here; accounts (users, API keys, provider keys) and workspaces
    (spaces, model profiles) in their mixins, on the same pool.
    """

    def __init__(self, url: str, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.url = url
        self._pool = pool
        self._closed = False
        self._queries: dict[str, str] = {}  # checked search query → tsquery text

    @classmethod
    async def open(
        cls, url: str, *, min_size: int = 1, max_size: int = 10, migrate: bool = True
    ) -> PostgresStore:
        if migrate:
            # yoyo is synchronous; it takes the advisory lock, so replicas take turns.
            await asyncio.to_thread(migrations.upgrade, url, "postgres")
        return cls(url, await create_pool(url, min_size=min_size, max_size=max_size))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def database_size(self) -> int:
        """Bytes on disk of this database (for the byok_db_size_bytes metric)."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT pg_database_size(current_database())"))

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    # -- users ------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> User | None:
        row = await self._pool.fetchrow(
            "SELECT id, name, display_name, disabled, create_time FROM users WHERE id = $1",
            user_id,
        )
        if row is None:
            return None
        return User(row[0], row[1], row[2], row[3], row[4])

    # -- conversations ----------------------------------------------------------------

    async def create_conversation(
        self, user_id: str, conv: Conversation, *, request_id: str | None = None
    ) -> tuple[Conversation, bool]:
        """Returns (conversation, created). A known request_id returns the first result."""
        select = f"SELECT {CONV_COLS} FROM conversations c WHERE user_id = $1 AND request_id = $2"
        try:
            async with self._tx() as db:
                if request_id:
                    row = await db.fetchrow(select, user_id, request_id)
                    if row is not None:
                        return _conversation(row), False
                row = await _insert_conversation(db, user_id, conv, request_id)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "conversations_by_request":
                # Another replica stored the same request first: that is the result.
                row = await self._pool.fetchrow(select, user_id, request_id)
                if row is not None:
                    return _conversation(row), False
            raise _conversation_exists(conv.id) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"no user {user_id!r}", reason="USER_NOT_FOUND") from None
        assert row is not None
        return _conversation(row), True

    async def create_conversation_with_messages(
        self, user_id: str, conv: Conversation, messages: Sequence[Message]
    ) -> tuple[Conversation, list[Message]]:
        """`create_conversation` then `append_messages`, in one transaction: a new chat
        turn stores its thread and user message before the upstream call. The new row
        is not visible to anyone else before the commit, so no lock is needed."""
        try:
            async with self._tx() as db:
                row = await _insert_conversation(db, user_id, conv, None)
                if not messages:
                    return _conversation(row), []
                stored, row = await _insert_messages(db, row[0], conv.id, messages, None)
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name != "conversations":
                raise
            raise _conversation_exists(conv.id) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"no user {user_id!r}", reason="USER_NOT_FOUND") from None
        return _conversation(row), stored

    async def get_conversation(
        self,
        user_id: str,
        conversation_id: str,
        *,
        with_messages: bool = False,
        message_limit: int = 10_000,
    ) -> Conversation | None:
        select = f"SELECT {CONV_COLS} FROM conversations c WHERE c.id = $1 AND c.user_id = $2"
        if not with_messages:
            row = await self._pool.fetchrow(select, conversation_id, user_id)
            return _conversation(row) if row else None
        # One snapshot for both reads, so the counters match the messages returned.
        async with (
            self._pool.acquire() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await db.fetchrow(select, conversation_id, user_id)
            if row is None:
                return None
            conv = _conversation(row)
            rows = await db.fetch(
                f"SELECT {MSG_COLS} FROM messages m"
                " JOIN conversations c ON c.seq = m.conversation_seq"
                " WHERE m.conversation_seq = $1 ORDER BY m.seq LIMIT $2",
                conv.seq,
                message_limit if message_limit >= 0 else None,  # LIMIT NULL: all
            )
        conv.messages = [_message(r) for r in rows]
        return conv

    async def get_thread(
        self, user_id: str, conversation_id: str, *, history_limit: int
    ) -> tuple[Conversation, list[Message]] | None:
        """One statement, so one round trip and one snapshot: each of the newest messages
        beside the thread's columns, or the thread alone (NULL message) when it has none."""
        rows = await self._pool.fetch(
            f"SELECT {MSG_COLS}, {CONV_COLS} FROM conversations c"
            " LEFT JOIN LATERAL (SELECT * FROM messages m WHERE m.conversation_seq = c.seq"
            " ORDER BY m.seq DESC LIMIT $3) m ON TRUE"
            " WHERE c.id = $1 AND c.user_id = $2 ORDER BY m.seq",
            conversation_id,
            user_id,
            history_limit,
        )
        if not rows:
            return None
        messages = [_message(r) for r in rows if r[0] is not None]
        return _conversation(rows[0][_MSG_WIDTH:]), messages

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
        args = _Args(user_id)
        where = _where(conditions, CONVERSATION_COLUMNS, args)
        direction, compare = ("DESC", "<") if descending else ("ASC", ">")
        if cursor is not None:
            where += (
                f" AND ({column}, c.seq) {compare} ({args(int(cursor[0]))}, {args(int(cursor[1]))})"
            )
        rows = await self._pool.fetch(
            f"SELECT {CONV_COLS} FROM conversations c WHERE c.user_id = $1{where}"
            f" ORDER BY {column} {direction}, c.seq {direction} LIMIT {args(limit)}",
            *args.values,
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
        async with self._tx() as db:
            revision = await db.fetchval(
                "SELECT revision FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE",
                conversation_id,
                user_id,
            )
            if revision is None:
                return None
            _check_etag(
                expected_etag, conversation_id, revision, f"conversations/{conversation_id}"
            )
            args = _Args(conversation_id, user_id)
            sets = [f"update_time = {args(now_us())}", "revision = revision + 1"]
            for key, value in changes.items():
                if key not in CONVERSATION_MUTABLE:
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = {args(dict(value) if key == 'metadata' else value)}")
            row = await db.fetchrow(
                f"UPDATE conversations AS c SET {', '.join(sets)}"
                f" WHERE c.id = $1 AND c.user_id = $2 RETURNING {CONV_COLS}",
                *args.values,
            )
            assert row is not None
            return _conversation(row)

    async def delete_conversation(
        self, user_id: str, conversation_id: str, *, expected_etag: str | None, force: bool
    ) -> bool:
        async with self._tx() as db:
            row = await db.fetchrow(
                "SELECT seq, revision, pinned FROM conversations"
                " WHERE id = $1 AND user_id = $2 FOR UPDATE",
                conversation_id,
                user_id,
            )
            if row is None:
                return False
            name = f"conversations/{conversation_id}"
            _check_etag(expected_etag, conversation_id, row[1], name)
            if row[2] and not force:
                raise FailedPrecondition(
                    f"{name} is pinned; unpin it or delete with force",
                    reason="CONVERSATION_PINNED",
                    metadata={"name": name},
                )
            await db.execute("DELETE FROM conversations WHERE seq = $1", row[0])
            return True

    # -- messages ---------------------------------------------------------------------

    @staticmethod
    async def _lock_conversation(db: Connection, user_id: str, conversation_id: str) -> int | None:
        """The thread's seq, its row locked until the transaction ends; None if no thread."""
        seq: int | None = await db.fetchval(
            "SELECT seq FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE",
            conversation_id,
            user_id,
        )
        return seq

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
        async with self._tx() as db:
            conv_seq = await self._lock_conversation(db, user_id, conversation_id)
            if conv_seq is None:
                return None
            if request_id:
                # The row lock makes a concurrent retry wait, then see the first message.
                existing = await db.fetchrow(
                    f"SELECT {MSG_COLS} FROM messages m JOIN conversations c"
                    " ON c.seq = m.conversation_seq"
                    " WHERE m.conversation_seq = $1 AND m.request_id = $2",
                    conv_seq,
                    request_id,
                )
                if existing is not None:
                    return [_message(existing)]
            stored, _ = await _insert_messages(db, conv_seq, conversation_id, messages, request_id)
            return stored

    async def get_message(
        self, user_id: str, conversation_id: str, message_id: str
    ) -> Message | None:
        row = await self._pool.fetchrow(
            f"SELECT {MSG_COLS} FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
            " WHERE m.id = $1 AND c.id = $2 AND c.user_id = $3",
            message_id,
            conversation_id,
            user_id,
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
        conv_seq = await self._pool.fetchval(
            "SELECT seq FROM conversations WHERE id = $1 AND user_id = $2",
            conversation_id,
            user_id,
        )
        if conv_seq is None:
            return None
        args = _Args(conv_seq)
        direction, compare = ("DESC", "<") if descending else ("ASC", ">")
        cursor = f" AND m.seq {compare} {args(after_seq)}" if after_seq is not None else ""
        rows = await self._pool.fetch(
            f"SELECT {MSG_COLS} FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
            f" WHERE m.conversation_seq = $1{cursor} ORDER BY m.seq {direction}"
            f" LIMIT {args(limit)}",
            *args.values,
        )
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
            conv_seq = await self._lock_conversation(db, user_id, conversation_id)
            if conv_seq is None:
                return None
            revision = await db.fetchval(
                "SELECT revision FROM messages WHERE id = $1 AND conversation_seq = $2",
                message_id,
                conv_seq,
            )
            if revision is None:
                return None
            name = f"conversations/{conversation_id}/messages/{message_id}"
            _check_etag(expected_etag, message_id, revision, name)
            now = now_us()
            args = _Args(message_id, conv_seq, now)
            sets = ["update_time = $3", "revision = revision + 1"]
            for key, value in changes.items():
                if key not in MESSAGE_MUTABLE:
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = {args(dict(value) if key == 'metadata' else value)}")
            await db.execute(
                f"UPDATE messages SET {', '.join(sets)} WHERE id = $1 AND conversation_seq = $2",
                *args.values,
            )
            await db.execute(
                "UPDATE conversations SET update_time = $1, revision = revision + 1 WHERE seq = $2",
                now,
                conv_seq,
            )
            row = await db.fetchrow(
                f"SELECT {MSG_COLS} FROM messages m JOIN conversations c"
                " ON c.seq = m.conversation_seq WHERE m.id = $1",
                message_id,
            )
            assert row is not None
            return _message(row)

    async def delete_message(
        self, user_id: str, conversation_id: str, message_id: str, *, expected_etag: str | None
    ) -> bool:
        async with self._tx() as db:
            conv_seq = await self._lock_conversation(db, user_id, conversation_id)
            if conv_seq is None:
                return False
            row = await db.fetchrow(
                "SELECT revision, prompt_tokens, completion_tokens FROM messages"
                " WHERE id = $1 AND conversation_seq = $2",
                message_id,
                conv_seq,
            )
            if row is None:
                return False
            name = f"conversations/{conversation_id}/messages/{message_id}"
            _check_etag(expected_etag, message_id, row[0], name)
            await db.execute("DELETE FROM messages WHERE id = $1", message_id)
            await db.execute(
                "UPDATE conversations SET message_count = message_count - 1,"
                " prompt_tokens = prompt_tokens - $1, completion_tokens = completion_tokens - $2,"
                " update_time = $3, revision = revision + 1 WHERE seq = $4",
                row[1],
                row[2],
                now_us(),
                conv_seq,
            )
            return True

    # -- search -----------------------------------------------------------------------

    async def _tsquery(self, query: str) -> str:
        """The tsquery text of a search query; InvalidArgument(query) if it cannot search."""
        text = self._queries.get(query)
        if text is not None:
            return text
        text = parse_search_query(query)
        row = await self._pool.fetchrow(
            "SELECT numnode(q), querytree(q) FROM to_tsquery('simple', $1) AS q", text
        )
        assert row is not None
        if row[0] == 0:
            raise _query_error("it has no words to search for")
        if row[1] == "T":
            raise _query_error("it needs a word or phrase that is not negated")
        self._queries[query] = text
        while len(self._queries) > 1024:
            self._queries.pop(next(iter(self._queries)))
        return text

    @staticmethod
    def _search_from(
        args: _Args,
        q: str,
        user_id: str,
        conversation_id: str | None,
        conditions: Sequence[Condition],
    ) -> str:
        where = _where(conditions, SEARCH_COLUMNS, args)
        if conversation_id is not None:
            where += f" AND c.id = {args(conversation_id)}"
        return (
            "FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
            f" WHERE m.search_tsv @@ {q} AND c.user_id = {args(user_id)}{where}"
        )

    @staticmethod
    def _hit(row: asyncpg.Record, score: float) -> SearchHit:
        """A SearchHit from MSG_COLS, title, headline, headline-is-of-content."""
        message = _message(row)
        return SearchHit(
            message, row[18], _snippet(row[19], message.content if row[20] else row[18]), score
        )

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
        """Every match, newest stored first; snippets only for the page's rows."""
        args = _Args(await self._tsquery(query), _HEADLINE_OPTIONS)
        q = "to_tsquery('simple', $1)"
        base = self._search_from(args, q, user_id, conversation_id, conditions)
        if before_seq is not None:
            base += f" AND m.seq < {args(before_seq)}"
        rows = await self._pool.fetch(
            f"SELECT {MSG_COLS}, c.title, {_SNIPPET.format(q=q, opts='$2')}"
            f" FROM (SELECT m.seq {base} ORDER BY m.seq DESC LIMIT {args(limit)}) hit"
            " JOIN messages m ON m.seq = hit.seq JOIN conversations c"
            " ON c.seq = m.conversation_seq ORDER BY m.seq DESC",
            *args.values,
        )
        return [self._hit(r, 0.0) for r in rows]

    async def search_snapshot(self) -> int:
        """The newest message seq: matches after it are not part of a ranked result."""
        return int(await self._pool.fetchval("SELECT COALESCE(MAX(seq), 0) FROM messages"))

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

        Ranking only a bounded window keeps a very common word as cheap as a rare one.
        """
        args = _Args(await self._tsquery(query))
        q = "to_tsquery('simple', $1)"
        base = self._search_from(args, q, user_id, conversation_id, conditions)
        rows = await self._pool.fetch(
            f"SELECT hit.seq, {_RANK.format(q=q)} AS score FROM (SELECT m.seq {base}"
            f" AND m.seq <= {args(snapshot)} ORDER BY m.seq DESC LIMIT {args(window)}) hit"
            " JOIN messages m ON m.seq = hit.seq ORDER BY score DESC, hit.seq DESC",
            *args.values,
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    async def search_hits(
        self, user_id: str, query: str, ranked: Sequence[tuple[int, float]]
    ) -> list[SearchHit]:
        """The messages (with snippets) of already ranked seqs, in the given order."""
        if not ranked:
            return []
        args = _Args(await self._tsquery(query), _HEADLINE_OPTIONS)
        q = "to_tsquery('simple', $1)"
        base = self._search_from(args, q, user_id, None, ())
        rows = await self._pool.fetch(
            f"SELECT {MSG_COLS}, c.title, {_SNIPPET.format(q=q, opts='$2')} {base}"
            f" AND m.seq = ANY({args([seq for seq, _ in ranked])}::bigint[])",
            *args.values,
        )
        by_seq = {r[0]: r for r in rows}
        return [self._hit(by_seq[seq], score) for seq, score in ranked if seq in by_seq]

    # -- export / import --------------------------------------------------------------

    async def export_conversations(
        self, user_id: str, conversation_ids: Sequence[str] | None
    ) -> AsyncIterator[Conversation]:
        """Every (or the named) conversation with its messages, one at a time."""
        if conversation_ids is None:
            rows = await self._pool.fetch(
                "SELECT id FROM conversations WHERE user_id = $1 ORDER BY seq", user_id
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
        for attempt in range(3):
            try:
                return await self._import(user_id, record, space_id=space_id, new_id=new_id)
            except asyncpg.UniqueViolationError as exc:
                # Another replica took the source key or the id meanwhile: look again.
                if attempt == 2 or exc.constraint_name not in (
                    "conversations_by_source",
                    "conversations_id_unique",
                ):
                    raise
        raise AssertionError("unreachable")

    async def _import(
        self, user_id: str, record: ImportRecord, *, space_id: str, new_id: str
    ) -> tuple[str, bool]:
        async with self._tx() as db:
            existing = await db.fetchval(
                "SELECT id FROM conversations WHERE user_id = $1 AND (source_key = $2 OR id = $3)",
                user_id,
                record.source_key,
                record.preferred_id or "",
            )
            if existing is not None:
                return str(existing), False
            conversation_id = new_id
            if record.preferred_id and not await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1)", record.preferred_id
            ):
                conversation_id = record.preferred_id
            now = now_us()
            last_model = next(
                (
                    m.model
                    for m in reversed(record.messages)
                    if m.role is Role.ASSISTANT and m.model
                ),
                "",
            )
            conv_seq = await db.fetchval(
                "INSERT INTO conversations (id, user_id, title, metadata, space_id, pinned,"
                " archived, last_model, message_count, prompt_tokens, completion_tokens,"
                " create_time, update_time, source_key)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                " RETURNING seq",
                conversation_id,
                user_id,
                record.title,
                dict(record.metadata),
                space_id,
                record.pinned,
                record.archived,
                last_model,
                len(record.messages),
                sum(m.usage.prompt_tokens for m in record.messages),
                sum(m.usage.completion_tokens for m in record.messages),
                record.create_time_us or now,
                record.update_time_us or now,
                record.source_key,
            )
            await db.executemany(
                MSG_INSERT,
                [
                    _message_values(m, conv_seq, m.create_time_us or now, None)
                    for m in record.messages
                ],
            )
            return conversation_id, True


def _snippet(headline: str, source: str) -> str:
    """`[match]` marks, with … where the headline does not reach the text's ends."""
    plain = headline.replace(_START, "").replace(_STOP, "")
    marked = headline.replace(_START, "[").replace(_STOP, "]")
    at = source.find(plain)
    if at < 0 or not plain.strip():
        return marked
    before = "…" if source[:at].strip() else ""
    after = "…" if source[at + len(plain) :].strip() else ""
    return before + marked + after


# -- search query syntax ------------------------------------------------------------------
#
# The query language is the websearch one (words, "quoted phrases", OR, -word) plus the
# FTS5 forms byok documents for SQLite: AND, `a NOT b`, (groups), prefix `word*`,
# `"a phra"*` and column filters `title:` / `content:`. It is parsed here and emitted as
# tsquery text in which every lexeme is a quoted, escaped literal; to_tsquery then
# normalizes the literals exactly as to_tsvector normalized the documents.

_COLUMN_WEIGHTS = {"content": "A", "title": "B"}
_OPERATORS = ("AND", "OR", "NOT")
_MAX_DEPTH = 32


def _query_error(detail: str) -> InvalidArgument:
    return InvalidArgument.field(
        "query", f"is not a valid search query ({detail}); see docs/postgres.md"
    )


@dataclass(frozen=True)
class _Token:
    kind: str  # word, phrase, op, neg, column, open, close
    text: str = ""
    prefix: bool = False


def _tokens(query: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch.isspace() or ch == "\x00":
            i += 1
        elif ch == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise _query_error('unterminated string: a " has no closing "')
            text, i = query[i + 1 : end], end + 1
            prefix = i < n and query[i] == "*"
            while i < n and query[i] == "*":
                i += 1
            out.append(_Token("phrase", text, prefix))
        elif ch in "()":
            out.append(_Token("open" if ch == "(" else "close"))
            i += 1
        else:
            start = i
            while i < n and not (query[i].isspace() or query[i] in '"()\x00'):
                i += 1
            _bare(query[start:i], query[i] if i < n else "", out)
    return out


def _bare(word: str, after: str, out: list[_Token]) -> None:
    """One run of text between spaces, quotes and parentheses."""
    if word.startswith("-") and (len(word) > 1 or after in '"('):
        out.append(_Token("neg"))
        word = word[1:]
        if not word:
            return
    column, colon, rest = word.partition(":")
    column = column.lower()  # column names are case-insensitive, as in FTS5
    if colon and column.replace("_", "a").isalnum() and column.isascii():
        if column not in _COLUMN_WEIGHTS:
            raise _query_error(f"no such column: {column}; columns are title and content")
        out.append(_Token("column", column))
        if rest:
            _bare(rest, after, out)
        return
    if word in _OPERATORS:
        out.append(_Token("op", word))
    elif word == "NEAR" and after == "(":
        raise _query_error("NEAR is not supported on PostgreSQL; use a phrase")
    else:
        stripped = word.rstrip("*")
        out.append(_Token("word", stripped, prefix=stripped != word))


def _literal(text: str, prefix: bool, weight: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "''")
    label = ("*" if prefix else "") + weight
    return f"'{escaped}'" + (f":{label}" if label else "")


class _Parser:
    """query := and ('OR' and)* ; and := unary (['AND'] unary | 'NOT' unary)* ;
    unary := '-' unary | [column ':'] primary ; primary := word | phrase | '(' query ')'."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> str | None:
        node = self.query(0, "")
        token = self.peek()
        if token is not None:
            raise _query_error(f"unexpected {_describe(token)}")
        return node

    def query(self, depth: int, weight: str) -> str | None:
        parts = [self.conjunction(depth, weight)]
        while (token := self.peek()) is not None and token == _Token("op", "OR"):
            self.take()
            parts.append(self.conjunction(depth, weight))
        present = [p for p in parts if p]
        if len(present) > 1:
            return "( " + " | ".join(present) + " )"
        return present[0] if present else None

    def conjunction(self, depth: int, weight: str) -> str | None:
        node = self.unary(depth, weight)
        while (token := self.peek()) is not None and token.kind != "close":
            if token == _Token("op", "OR"):
                break
            if token.kind == "op":
                self.take()
                right = self.unary(depth, weight)
                if token.text == "NOT":
                    right = f"!( {right} )" if right else None
            else:
                right = self.unary(depth, weight)
            node = f"{node} & {right}" if node and right else node or right
        return node

    def unary(self, depth: int, weight: str) -> str | None:
        token = self.peek()
        if token is not None and token.kind == "neg":
            self.take()
            inner = self.unary(depth, weight)
            return f"!( {inner} )" if inner else None
        if token is not None and token.kind == "column":
            self.take()
            following = self.peek()
            if following is None or following.kind not in ("word", "phrase", "open"):
                raise _query_error(f"{token.text}: needs a word, a phrase or ( after it")
            weight = _COLUMN_WEIGHTS[token.text]
        return self.primary(depth, weight)

    def primary(self, depth: int, weight: str) -> str | None:
        token = self.peek()
        if token is None:
            raise _query_error("it ends where a word was expected")
        if token.kind in ("op", "close"):
            raise _query_error(f"unexpected {_describe(token)}")
        self.take()
        if token.kind == "open":
            if depth >= _MAX_DEPTH:
                raise _query_error(f"more than {_MAX_DEPTH} nested parentheses")
            node = self.query(depth + 1, weight)
            closing = self.peek()
            if closing is None or closing.kind != "close":
                raise _query_error("a ( has no closing )")
            self.take()
            return f"( {node} )" if node else None
        if token.kind == "word":
            if not any(ch.isalnum() for ch in token.text):
                if token.prefix:
                    raise _query_error("* needs a word before it")
                return None  # punctuation only: nothing to match, as to_tsvector skips it
            return _literal(token.text, token.prefix, weight)
        # A phrase: its words in order, the last one a prefix with "..."*.
        words = [w for w in token.text.split() if any(ch.isalnum() for ch in w)]
        if not words:
            return None
        parts = [
            _literal(w, token.prefix and i == len(words) - 1, weight) for i, w in enumerate(words)
        ]
        return parts[0] if len(parts) == 1 else "( " + " <-> ".join(parts) + " )"


def _describe(token: _Token) -> str:
    return {"close": ")", "open": "(", "neg": "-"}.get(token.kind) or token.text


def parse_search_query(query: str) -> str:
    """The tsquery text (for `to_tsquery('simple', $1)`) of a search query.

    Raises InvalidArgument on field "query" for what cannot be a query: an unterminated
    quote, an unbalanced parenthesis, a dangling operator, an unknown column, nothing
    searchable. The text only ever holds quoted, escaped lexemes and tsquery operators.
    """
    node = _Parser(_tokens(query)).parse()
    if node is None:
        raise _query_error("it has no words to search for")
    return node
