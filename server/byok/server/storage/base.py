"""The async storage interface every backend implements.

The core packages depend on this protocol only; the SQLite and PostgreSQL
implementations pass one shared, parametrized test suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from byok.server.conversations.model import Conversation, Message, SearchHit, etag_of
from byok.server.errors import Aborted
from byok.server.filtering import Condition

DEFAULT_USER_ID = "local"


@dataclass(frozen=True)
class User:
    """A person byok keeps threads for. `local` is the implicit user of local mode."""

    id: str
    name: str
    display_name: str
    disabled: bool
    create_time_us: int


@dataclass(frozen=True)
class ImportRecord:
    """One imported thread, ready to store: its messages already carry their new ids."""

    source_key: str
    preferred_id: str | None
    title: str
    metadata: dict[str, str]
    pinned: bool
    archived: bool
    create_time_us: int
    update_time_us: int
    messages: Sequence[Message]


class Store(Protocol):
    """Every method scopes by user: another user's rows are invisible, never an error
    that would reveal them. Missing rows come back as None/False; the core turns that
    into NOT_FOUND with the resource name."""

    async def close(self) -> None:
        """Finishes pending work and releases connections; idempotent."""

    async def ping(self) -> None:
        """Raises if the database cannot answer a trivial query."""

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""

    async def create_conversation(
        self, user_id: str, conv: Conversation, *, request_id: str | None = None
    ) -> tuple[Conversation, bool]: ...

    async def create_conversation_with_messages(
        self, user_id: str, conv: Conversation, messages: Sequence[Message]
    ) -> tuple[Conversation, list[Message]]:
        """`create_conversation` then `append_messages` as one transaction, so a chat
        turn that starts a thread stores it and its user message in one round trip.
        Returns the thread as stored after the append (counters, revision) and the
        stored messages."""
        ...

    async def get_conversation(
        self,
        user_id: str,
        conversation_id: str,
        *,
        with_messages: bool = False,
        message_limit: int = 10_000,
    ) -> Conversation | None: ...

    async def get_thread(
        self, user_id: str, conversation_id: str, *, history_limit: int
    ) -> tuple[Conversation, list[Message]] | None:
        """The thread and its newest `history_limit` messages (oldest first, as
        `list_messages` returns them), read in one round trip from one snapshot: a
        follow-up chat turn needs both before it stores the user message, and the
        history must be the thread the conversation row describes. None if there is no
        such thread for this user."""
        ...

    async def list_conversations(
        self,
        user_id: str,
        conditions: Sequence[Condition],
        *,
        order_field: str,
        descending: bool,
        limit: int,
        cursor: Sequence[int] | None,
    ) -> list[Conversation]: ...

    async def update_conversation(
        self,
        user_id: str,
        conversation_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Conversation | None: ...

    async def delete_conversation(
        self, user_id: str, conversation_id: str, *, expected_etag: str | None, force: bool
    ) -> bool: ...

    async def append_messages(
        self,
        user_id: str,
        conversation_id: str,
        messages: Sequence[Message],
        *,
        request_id: str | None = None,
    ) -> list[Message] | None: ...

    async def get_message(
        self, user_id: str, conversation_id: str, message_id: str
    ) -> Message | None: ...

    async def list_messages(
        self,
        user_id: str,
        conversation_id: str,
        *,
        descending: bool,
        limit: int,
        after_seq: int | None,
    ) -> list[Message] | None: ...

    async def update_message(
        self,
        user_id: str,
        conversation_id: str,
        message_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Message | None: ...

    async def delete_message(
        self, user_id: str, conversation_id: str, message_id: str, *, expected_etag: str | None
    ) -> bool: ...

    async def search_newest(
        self,
        user_id: str,
        query: str,
        *,
        conversation_id: str | None,
        conditions: Sequence[Condition],
        limit: int,
        before_seq: int | None,
    ) -> list[SearchHit]: ...

    async def search_snapshot(self) -> int: ...

    async def search_rank(
        self,
        user_id: str,
        query: str,
        *,
        conversation_id: str | None,
        conditions: Sequence[Condition],
        snapshot: int,
        window: int,
    ) -> list[tuple[int, float]]: ...

    async def search_hits(
        self, user_id: str, query: str, ranked: Sequence[tuple[int, float]]
    ) -> list[SearchHit]: ...

    def export_conversations(
        self, user_id: str, conversation_ids: Sequence[str] | None
    ) -> AsyncIterator[Conversation]: ...

    async def import_conversation(
        self, user_id: str, record: ImportRecord, *, space_id: str, new_id: str
    ) -> tuple[str, bool]: ...


def check_etag(expected: str | None, resource_id: str, revision: int, name: str) -> None:
    """AIP-154: an etag the caller sent must match the current revision (ABORTED if not);
    no etag means "whatever is there". One rule for every backend."""
    if expected and expected != etag_of(resource_id, revision):
        raise Aborted(
            f"{name} was changed by someone else (etag mismatch); get it again and retry",
            metadata={"name": name},
        )
