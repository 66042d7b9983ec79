"""Upstream faults, through the real server: the caller gets a clear status, the
acknowledged user message is kept, and a partial reply is stored INCOMPLETE with why."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.reliability.conftest import SocketUpstream, route_env
from tests.support.rpc import rpc_error
from tests.support.servers import RunningServer, free_port, running_app
from tests.support.upstream import ScriptedUpstream

if TYPE_CHECKING:
    ChatStub = chat_pb2_grpc.ChatServiceAsyncStub
    ConvStub = conversations_pb2_grpc.ConversationServiceAsyncStub

CODE = grpc.StatusCode
READ_TIMEOUT = 1.0


@dataclass
class Byok:
    server: RunningServer
    chat: ChatStub
    convs: ConvStub


@contextlib.asynccontextmanager
async def byok(data: Path, base_url: str, **extra: str) -> AsyncIterator[Byok]:
    routes = route_env(base_url, READ_TIMEOUT_SECONDS=f"{READ_TIMEOUT:g}", **extra)
    async with running_app(data, routes=routes) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield Byok(
                server,
                chat_pb2_grpc.ChatServiceStub(channel),
                conversations_pb2_grpc.ConversationServiceStub(channel),
            )


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@dataclass
class Seen:
    conversation: str = ""
    text: str = ""
    finish_reason: str = ""


async def stream(chat: ChatStub, seen: Seen, **request: Any) -> None:
    async for event in chat.StreamChat(chat_pb2.ChatRequest(**request), timeout=60):
        kind = event.WhichOneof("event")
        if kind == "started":
            seen.conversation = event.started.conversation
        elif kind == "delta":
            seen.text += event.delta.text
        elif kind == "done":
            seen.finish_reason = event.done.finish_reason


async def stored(convs: ConvStub, seen: Seen) -> list[cpb.Message]:
    assert seen.conversation, "the turn was never acknowledged"
    conv = await convs.GetConversation(cpb.GetConversationRequest(name=seen.conversation))
    assert conv.messages[0].role == cpb.ROLE_USER, "the acknowledged user message is kept"
    return list(conv.messages)


def assert_incomplete(messages: list[cpb.Message], text: str, reason: str) -> None:
    assert [m.role for m in messages] == [cpb.ROLE_USER, cpb.ROLE_ASSISTANT]
    reply = messages[1]
    assert reply.status == cpb.MESSAGE_STATUS_INCOMPLETE
    assert reply.content == text and text, (reply.content, text)
    assert reply.incomplete_reason.startswith(f"upstream_error: {reason}"), reply


async def test_no_bytes_past_read_timeout_is_deadline_exceeded(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    upstream.stall(10)
    upstream.stall(10)
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        started = time.monotonic()
        with rpc_error(CODE.DEADLINE_EXCEEDED) as err:
            await stream(b.chat, seen, content="anyone there?")
        took = time.monotonic() - started
        messages = await stored(b.convs, seen)
    assert err.reason == "UPSTREAM_TIMEOUT" and "READ_TIMEOUT_SECONDS" in err.message
    assert took < 20, f"a {READ_TIMEOUT:g}s read timeout took {took:.1f}s"
    assert [m.role for m in messages] == [cpb.ROLE_USER]  # no reply invented


async def test_silence_mid_stream_is_deadline_exceeded_and_stored_incomplete(
    tmp_path: Path,
) -> None:
    seen = Seen()
    async with SocketUpstream(["one ", "two "], then="stall", settle=0) as up:
        async with byok(tmp_path / "data", up.base_url) as b:
            with rpc_error(CODE.DEADLINE_EXCEEDED) as err:
                await stream(b.chat, seen, content="count")
            messages = await stored(b.convs, seen)
    assert err.reason == "UPSTREAM_TIMEOUT"
    assert seen.text == "one two "
    assert_incomplete(messages, "one two ", "UPSTREAM_TIMEOUT")


async def test_connection_reset_mid_stream_is_unavailable_and_stored_incomplete(
    tmp_path: Path,
) -> None:
    seen = Seen()
    async with SocketUpstream(["one ", "two "], then="reset") as up:
        async with byok(tmp_path / "data", up.base_url) as b:
            with rpc_error(CODE.UNAVAILABLE) as err:
                await stream(b.chat, seen, content="count")
            messages = await stored(b.convs, seen)
        assert up.requests == 1, "a stream that already sent text is never retried"
    assert err.reason == "UPSTREAM_UNAVAILABLE", err
    assert "broke off the stream after 2 text chunks" in err.message
    assert_incomplete(messages, seen.text, "UPSTREAM_UNAVAILABLE")


async def test_connection_closed_mid_stream_is_unavailable_and_stored_incomplete(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    upstream.cut_after(2, ["one ", "two ", "three "], delay=0.05)
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        with rpc_error(CODE.UNAVAILABLE) as err:
            await stream(b.chat, seen, content="count")
        messages = await stored(b.convs, seen)
    assert err.reason in {"UPSTREAM_UNAVAILABLE", "UPSTREAM_DISCONNECTED"}, err
    assert_incomplete(messages, "one two ", err.reason)


def _chunk(text: str) -> str:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return "data: " + json.dumps(
        {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}
    )


@pytest.mark.parametrize("after_text", [False, True], ids=["first-line", "after-text"])
async def test_malformed_stream_line_is_unavailable(
    tmp_path: Path, upstream: ScriptedUpstream, after_text: bool
) -> None:
    lines = [_chunk("partial "), "data: {not json at all"] if after_text else ["data: <html>"]
    upstream.raw(lines)
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        with rpc_error(CODE.UNAVAILABLE) as err:
            await stream(b.chat, seen, content="hello")
        messages = await stored(b.convs, seen)
    assert err.reason == "UPSTREAM_MALFORMED" and "malformed stream line" in err.message
    if after_text:
        assert_incomplete(messages, "partial ", "UPSTREAM_MALFORMED")
    else:
        assert [m.role for m in messages] == [cpb.ROLE_USER]


async def test_error_event_in_a_200_stream_is_unavailable_with_the_upstream_message(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    error = {"error": {"message": "The model is overloaded, try later", "type": "server_error"}}
    upstream.raw([_chunk("so far "), "data: " + json.dumps(error)])
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        with rpc_error(CODE.UNAVAILABLE) as err:
            await stream(b.chat, seen, content="hello")
        messages = await stored(b.convs, seen)
    assert err.reason == "UPSTREAM_ERROR"
    assert "The model is overloaded, try later" in err.message
    assert_incomplete(messages, "so far ", "UPSTREAM_ERROR")


async def test_json_error_body_with_status_200_is_unavailable_with_the_upstream_message(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    """Some gateways answer a streamed request with `200 application/json {"error": ...}`."""
    error = {"error": {"message": "quota exceeded for this deployment", "type": "server_error"}}
    upstream.fail(200, error)
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        with rpc_error(CODE.UNAVAILABLE) as err:
            await stream(b.chat, seen, content="hello")
        messages = await stored(b.convs, seen)
    assert [m.role for m in messages] == [cpb.ROLE_USER]
    assert err.reason == "UPSTREAM_ERROR", err
    assert "quota exceeded for this deployment" in err.message


async def test_endless_stream_is_cut_at_max_tokens(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    # Far past any max_tokens, no finish in sight. Paced, so the scripted upstream notices
    # the disconnect (unpaced, it would spin through the script after the client left).
    upstream.reply([" word"] * 100_000, delay=0.002)
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url) as b:
        started = time.monotonic()
        await stream(
            b.chat,
            seen,
            content="talk forever",
            params=common_pb2.GenerationParams(max_tokens=20),
        )
        took = time.monotonic() - started
        messages = await stored(b.convs, seen)
        await upstream.wait_for(lambda: upstream.disconnects == 1, within=30)
    reply = messages[-1]
    assert seen.finish_reason == "length" and reply.finish_reason == "length"
    assert reply.status == cpb.MESSAGE_STATUS_COMPLETE and reply.content == seen.text
    assert 20 <= reply.usage.completion_tokens <= 20 + 16 + 2, reply.usage
    assert len(reply.content) < 400, len(reply.content)
    assert took < 30
    assert upstream.requests[-1].json["max_tokens"] == 20
    assert upstream.completed == 0, "the upstream stream was closed, not read to the end"


async def test_provider_down_at_start_is_unavailable_quickly_and_the_rest_works(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    closed = free_port()  # bound and released: nothing listens there
    extra = {
        "MODEL_ROUTE_DOWN": "down/some-model",
        "PROVIDER_DOWN_BASE_URL": f"http://127.0.0.1:{closed}/v1",
        "MAX_RETRIES": "2",
    }
    seen = Seen()
    async with byok(tmp_path / "data", upstream.base_url, **extra) as b:
        started = time.monotonic()
        with rpc_error(CODE.UNAVAILABLE) as err:
            await stream(b.chat, seen, content="hello?", model_key="down")
        took = time.monotonic() - started
        messages = await stored(b.convs, seen)
        assert [m.role for m in messages] == [cpb.ROLE_USER]
        # The server is still up and the other route works.
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{b.server.http_url}/readyz")
        assert ready.status_code == 200
        ok = await b.chat.Chat(chat_pb2.ChatRequest(content="still there?", model_key="fast"))
        assert ok.reply.content == "echo: still there?"
    assert err.reason == "UPSTREAM_UNAVAILABLE" and err.metadata["provider"] == "down"
    assert "could not be reached" in err.message
    assert took < 20, f"2 retries against a closed port took {took:.1f}s"
