"""Request limits: open streams per user, client deadlines, message sizes on both doors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.support.rpc import rpc_error
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream

CODE = grpc.StatusCode


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def srv(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    routes = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "OPENAI_API_KEY": "sk-test-0000000000",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    async with running_app(tmp_path / "data", routes=routes, max_streams_per_user=2) as running:
        yield running


async def test_open_streams_per_user_are_capped(
    srv: RunningServer, upstream: ScriptedUpstream
) -> None:
    for _ in range(3):
        upstream.reply(["x"] * 4, delay=0.3)
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        first = chat.StreamChat(chat_pb2.ChatRequest(content="1"))
        second = chat.StreamChat(chat_pb2.ChatRequest(content="2"))
        await first.read()  # both are open now
        await second.read()
        with rpc_error(CODE.RESOURCE_EXHAUSTED) as err:
            async for _ in chat.StreamChat(chat_pb2.ChatRequest(content="3")):
                pass
        assert err.reason == "TOO_MANY_STREAMS" and err.retry_delay == 1
        for call in (first, second):  # read both to the end
            while await call.read() != grpc.aio.EOF:
                pass
        upstream.reply(["ok"])
        events = [e async for e in chat.StreamChat(chat_pb2.ChatRequest(content="4"))]
        assert events[-1].WhichOneof("event") == "done"  # slots are given back


async def test_a_client_deadline_cancels_the_upstream_call(
    srv: RunningServer, upstream: ScriptedUpstream
) -> None:
    upstream.reply(["slow "] * 10, delay=0.4)
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        name = ""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in chat.StreamChat(chat_pb2.ChatRequest(content="go"), timeout=1.0):
                if event.WhichOneof("event") == "started":
                    name = event.started.conversation
        assert info.value.code() == CODE.DEADLINE_EXCEEDED
        await upstream.wait_for(lambda: upstream.disconnects == 1)
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        for _ in range(50):
            conv = await convs.GetConversation(cpb.GetConversationRequest(name=name))
            if len(conv.messages) == 2:
                break
            await asyncio.sleep(0.05)
        assert conv.messages[-1].status == cpb.MESSAGE_STATUS_INCOMPLETE
        assert conv.messages[-1].incomplete_reason == "cancelled"


async def test_sizes_are_refused_by_size(srv: RunningServer) -> None:
    async with grpc.aio.insecure_channel(
        srv.grpc_target, options=[("grpc.max_send_message_length", 100 * 1024 * 1024)]
    ) as ch:
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await convs.ImportConversations(
                cpb.ImportConversationsRequest(data=b"x" * (65 * 1024 * 1024))
            )
        assert info.value.code() == CODE.RESOURCE_EXHAUSTED  # over the 64 MiB message limit
    async with httpx.AsyncClient(base_url=srv.http_url) as http:
        too_big = await http.post(
            "/api/conversations",
            content=b"{" + b" " * (100 * 1024 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == 413
        conv = (await http.post("/api/conversations", json={})).json()
        huge = await http.post(
            f"/api/{conv['name']}/messages",
            json={"role": "ROLE_USER", "content": "x" * (1024 * 1024 + 1)},
        )
        assert huge.status_code == 400 and "1 MiB" in huge.json()["error"]["message"]
