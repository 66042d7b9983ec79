"""The conversation domain: plain data, no gRPC, no SQL."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field


class Role(enum.IntEnum):
    """Values match byok.v1.Role."""

    SYSTEM = 1
    USER = 2
    ASSISTANT = 3
    TOOL = 4


class MessageStatus(enum.IntEnum):
    """Values match byok.v1.MessageStatus."""

    COMPLETE = 1
    INCOMPLETE = 2


def etag_of(resource_id: str, revision: int) -> str:
    """Opaque, changes with every revision of the resource."""
    return hashlib.sha1(f"{resource_id}:{revision}".encode(), usedforsecurity=False).hexdigest()[
        :16
    ]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Message:
    id: str
    conversation_id: str
    role: Role
    content: str
    status: MessageStatus = MessageStatus.COMPLETE
    incomplete_reason: str = ""
    model: str = ""
    route: str = ""
    usage: Usage = field(default_factory=Usage)
    latency_us: int = 0
    ttft_us: int = 0
    finish_reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    create_time_us: int = 0
    update_time_us: int = 0
    revision: int = 1
    seq: int = 0  # storage order within the database; the paging cursor

    @property
    def name(self) -> str:
        return f"conversations/{self.conversation_id}/messages/{self.id}"

    @property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)


@dataclass
class Conversation:
    id: str
    title: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    space_id: str = ""
    pinned: bool = False
    archived: bool = False
    last_model: str = ""
    message_count: int = 0
    usage: Usage = field(default_factory=Usage)
    create_time_us: int = 0
    update_time_us: int = 0
    revision: int = 1
    messages: list[Message] | None = None  # set only when asked for (FULL view)
    seq: int = 0  # storage order; the paging cursor

    @property
    def name(self) -> str:
        return f"conversations/{self.id}"

    @property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)


@dataclass
class SearchHit:
    message: Message
    conversation_title: str
    snippet: str
    score: float  # higher is better; 0 when ordered by time
