from __future__ import annotations

from byok.server.chat.tokens import (
    MESSAGE_OVERHEAD,
    count_messages,
    count_tokens,
    trim_history,
    truncate_tokens,
)
from byok.server.providers.base import ChatMessage


def test_count_tokens_uses_o200k_base() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2  # [24912, 2375] in o200k_base
    assert count_tokens("hello") == 1
    assert count_tokens("The quick brown fox jumps over the lazy dog.") == 10


def test_special_token_markup_is_plain_text() -> None:
    assert count_tokens("<|endoftext|>") > 1


def test_long_text_is_counted_in_pieces() -> None:
    # bpe-openai alone refuses a million characters; pieces split at spaces count the same
    unit = "lorem ipsum dolor sit amet "
    per_unit = (count_tokens(unit * 1000) - count_tokens(unit * 10)) / 990
    assert count_tokens(unit * 40_000) == count_tokens(unit * 10) + per_unit * 39_990


def test_truncate_keeps_the_longest_prefix_within_the_limit() -> None:
    text = "The quick brown fox jumps over the lazy dog."  # 10 tokens
    assert truncate_tokens(text, 10) == text
    assert truncate_tokens(text, 4) == "The quick brown fox"
    assert count_tokens(truncate_tokens(text, 4)) == 4
    assert truncate_tokens(text, 0) == ""
    assert truncate_tokens("", 3) == ""


def test_count_messages_adds_overhead_per_message() -> None:
    messages = [ChatMessage("user", "hello world"), ChatMessage("assistant", "hello")]
    assert count_messages(messages) == 2 + 1 + 2 * MESSAGE_OVERHEAD
    assert count_messages([]) == 0


def _turns(n: int) -> list[ChatMessage]:
    return [ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(n)]


def test_trim_keeps_everything_that_fits() -> None:
    system = ChatMessage("system", "be brief")
    history = _turns(4)
    assert trim_history(system, history, budget=10_000) == [system, *history]
    assert trim_history(None, history, budget=10_000) == history


def test_trim_drops_oldest_first_and_keeps_system() -> None:
    system = ChatMessage("system", "be brief")
    history = _turns(6)
    per_message = count_messages(history[:1])  # every "message i" costs the same
    budget = count_messages([system]) + 3 * per_message
    trimmed = trim_history(system, history, budget)
    assert trimmed == [system, *history[-3:]]
    assert count_messages(trimmed) <= budget
    # one token short of three messages keeps two
    assert trim_history(system, history, budget - 1) == [system, *history[-2:]]


def test_trim_always_keeps_the_newest_message() -> None:
    system = ChatMessage("system", "a long system prompt " * 20)
    newest = ChatMessage("user", "a very long question " * 50)
    trimmed = trim_history(system, [*_turns(3), newest], budget=5)
    assert trimmed == [system, newest]
    assert trim_history(None, [newest], budget=0) == [newest]


def test_trim_of_empty_history() -> None:
    system = ChatMessage("system", "hi")
    assert trim_history(system, [], budget=0) == [system]
    assert trim_history(None, [], budget=100) == []
