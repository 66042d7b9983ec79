"""StreamChat over REST against a scripted OpenAI-compatible upstream: SSE event
names and data, heartbeats while the upstream is slow, NDJSON, and a closed HTTP
connection cancelling the turn (stored as incomplete by the chat service)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import serve_gateway
from tests.gateway.test_stream_edges import sse_events
from tests.support.servers import running_app
from tests.support.upstream import ScriptedUpstream

SSE = {"accept": "text/event-stream"}


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedUpstream]]:
    async with ScriptedUpstream() as upstream:
        routes = {
            "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
            "OPENAI_API_KEY": "sk-test-0000000000",
            "OPENAI_BASE_URL": upstream.base_url,
        }
        async with (
            running_app(tmp_path / "data", routes=routes) as server,
            serve_gateway(server.grpc_target, heartbeat_seconds=0.05) as url,
            httpx.AsyncClient(base_url=url, timeout=20) as http,
        ):
            yield http, upstream


async def test_stream_chat_as_sse_with_heartbeats(
    chat: tuple[httpx.AsyncClient, ScriptedUpstream],
) -> None:
    http, upstream = chat
    upstream.reply(["Hel", "lo"], delay=0.25, usage=(5, 2))
    reply = await http.post("/api/chat/stream", json={"content": "hi"}, headers=SSE)
    assert reply.status_code == 200
    assert reply.headers["x-accel-buffering"] == "no"
    events = sse_events(reply.text)
    kinds = [kind for kind, _ in events if kind != "comment"]
    assert kinds == ["started", "delta", "delta", "usage", "done"]
    assert ("comment", "heartbeat") in events
    data = [json.loads(d) for kind, d in events if kind != "comment"]
    assert [d["sequence"] for d in data] == ["1", "2", "3", "4", "5"]
    assert data[0]["started"]["route"] == "FAST" and data[0]["started"]["model"] == "gpt-4o-mini"
    assert "".join(d["delta"]["text"] for d in data[1:3]) == "Hello"
    assert data[3]["usage"]["completionTokens"] == "2"
    assert data[4]["done"]["finishReason"] == "stop"


async def test_stream_chat_as_ndjson_and_chat(
    chat: tuple[httpx.AsyncClient, ScriptedUpstream],
) -> None:
    http, upstream = chat
    upstream.reply(["Hi", "!"], delay=0.02)
    reply = await http.post("/api/chat/stream", json={"content": "hi"})
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line)["result"] for line in reply.text.splitlines()]
    assert [next(k for k in line if k != "sequence") for line in lines] == [
        "started",
        "delta",
        "delta",
        "usage",
        "done",
    ]
    upstream.reply(["Whole ", "reply"])
    whole = await http.post("/api/chat", json={"content": "again"})
    assert whole.status_code == 200, whole.text
    assert whole.json()["reply"]["content"] == "Whole reply"


async def test_closing_the_stream_cancels_the_turn(
    chat: tuple[httpx.AsyncClient, ScriptedUpstream],
) -> None:
    http, upstream = chat
    upstream.reply(["one ", "two ", "three ", "four "], delay=0.4)
    conversation = ""
    async with http.stream("POST", "/api/chat/stream", json={"content": "count"}, headers=SSE) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and "started" in line:
                conversation = json.loads(line[6:])["started"]["conversation"]
            if line.startswith("event: delta"):
                break
    assert conversation
    # The chat service saw the cancellation: the reply is stored cut short.
    for _ in range(100):
        messages = (await http.get(f"/api/{conversation}/messages")).json()["messages"]
        if len(messages) == 2 and messages[1]["status"] == "MESSAGE_STATUS_INCOMPLETE":
            break
        await asyncio.sleep(0.05)
    assert messages[1]["status"] == "MESSAGE_STATUS_INCOMPLETE", messages
    assert "cancel" in messages[1]["incompleteReason"]
    assert messages[1]["content"].startswith("one")
