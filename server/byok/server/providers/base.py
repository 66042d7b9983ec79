"""The provider protocol: messages and sampling parameters in, a stream of events out.

A provider yields a `TextDelta` as soon as text arrives, never held back for later
input: the text chunks of one upstream read go out together as one delta (a slow
consumer then gets fewer, larger messages), chunks that arrive apart go out apart.
Then exactly one `StreamEnd`. Failures are
raised as `byok.server.errors` domain errors. Implementations are async generators:
callers that may stop early should consume the stream inside `contextlib.aclosing(...)`
so the upstream request is closed at once, not when the generator is collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters; `None` (or an empty `stop`) leaves the upstream default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


StreamEvent = TextDelta | StreamEnd


class Provider(Protocol):
    name: str

    def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        api_key: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Streams one completion; `api_key` overrides the provider's configured key."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    """Upstream timeouts in seconds, and retries before the first token."""

    connect: float = 10
    read: float = 60
    write: float = 10
    total: float = 600
    max_retries: int = 2
