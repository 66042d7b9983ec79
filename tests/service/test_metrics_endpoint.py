"""After real calls, /metrics shows the RPC, token, TTFT and overhead series with counts
that match the calls made (gRPC and REST alike)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream


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
    async with running_app(tmp_path / "data", routes=routes) as running:
        yield running


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    table: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in table.items() if n == name and want <= set(ls))


async def test_metrics_count_what_happened(srv: RunningServer, upstream: ScriptedUpstream) -> None:
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        upstream.reply(["a", "b", "c"], usage=(10, 3))
        await chat.Chat(chat_pb2.ChatRequest(content="one"))
        upstream.reply(["d", "e"], delay=0.02, usage=(20, 2))  # two reads, two deltas
        async for _ in chat.StreamChat(chat_pb2.ChatRequest(content="two")):
            pass
        with pytest.raises(grpc.aio.AioRpcError):
            await convs.GetConversation(cpb.GetConversationRequest(name="conversations/nope"))
    async with httpx.AsyncClient(base_url=srv.http_url) as http:
        listed = await http.get("/api/conversations")
        assert listed.status_code == 200
        scrape = await http.get("/metrics")
    assert scrape.status_code == 200
    m = samples(scrape.text)
    svc_chat = {"grpc_service": "byok.v1.ChatService"}
    assert value(m, "grpc_server_started_total", grpc_method="Chat", **svc_chat) == 1
    assert value(m, "grpc_server_handled_total", grpc_method="StreamChat", grpc_code="OK") == 1
    assert (
        value(m, "grpc_server_handled_total", grpc_method="GetConversation", grpc_code="NotFound")
        == 1
    )
    # the REST call went through the gRPC door too
    assert (
        value(m, "grpc_server_handled_total", grpc_method="ListConversations", grpc_code="OK") == 1
    )
    # started, 2 deltas, usage, done
    assert value(m, "grpc_server_msg_sent_total", grpc_method="StreamChat") == 5
    assert value(m, "byok_http_requests_total", route="/api/conversations", status="200") == 1
    llm = {"route": "FAST", "model": "gpt-4o-mini", "provider": "openai"}
    assert value(m, "byok_llm_requests_total", **llm) == 2
    assert value(m, "byok_llm_input_tokens_total", **llm) == 30
    assert value(m, "byok_llm_output_tokens_total", **llm) == 5
    assert value(m, "byok_llm_time_to_first_token_seconds_count", **llm) == 2
    assert 0 < value(m, "byok_llm_time_to_first_token_seconds_sum", **llm) < 10
    assert value(m, "byok_gateway_overhead_seconds_count", **llm) == 2
    assert 0 < value(m, "byok_gateway_overhead_seconds_sum", **llm) < 2
    assert value(m, "byok_llm_active_streams", **llm) == 0
    # Each turn started a thread: thread + user message in one store call, then the reply.
    db_count = "byok_db_query_duration_seconds_count"
    assert value(m, db_count, operation="create_conversation_with_messages") == 2
    assert value(m, db_count, operation="append_messages") >= 2
    assert value(m, "byok_db_size_bytes") > 0
