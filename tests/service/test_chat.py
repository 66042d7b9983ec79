"""ChatService end to end: real server, real openai SDK, scripted upstream on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.support.rpc import rpc_error
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream

if TYPE_CHECKING:
    ChatStub = chat_pb2_grpc.ChatServiceAsyncStub
    ConvStub = conversations_pb2_grpc.ConversationServiceAsyncStub

CODE = grpc.StatusCode
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


def routes(up: ScriptedUpstream, **extra: str) -> dict[str, str]:
    return {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "MODEL_ROUTE_SMART": "openai/gpt-4o",
        "DEFAULT_MODEL_ROUTE": "FAST",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": up.base_url,
        "READ_TIMEOUT_SECONDS": "1",
        "MAX_RETRIES": "1",
        **extra,
    }


@pytest.fixture
async def srv(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    async with running_app(tmp_path / "data", routes=routes(upstream)) as running:
        yield running


@pytest.fixture
async def stubs(srv: RunningServer) -> AsyncIterator[tuple[ChatStub, ConvStub]]:
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch), conversations_pb2_grpc.ConversationServiceStub(ch)


async def events_of(chat: ChatStub, **request: Any) -> list[chat_pb2.StreamChatResponse]:
    return [e async for e in chat.StreamChat(chat_pb2.ChatRequest(**request))]


async def test_stream_events_and_what_is_stored(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, convs = stubs
    upstream.reply(["Hel", "lo", "!"], delay=0.02, usage=(12, 3))
    events = await events_of(chat, content="Say hello")
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", "delta", "delta", "delta", "usage", "done"]
    assert [e.sequence for e in events] == list(range(1, 7))
    started, done = events[0].started, events[-1].done
    assert started.conversation_created and started.route == "FAST"
    assert (started.provider, started.model) == ("openai", "gpt-4o-mini")
    assert "".join(e.delta.text for e in events[1:4]) == "Hello!"
    assert events[4].usage == common_pb2.TokenUsage(
        prompt_tokens=12, completion_tokens=3, total_tokens=15
    )
    assert done.finish_reason == "stop" and done.latency.ToNanoseconds() > 0

    conv = await convs.GetConversation(cpb.GetConversationRequest(name=started.conversation))
    assert conv.title == "Say hello" and conv.last_model == "gpt-4o-mini"
    user, reply = conv.messages
    assert (user.role, user.content, user.name) == (
        cpb.ROLE_USER,
        "Say hello",
        started.user_message,
    )
    assert reply.name == done.message and reply.content == "Hello!"
    assert (reply.model, reply.route, reply.finish_reason) == ("gpt-4o-mini", "FAST", "stop")
    assert reply.status == cpb.MESSAGE_STATUS_COMPLETE
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 3)
    assert 0 < reply.time_to_first_token.ToNanoseconds() <= reply.latency.ToNanoseconds()

    sent = upstream.requests[-1]
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.json["model"] == "gpt-4o-mini" and sent.json["stream"] is True
    assert sent.json["messages"] == [{"role": "user", "content": "Say hello"}]


async def test_follow_up_sends_stored_history_and_params(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, _ = stubs
    upstream.reply(["Paris."])
    first = await chat.Chat(chat_pb2.ChatRequest(content="Capital of France?"))
    assert first.reply.content == "Paris." and first.conversation
    upstream.reply(["Lyon."])
    params = common_pb2.GenerationParams(
        system_prompt="Be brief.", temperature=0.5, top_p=0.9, max_tokens=50, stop=["\n\n"]
    )
    second = await chat.Chat(
        chat_pb2.ChatRequest(
            conversation=first.conversation,
            content="And the second city?",
            model_key="smart",
            params=params,
        )
    )
    assert second.conversation == first.conversation and second.reply.route == "SMART"
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the second city?"},
    ]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"]) == (
        0.5,
        pytest.approx(0.9),
        50,
        ["\n\n"],
    )
    assert "temperature" not in upstream.requests[0].json  # unset params are not sent


async def test_routing_errors(stubs: tuple[ChatStub, ConvStub]) -> None:
    chat, _ = stubs
    with rpc_error(CODE.NOT_FOUND) as err:
        await chat.Chat(chat_pb2.ChatRequest(content="hi", model_key="nope"))
    assert err.reason == "UNKNOWN_ROUTE" and "FAST" in err.message and "SMART" in err.message
    with rpc_error(CODE.NOT_FOUND):
        await chat.Chat(chat_pb2.ChatRequest(content="hi", conversation="conversations/nope"))
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await chat.Chat(chat_pb2.ChatRequest(content="   "))
    assert err.violations[0][0] == "content"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await chat.Chat(
            chat_pb2.ChatRequest(content="hi", params=common_pb2.GenerationParams(temperature=3))
        )
    assert err.violations[0][0] == "params.temperature"


async def test_ambiguity_and_allowlist(tmp_path: Path, upstream: ScriptedUpstream) -> None:
    two = routes(upstream, ALLOWED_MODELS="gpt-4o")
    del two["DEFAULT_MODEL_ROUTE"]
    async with running_app(tmp_path / "d", routes=two) as srv:
        async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
            chat = chat_pb2_grpc.ChatServiceStub(ch)
            with rpc_error(CODE.ABORTED) as err:
                await chat.Chat(chat_pb2.ChatRequest(content="hi"))
            assert (
                err.reason == "AMBIGUOUS_ROUTE" and "FAST" in err.message and "SMART" in err.message
            )
            with rpc_error(CODE.PERMISSION_DENIED) as err:
                await chat.Chat(chat_pb2.ChatRequest(content="hi", model_key="FAST"))
            assert err.reason == "MODEL_NOT_ALLOWED"
            assert "gpt-4o-mini" in err.message and "gpt-4o" in err.message
            upstream.reply(["ok"])
            ok = await chat.Chat(chat_pb2.ChatRequest(content="hi", model_key="SMART"))
            assert ok.reply.content == "ok"
    assert len(upstream.requests) == 1  # refused turns never reached the upstream


async def test_single_route_is_the_default(tmp_path: Path, upstream: ScriptedUpstream) -> None:
    one = {
        "MODEL_ROUTE_ONLY": "openai/gpt-4o",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": upstream.base_url,
    }
    async with running_app(tmp_path / "d", routes=one) as srv:
        async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
            upstream.reply(["yes"])
            reply = await chat_pb2_grpc.ChatServiceStub(ch).Chat(chat_pb2.ChatRequest(content="hi"))
    assert reply.reply.route == "ONLY"


@pytest.mark.parametrize(
    ("status", "headers", "code", "reason"),
    [
        (401, {}, CODE.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED"),
        (403, {}, CODE.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED"),
        (429, {"retry-after": "3"}, CODE.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        (500, {}, CODE.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_upstream_http_errors(
    stubs: tuple[ChatStub, ConvStub],
    upstream: ScriptedUpstream,
    status: int,
    headers: dict[str, str],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    chat, convs = stubs
    upstream.fail(status, headers=headers, times=2)  # MAX_RETRIES=1 retries 429/5xx once
    with rpc_error(code) as err:
        await events_of(chat, content="hi")
    assert err.reason == reason and KEY not in err.message
    assert err.metadata["provider"] == "openai"
    if status == 429:
        assert err.retry_delay == 3
    listed = await convs.ListConversations(cpb.ListConversationsRequest())
    conv = await convs.GetConversation(
        cpb.GetConversationRequest(name=listed.conversations[0].name)
    )
    assert [m.role for m in conv.messages] == [cpb.ROLE_USER]  # acknowledged, nothing invented


async def test_slow_upstream_is_deadline_exceeded(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, _ = stubs
    upstream.stall(3)  # longer than READ_TIMEOUT_SECONDS=1
    upstream.stall(3)
    with rpc_error(CODE.DEADLINE_EXCEEDED) as err:
        await events_of(chat, content="hi")
    assert err.reason == "UPSTREAM_TIMEOUT"


async def test_cut_mid_stream_stores_incomplete(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, convs = stubs
    upstream.cut_after(2, ["one ", "two ", "three "], delay=0.02)
    received: list[str] = []
    with rpc_error(CODE.UNAVAILABLE):
        async for event in chat.StreamChat(chat_pb2.ChatRequest(content="count")):
            if event.WhichOneof("event") == "delta":
                received.append(event.delta.text)
            elif event.WhichOneof("event") == "started":
                name = event.started.conversation
    assert received == ["one ", "two "]
    conv = await convs.GetConversation(cpb.GetConversationRequest(name=name))
    reply = conv.messages[-1]
    assert reply.status == cpb.MESSAGE_STATUS_INCOMPLETE and reply.content == "one two "
    assert reply.incomplete_reason.startswith("upstream_error: UPSTREAM_UNAVAILABLE")


async def test_caller_cancel_cancels_upstream_and_keeps_partial(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, convs = stubs
    upstream.reply(["a", "b", "c", "d", "e", "f"], delay=0.3)
    call = chat.StreamChat(chat_pb2.ChatRequest(content="slow please"))
    name = ""
    deltas = 0
    async for event in call:
        if event.WhichOneof("event") == "started":
            name = event.started.conversation
        if event.WhichOneof("event") == "delta":
            deltas += 1
            if deltas == 2:
                call.cancel()
                break
    await upstream.wait_for(lambda: upstream.disconnects == 1)
    for _ in range(50):
        conv = await convs.GetConversation(cpb.GetConversationRequest(name=name))
        if len(conv.messages) == 2:
            break
        await asyncio.sleep(0.05)
    reply = conv.messages[-1]
    assert reply.status == cpb.MESSAGE_STATUS_INCOMPLETE and reply.incomplete_reason == "cancelled"
    assert reply.content.startswith("ab")
    assert upstream.completed == 0


async def test_deltas_are_not_held_back(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream
) -> None:
    chat, _ = stubs
    upstream.reply(["1", "2", "3", "4"], delay=0.2)
    arrivals = []
    async for event in chat.StreamChat(chat_pb2.ChatRequest(content="tick")):
        if event.WhichOneof("event") == "delta":
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 4 and all(gap >= 0.15 for gap in gaps), gaps


@pytest.mark.parametrize("together", [False, True], ids=["chunk-by-chunk", "one-read"])
async def test_upstream_ignoring_max_tokens_is_cut(
    stubs: tuple[ChatStub, ConvStub], upstream: ScriptedUpstream, together: bool
) -> None:
    """Cut at max_tokens + 16 tokens, also inside one delta that carries it all."""
    chat, _ = stubs
    upstream.reply(["word "] * 500, together=together)
    reply = await chat.Chat(
        chat_pb2.ChatRequest(content="go", params=common_pb2.GenerationParams(max_tokens=5))
    )
    assert reply.reply.finish_reason == "length"
    assert 5 <= reply.reply.content.count("word") <= 5 + 16
    assert reply.reply.content.startswith("word word")


async def test_history_is_trimmed_to_the_token_budget(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    async with (
        running_app(tmp_path / "d", routes=routes(upstream), context_token_budget=300) as srv,
        grpc.aio.insecure_channel(srv.grpc_target) as ch,
    ):
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        conv = await convs.CreateConversation(
            cpb.CreateConversationRequest(conversation=cpb.Conversation())
        )
        for i in range(10):
            await convs.CreateMessage(
                cpb.CreateMessageRequest(
                    parent=conv.name,
                    message=cpb.Message(role=cpb.ROLE_USER, content=f"old{i} " + "filler " * 40),
                )
            )
        upstream.reply(["ok"])
        await chat.Chat(
            chat_pb2.ChatRequest(
                conversation=conv.name,
                content="newest",
                params=common_pb2.GenerationParams(system_prompt="sys"),
            )
        )
    sent = upstream.requests[-1].json["messages"]
    assert sent[0] == {"role": "system", "content": "sys"}
    assert sent[-1] == {"role": "user", "content": "newest"}
    assert 1 < len(sent) < 12 and sent[1]["content"].startswith("old")
    assert sent[1]["content"].split()[0] != "old0"  # the oldest went first
