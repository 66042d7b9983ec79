"""Token counting (OpenAI's o200k_base vocabulary) and history trimming.

The encoding is bundled with `bpe-openai` (no download at run time) and loaded once, on
first use; `load_encoding()` lets the composition root pay that cost (about a second)
at start instead of in the first request. Counts are exact for OpenAI's current models
and a close estimate for others, which is what a context budget needs.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Protocol

from byok.server.providers.base import ChatMessage

ENCODING_NAME = "o200k_base"
MESSAGE_OVERHEAD = 4  # tokens each message costs beyond its text (role, separators)
# bpe-openai refuses texts of a million characters or more and results over 200,000
# tokens; longer texts are counted in pieces (split at whitespace where possible).
_PIECE_CHARS = 40_000


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


_encoding: _Encoding | None = None
_lock = threading.Lock()


def load_encoding() -> None:
    """Loads the encoding now (it is otherwise loaded by the first count)."""
    _get_encoding()


def _get_encoding() -> _Encoding:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                # Importing bpe_openai reads its vocabularies, through a deprecated API.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    import bpe_openai  # type: ignore[import-untyped]  # no py.typed marker

                    _encoding = bpe_openai.get_encoding(ENCODING_NAME)
    assert _encoding is not None
    return _encoding


def count_tokens(text: str) -> int:
    """The number of tokens in `text`; special-token markup counts as plain text."""
    if not text:
        return 0
    encoding = _get_encoding()
    if len(text) <= _PIECE_CHARS:
        return len(encoding.encode_ordinary(text))
    total = 0
    start = 0
    while start < len(text):
        end = min(start + _PIECE_CHARS, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + _PIECE_CHARS // 2, end)
            end = cut if cut > start else end
        total += len(encoding.encode_ordinary(text[start:end]))
        start = end
    return total


def truncate_tokens(text: str, limit: int) -> str:
    """The longest prefix of `text` that counts at most `limit` tokens.

    Only an upstream that ignores `max_tokens` gets here, once a turn, so a bisection
    over prefixes (a few dozen counts) is cheaper than keeping a decoder around.
    """
    if limit <= 0:
        return ""
    if count_tokens(text) <= limit:
        return text
    low, high = 0, len(text)  # count(text[:low]) <= limit < count(text[:high])
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(text[:middle]) <= limit:
            low = middle
        else:
            high = middle
    return text[:low]


def count_message(message: ChatMessage) -> int:
    return count_tokens(message.content) + MESSAGE_OVERHEAD


def count_messages(messages: Sequence[ChatMessage]) -> int:
    """Tokens of the messages' text plus MESSAGE_OVERHEAD per message."""
    return sum(count_message(message) for message in messages)


def trim_history(
    system: ChatMessage | None, history: Sequence[ChatMessage], budget: int
) -> list[ChatMessage]:
    """The system prompt (if any) and the newest history messages that fit `budget`.

    Oldest messages are dropped first, so what is kept is always a contiguous tail of
    `history`; the newest message is kept even if it alone exceeds the budget.
    """
    kept: list[ChatMessage] = []
    used = count_message(system) if system is not None else 0
    for index, message in enumerate(reversed(history)):
        cost = count_message(message)
        if index > 0 and used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    return [system, *kept] if system is not None else kept
