"""Conversations core: validation, limits, names, paging and filters over the Store.

Plain async Python: the gRPC servicer converts messages and calls this; tests can
call it directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from byok.server import filtering, paging
from byok.server.conversations import exchange
from byok.server.conversations.model import Conversation, Message, Role, SearchHit
from byok.server.errors import InvalidArgument, NotFound
from byok.server.filtering import EQUALITY, ORDERING, FieldSpec, Kind
from byok.server.ids import check_caller_id, new_id, parse_name
from byok.server.storage.base import ImportRecord, Store
from byok.server.storage.workspace import WorkspaceStore

MAX_TITLE = 512
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 4096
MAX_CONTENT_BYTES = 1024 * 1024
FULL_VIEW_MESSAGES = 10_000
SEARCH_WINDOW = 300  # relevance ranks the newest 300 matches (BYOK_SEARCH_WINDOW)
SEARCH_DEFAULT_PAGE = 20
SEARCH_MAX_PAGE = 100
MAX_QUERY = 1000
RANKING_CACHE = 32  # each holds up to the search window's (seq, score) pairs

ROLE_NAMES = {f"ROLE_{r.name}": int(r) for r in Role}

CONVERSATION_FILTER = {
    "space": FieldSpec(Kind.STRING, EQUALITY),
    "pinned": FieldSpec(Kind.BOOL, EQUALITY),
    "archived": FieldSpec(Kind.BOOL, EQUALITY),
    "last_model": FieldSpec(Kind.STRING, EQUALITY),
    "create_time": FieldSpec(Kind.TIME, ORDERING),
    "update_time": FieldSpec(Kind.TIME, ORDERING),
}
SEARCH_FILTER = {
    "role": FieldSpec(Kind.ENUM, EQUALITY, ROLE_NAMES),
    "space": FieldSpec(Kind.STRING, EQUALITY),
    "create_time": FieldSpec(Kind.TIME, ORDERING),
}
CONVERSATION_ORDERS = {
    "": ("update_time", True),
    "update_time desc": ("update_time", True),
    "update_time": ("update_time", False),
    "update_time asc": ("update_time", False),
    "create_time desc": ("create_time", True),
    "create_time": ("create_time", False),
    "create_time asc": ("create_time", False),
}
CONVERSATION_MUTABLE = {"title", "metadata", "pinned", "archived", "space"}
MESSAGE_MUTABLE = {"content", "metadata"}


def check_title(title: str, field_name: str = "title") -> str:
    if len(title) > MAX_TITLE:
        raise InvalidArgument.field(field_name, f"is longer than {MAX_TITLE} characters")
    return title


def check_metadata(metadata: Mapping[str, str], field_name: str = "metadata") -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument.field(field_name, f"has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise InvalidArgument.field(field_name, f"key {key[:40]!r} must be 1-128 characters")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument.field(
                field_name, f"value of {key!r} is longer than {MAX_METADATA_VALUE} characters"
            )
    return dict(metadata)


def check_content(content: str, field_name: str = "content") -> str:
    if len(content.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
        raise InvalidArgument.field(field_name, "is larger than 1 MiB")
    return content


MAX_TOKENS_FIELD = 10**9  # per message: far above any context window
MAX_DURATION_US = 86_400 * 1_000_000  # a day


def check_generation(message: Message) -> None:
    """Caller-supplied usage and timings are stored and summed per thread: keep them in
    range so totals stay exact integers."""
    for field_name, value, limit in (
        ("message.usage.prompt_tokens", message.usage.prompt_tokens, MAX_TOKENS_FIELD),
        ("message.usage.completion_tokens", message.usage.completion_tokens, MAX_TOKENS_FIELD),
        ("message.latency", message.latency_us, MAX_DURATION_US),
        ("message.time_to_first_token", message.ttft_us, MAX_DURATION_US),
    ):
        if not 0 <= value <= limit:
            raise InvalidArgument.field(field_name, f"must be between 0 and {limit}")


def space_id_of(space: str, field_name: str = "space") -> str:
    """`spaces/{id}` → id; "" stays "" (no space)."""
    if not space:
        return ""
    return parse_name(space, "spaces", field=field_name)[0]


def _order(order_by: str, table: Mapping[str, tuple[str, bool]]) -> tuple[str, bool]:
    key = " ".join(order_by.lower().split())
    if key not in table:
        allowed = ", ".join(repr(k) for k in table if k)
        raise InvalidArgument.field("order_by", f"must be one of {allowed}")
    return table[key]


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    skipped: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # index, source, reason


class Conversations:
    """The ConversationService use cases, for one store."""

    def __init__(
        self,
        store: Store,
        workspace: WorkspaceStore | None = None,
        *,
        search_window: int = SEARCH_WINDOW,
    ):
        self.store = store
        self.workspace = workspace
        # Relevance ranks only this many of the newest matches: the cost of a search is
        # bounded by it, not by how common its words are (docs/search.md).
        self.search_window = search_window
        # Ranked relevance windows by query and snapshot, oldest evicted first.
        self._rankings: dict[tuple[str, ...] | tuple[Any, ...], list[tuple[int, float]]] = {}

    # -- names --------------------------------------------------------------------

    @staticmethod
    def conversation_id(name: str, field_name: str = "name") -> str:
        return parse_name(name, "conversations", field=field_name)[0]

    @staticmethod
    def message_ids(name: str, field_name: str = "name") -> tuple[str, str]:
        conv, msg = parse_name(name, "conversations", "messages", field=field_name)
        return conv, msg

    async def _existing_space(self, user_id: str, space: str, field_name: str) -> str:
        """`spaces/{id}` → id, NOT_FOUND unless the user has that space; "" stays ""."""
        space_id = space_id_of(space, field_name)
        if (
            space_id
            and self.workspace is not None
            and not await self.workspace.space_exists(user_id, space_id)
        ):
            raise NotFound.resource(space)
        return space_id

    # -- threads ------------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        *,
        title: str = "",
        metadata: Mapping[str, str] | None = None,
        space: str = "",
        pinned: bool = False,
        archived: bool = False,
        conversation_id: str = "",
        request_id: str = "",
    ) -> Conversation:
        conv = Conversation(
            id=check_caller_id("conversation_id", conversation_id) if conversation_id else new_id(),
            title=check_title(title, "conversation.title"),
            metadata=check_metadata(metadata or {}, "conversation.metadata"),
            space_id=await self._existing_space(user_id, space, "conversation.space"),
            pinned=pinned,
            archived=archived,
        )
        created, _ = await self.store.create_conversation(
            user_id, conv, request_id=request_id or None
        )
        return created

    async def start(
        self, user_id: str, message: Message, *, title: str = "", space: str = ""
    ) -> tuple[Conversation, Message]:
        """`create` then `append` in one store transaction: what a chat turn that starts
        a thread must have stored before it calls the model, in one round trip."""
        conv = Conversation(
            id=new_id(),
            title=check_title(title, "conversation.title"),
            space_id=await self._existing_space(user_id, space, "conversation.space"),
        )
        self._check_message(message)
        message.id = message.id or new_id()
        created, stored = await self.store.create_conversation_with_messages(
            user_id, conv, [message]
        )
        return created, stored[0]

    async def get(self, user_id: str, name: str, *, full: bool = True) -> Conversation:
        conv = await self.store.get_conversation(
            user_id,
            self.conversation_id(name),
            with_messages=full,
            message_limit=FULL_VIEW_MESSAGES,
        )
        if conv is None:
            raise NotFound.resource(name)
        return conv

    async def thread(
        self, user_id: str, name: str, *, history_limit: int
    ) -> tuple[Conversation, list[Message]]:
        """The thread and its newest `history_limit` messages, oldest first, in one store
        call: what a follow-up chat turn reads before it stores the user message."""
        found = await self.store.get_thread(
            user_id, self.conversation_id(name), history_limit=history_limit
        )
        if found is None:
            raise NotFound.resource(name)
        return found

    async def list_conversations(
        self,
        user_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        filter: str = "",
        order_by: str = "",
    ) -> tuple[list[Conversation], str]:
        size = paging.page_size(page_size)
        conditions = filtering.parse_filter(filter, CONVERSATION_FILTER)
        conditions = [
            filtering.Condition(c.field, c.op, space_id_of(str(c.value), "filter"))
            if c.field == "space"
            else c
            for c in conditions
        ]
        if not any(c.field == "archived" for c in conditions):
            conditions.append(filtering.Condition("archived", "=", False))
        order_field, descending = _order(order_by, CONVERSATION_ORDERS)
        query = ["conversations", filter, order_field, descending]
        cursor = paging.decode_token(page_token, query)
        rows = await self.store.list_conversations(
            user_id,
            conditions,
            order_field=order_field,
            descending=descending,
            limit=size + 1,
            cursor=cursor,
        )
        page = rows[:size]
        token = ""
        if len(rows) > size:
            last = page[-1]
            key = last.update_time_us if order_field == "update_time" else last.create_time_us
            token = paging.encode_token([key, last.seq], query)
        return page, token

    async def update(
        self,
        user_id: str,
        name: str,
        values: Mapping[str, Any],
        paths: Sequence[str],
        *,
        etag: str = "",
    ) -> Conversation:
        if not paths:
            raise InvalidArgument.field(
                "update_mask", f"is required; fields: {', '.join(sorted(CONVERSATION_MUTABLE))}"
            )
        changes: dict[str, Any] = {}
        for path in paths:
            if path not in CONVERSATION_MUTABLE:
                allowed = ", ".join(sorted(CONVERSATION_MUTABLE))
                raise InvalidArgument.field(
                    "update_mask", f"cannot update {path!r}; can: {allowed}"
                )
            value = values.get(path)
            if path == "title":
                changes["title"] = check_title(str(value or ""), "conversation.title")
            elif path == "metadata":
                changes["metadata"] = check_metadata(value or {}, "conversation.metadata")
            elif path == "space":
                changes["space_id"] = await self._existing_space(
                    user_id, str(value or ""), "conversation.space"
                )
            else:
                changes[path] = bool(value)
        conv = await self.store.update_conversation(
            user_id,
            self.conversation_id(name, "conversation.name"),
            changes,
            expected_etag=etag or None,
        )
        if conv is None:
            raise NotFound.resource(name)
        return conv

    async def delete(self, user_id: str, name: str, *, etag: str = "", force: bool = False) -> None:
        if not await self.store.delete_conversation(
            user_id, self.conversation_id(name), expected_etag=etag or None, force=force
        ):
            raise NotFound.resource(name)

    # -- messages -----------------------------------------------------------------

    async def list_messages(
        self,
        user_id: str,
        parent: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        order_by: str = "",
    ) -> tuple[list[Message], str]:
        conv_id = self.conversation_id(parent, "parent")
        size = paging.page_size(page_size)
        _, descending = _order(
            order_by,
            {
                "": ("create_time", False),
                "create_time": ("create_time", False),
                "create_time asc": ("create_time", False),
                "create_time desc": ("create_time", True),
            },
        )
        query = ["messages", parent, descending]
        cursor = paging.decode_token(page_token, query)
        rows = await self.store.list_messages(
            user_id,
            conv_id,
            descending=descending,
            limit=size + 1,
            after_seq=int(cursor[0]) if cursor else None,
        )
        if rows is None:
            raise NotFound.resource(parent)
        page = rows[:size]
        token = paging.encode_token([page[-1].seq], query) if len(rows) > size else ""
        return page, token

    async def append(
        self, user_id: str, parent: str, message: Message, *, request_id: str = ""
    ) -> Message:
        conv_id = self.conversation_id(parent, "parent")
        self._check_message(message)
        message.id = message.id or new_id()
        stored = await self.store.append_messages(
            user_id, conv_id, [message], request_id=request_id or None
        )
        if stored is None:
            raise NotFound.resource(parent)
        return stored[0]

    @staticmethod
    def _check_message(message: Message) -> None:
        if message.role not in Role.__members__.values():
            raise InvalidArgument.field(
                "message.role",
                "is required: one of ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL",
            )
        check_content(message.content, "message.content")
        check_metadata(message.metadata, "message.metadata")
        check_generation(message)

    async def get_message(self, user_id: str, name: str) -> Message:
        conv_id, msg_id = self.message_ids(name)
        message = await self.store.get_message(user_id, conv_id, msg_id)
        if message is None:
            raise NotFound.resource(name)
        return message

    async def update_message(
        self,
        user_id: str,
        name: str,
        values: Mapping[str, Any],
        paths: Sequence[str],
        *,
        etag: str = "",
    ) -> Message:
        if not paths:
            raise InvalidArgument.field("update_mask", "is required; fields: content, metadata")
        changes: dict[str, Any] = {}
        for path in paths:
            if path not in MESSAGE_MUTABLE:
                raise InvalidArgument.field(
                    "update_mask", f"cannot update {path!r}; can: content, metadata"
                )
            if path == "content":
                changes["content"] = check_content(
                    str(values.get("content", "")), "message.content"
                )
            else:
                changes["metadata"] = check_metadata(
                    values.get("metadata") or {}, "message.metadata"
                )
        conv_id, msg_id = self.message_ids(name, "message.name")
        message = await self.store.update_message(
            user_id, conv_id, msg_id, changes, expected_etag=etag or None
        )
        if message is None:
            raise NotFound.resource(name)
        return message

    async def delete_message(self, user_id: str, name: str, *, etag: str = "") -> None:
        conv_id, msg_id = self.message_ids(name)
        if not await self.store.delete_message(
            user_id, conv_id, msg_id, expected_etag=etag or None
        ):
            raise NotFound.resource(name)

    # -- search -------------------------------------------------------------------

    async def search(
        self,
        user_id: str,
        parent: str,
        query: str,
        *,
        filter: str = "",
        page_size: int = 0,
        page_token: str = "",
        order_by: str = "",
    ) -> tuple[list[SearchHit], str]:
        conv_id = self.conversation_id(parent, "parent")
        if not query.strip():
            raise InvalidArgument.field("query", "is required")
        if len(query) > MAX_QUERY:
            raise InvalidArgument.field("query", f"is longer than {MAX_QUERY} characters")
        size = paging.page_size(page_size, SEARCH_DEFAULT_PAGE, SEARCH_MAX_PAGE)
        conditions = [
            filtering.Condition(c.field, c.op, space_id_of(str(c.value), "filter"))
            if c.field == "space"
            else c
            for c in filtering.parse_filter(filter, SEARCH_FILTER)
        ]
        _, by_time = _order(
            order_by,
            {
                "": ("relevance", False),
                "relevance": ("relevance", False),
                "create_time desc": ("create_time", True),
            },
        )
        key = ["search", parent, query, filter, by_time]
        cursor = paging.decode_token(page_token, key)
        if conv_id != "-" and await self.store.get_conversation(user_id, conv_id) is None:
            raise NotFound.resource(parent)
        scope = None if conv_id == "-" else conv_id
        if by_time:
            hits = await self.store.search_newest(
                user_id,
                query,
                conversation_id=scope,
                conditions=conditions,
                limit=size + 1,
                before_seq=int(cursor[0]) if cursor else None,
            )
            token = (
                paging.encode_token([hits[size - 1].message.seq], key) if len(hits) > size else ""
            )
            return hits[:size], token
        # Relevance: rank the bounded window once and page through that ranking, so
        # inserts (which shift bm25's global statistics) cannot reorder later pages.
        snapshot, offset = (int(cursor[0]), int(cursor[1])) if cursor else (0, 0)
        if not snapshot:
            snapshot = await self.store.search_snapshot()
        cache_key = (user_id, parent, query, filter, snapshot)
        ranked = self._rankings.get(cache_key)
        if ranked is None:
            ranked = await self.store.search_rank(
                user_id,
                query,
                conversation_id=scope,
                conditions=conditions,
                snapshot=snapshot,
                window=self.search_window,
            )
            self._rankings[cache_key] = ranked
            while len(self._rankings) > RANKING_CACHE:
                self._rankings.pop(next(iter(self._rankings)))
        hits = await self.store.search_hits(user_id, query, ranked[offset : offset + size])
        more = offset + size < len(ranked)
        return hits, paging.encode_token([snapshot, offset + size], key) if more else ""

    # -- export / import ----------------------------------------------------------

    async def export(
        self, user_id: str, names: Sequence[str], stats: exchange.ExportStats
    ) -> AsyncIterator[bytes]:
        """Checks every name first (an unknown one is NOT_FOUND before any byte)."""
        ids: list[str] | None = None
        if names:
            ids = []
            for name in names:
                conv_id = self.conversation_id(name, "names")
                if await self.store.get_conversation(user_id, conv_id) is None:
                    raise NotFound.resource(name)
                ids.append(conv_id)
        async for chunk in exchange.export_chunks(
            self.store.export_conversations(user_id, ids), time.time_ns() // 1000, stats=stats
        ):
            yield chunk

    async def import_(
        self,
        user_id: str,
        data: bytes,
        *,
        fmt: Literal["auto", "byok", "chatgpt"] = "auto",
        space: str = "",
    ) -> ImportResult:
        space_id = await self._existing_space(user_id, space, "space")
        # Validates the whole file (CPU-bound, so off the event loop) before writing anything.
        records = await asyncio.to_thread(exchange.parse_import, data, fmt)
        result = ImportResult()
        for rec in records:
            messages = [
                Message(
                    id=new_id(),
                    conversation_id="",
                    role=m.role,
                    content=m.content,
                    status=m.status,
                    incomplete_reason=m.incomplete_reason,
                    model=m.model,
                    route=m.route,
                    usage=m.usage,
                    latency_us=m.latency_us,
                    ttft_us=m.ttft_us,
                    finish_reason=m.finish_reason,
                    metadata=m.metadata,
                    create_time_us=m.create_time_us,
                )
                for m in rec.messages
            ]
            record = ImportRecord(
                source_key=rec.source_key,
                preferred_id=rec.preferred_id,
                title=rec.title,
                metadata=rec.metadata,
                pinned=rec.pinned,
                archived=rec.archived,
                create_time_us=rec.create_time_us,
                update_time_us=rec.update_time_us,
                messages=messages,
            )
            try:
                conv_id, created = await self.store.import_conversation(
                    user_id, record, space_id=space_id, new_id=new_id()
                )
            except Exception as exc:  # one bad thread must not stop the others
                result.failures.append((rec.index, rec.source_id, str(exc)))
                continue
            if created:
                result.created.append(f"conversations/{conv_id}")
            else:
                result.skipped += 1
        return result
