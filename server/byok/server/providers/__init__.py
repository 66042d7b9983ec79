"""Model providers: one small streaming protocol and its implementations."""

from byok.server.providers.base import (
    ChatMessage,
    Provider,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Timeouts,
)

__all__ = [
    "ChatMessage",
    "Provider",
    "SamplingParams",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "Timeouts",
]
