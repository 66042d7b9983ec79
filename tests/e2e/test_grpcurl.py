"""grpcurl, a client nobody here wrote, against the live server over reflection."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.support.servers import BIN, RunningServer


async def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl off the event loop, which the in-process server needs."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_grpcurl_lists_services(server: RunningServer) -> None:
    result = await grpcurl(server.grpc_target, "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    for name in [
        "byok.v1.ChatService",
        "byok.v1.ConversationService",
        "byok.v1.ModelService",
        "byok.v1.SpaceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]:
        assert name in listed


async def test_grpcurl_describes_a_service_with_its_http_rules(server: RunningServer) -> None:
    result = await grpcurl(server.grpc_target, "describe", "byok.v1.ConversationService")
    assert result.returncode == 0, result.stderr
    assert "rpc CreateConversation ( .byok.v1.CreateConversationRequest )" in result.stdout
    assert 'post:"/api/conversations"' in result.stdout


async def test_grpcurl_health_check(server: RunningServer) -> None:
    result = await grpcurl(
        "-d",
        '{"service": "byok.v1.ChatService"}',
        server.grpc_target,
        "grpc.health.v1.Health/Check",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


async def test_grpcurl_create_get_and_error_details(server: RunningServer) -> None:
    made = await grpcurl(
        "-d",
        '{"conversation": {"title": "from grpcurl"}}',
        server.grpc_target,
        "byok.v1.ConversationService/CreateConversation",
    )
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["name"]
    got = await grpcurl(
        "-d",
        json.dumps({"name": name, "view": "CONVERSATION_VIEW_BASIC"}),
        server.grpc_target,
        "byok.v1.ConversationService/GetConversation",
    )
    assert got.returncode == 0 and json.loads(got.stdout)["title"] == "from grpcurl"
    missing = await grpcurl(
        "-format-error",
        "-d",
        '{"name": "conversations/nope"}',
        server.grpc_target,
        "byok.v1.ConversationService/GetConversation",
    )
    assert missing.returncode != 0
    error = json.loads(missing.stdout or missing.stderr)
    assert error["code"] == 5 and "conversations/nope not found" in error["message"]
    info = error["details"][0]
    assert info["@type"].endswith("google.rpc.ErrorInfo") and info["reason"] == "RESOURCE_NOT_FOUND"


async def test_grpcurl_streams_export_events(server: RunningServer) -> None:
    await grpcurl(
        "-d",
        '{"conversation": {"title": "to export"}}',
        server.grpc_target,
        "byok.v1.ConversationService/CreateConversation",
    )
    streamed = await grpcurl(
        "-d", "{}", server.grpc_target, "byok.v1.ConversationService/ExportConversations"
    )
    assert streamed.returncode == 0, streamed.stderr
    decoder = json.JSONDecoder()
    events, text = [], streamed.stdout.strip()
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    assert [e["sequence"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    summary = events[-1]["summary"]
    assert summary.get("conversationCount", summary.get("conversation_count")) == "1", summary


async def test_grpcurl_streams_a_chat_from_the_local_model(server: RunningServer) -> None:
    streamed = await grpcurl(
        "-d",
        '{"content": "Say hi.", "params": {"max_tokens": 4}}',
        server.grpc_target,
        "byok.v1.ChatService/StreamChat",
    )
    assert streamed.returncode == 0, streamed.stderr
    decoder = json.JSONDecoder()
    kinds, text = [], streamed.stdout.strip()
    while text:
        event, end = decoder.raw_decode(text)
        kinds.append(next(k for k in event if k != "sequence"))
        text = text[end:].strip()
    assert kinds[0] == "started" and kinds[-2:] == ["usage", "done"] and "delta" in kinds
