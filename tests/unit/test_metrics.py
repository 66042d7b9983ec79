"""Metrics: names, labels, per-instance registries, scrape-time values, the helpers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from byok.server.errors import FailedPrecondition, NotFound
from byok.server.observability import begin_rpc, current_request_id, status_of
from byok.server.observability.metrics import (
    ROUTE_SCOPE_KEY,
    HttpMetricsMiddleware,
    Metrics,
    error_kind,
    grpc_code_label,
    instrument_store,
    split_method,
    sqlite_size,
)

CHAT = "/byok.v1.ChatService/StreamChat"
LLM = {"route": "FAST", "model": "gpt-4o-mini", "provider": "openai"}
TURN = ("FAST", "gpt-4o-mini", "openai")


def value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_split_method() -> None:
    assert split_method(CHAT) == ("byok.v1.ChatService", "StreamChat")
    assert split_method("odd") == ("unknown", "odd")
    assert split_method("") == ("unknown", "unknown")


def test_rpc_metrics_use_go_grpc_prometheus_names_and_labels() -> None:
    m = Metrics(process=False)
    m.rpc_started(CHAT, "server_stream")
    m.rpc_msg_received(CHAT, "server_stream")
    for _ in range(3):
        m.rpc_msg_sent(CHAT, "server_stream")
    m.rpc_handled(CHAT, "server_stream", "OK", 0.2)
    m.rpc_started(CHAT, "server_stream")
    m.rpc_handled(CHAT, "server_stream", "RESOURCE_EXHAUSTED", 0.001)
    m.rpc_handled(CHAT, "server_stream", "NotFound", 0.001)  # already in Go's spelling
    m.rpc_handled(CHAT, "server_stream", "NONSENSE", 0.001)
    rpc = {"grpc_type": "server_stream", "grpc_service": "byok.v1.ChatService"}
    rpc["grpc_method"] = "StreamChat"
    assert value(m, "grpc_server_started_total", **rpc) == 2
    assert value(m, "grpc_server_msg_received_total", **rpc) == 1
    assert value(m, "grpc_server_msg_sent_total", **rpc) == 3
    assert value(m, "grpc_server_handled_total", **rpc, grpc_code="OK") == 1
    assert value(m, "grpc_server_handled_total", **rpc, grpc_code="ResourceExhausted") == 1
    assert value(m, "grpc_server_handled_total", **rpc, grpc_code="NotFound") == 1
    assert value(m, "grpc_server_handled_total", **rpc, grpc_code="Unknown") == 1
    assert value(m, "grpc_server_handling_seconds_count", **rpc) == 4
    assert value(m, "grpc_server_handling_seconds_bucket", **rpc, le="0.001") == 3
    assert value(m, "grpc_server_handling_seconds_sum", **rpc) == pytest.approx(0.203)


def test_code_labels() -> None:
    assert grpc_code_label("CANCELLED") == "Canceled"
    assert grpc_code_label("FAILED_PRECONDITION") == "FailedPrecondition"
    assert grpc_code_label("OK") == "OK"


def test_two_instances_do_not_collide() -> None:
    a, b = Metrics(), Metrics()  # process collectors included: still no clash
    a.rpc_started(CHAT, "unary")
    labels = {"grpc_type": "unary", "grpc_service": "byok.v1.ChatService"}
    assert value(a, "grpc_server_started_total", **labels, grpc_method="StreamChat") == 1
    assert value(b, "grpc_server_started_total", **labels, grpc_method="StreamChat") == 0
    body, content_type = b.exposition()
    assert content_type.startswith("text/plain")
    assert b"# TYPE byok_llm_requests_total counter" in body
    assert b"process_" in body or b"python_info" in body


def test_exposition_speaks_openmetrics_when_asked() -> None:
    body, content_type = Metrics(process=False).exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_llm_turn_events() -> None:
    m = Metrics(process=False)
    m.llm_turn_started(**LLM)
    assert value(m, "byok_llm_active_streams", **LLM) == 1
    m.llm_first_token(**LLM, ttft_s=0.3)
    m.llm_upstream_retry(**LLM, count=2)
    m.llm_turn_finished(
        **LLM,
        ttft_s=0.3,
        duration_s=2.3,
        input_tokens=120,
        output_tokens=40,
        overhead_s=0.002,
        error_kind=None,
    )
    assert value(m, "byok_llm_active_streams", **LLM) == 0
    assert value(m, "byok_llm_requests_total", **LLM) == 1
    assert value(m, "byok_llm_input_tokens_total", **LLM) == 120
    assert value(m, "byok_llm_output_tokens_total", **LLM) == 40
    assert value(m, "byok_llm_upstream_retries_total", **LLM) == 2
    assert value(m, "byok_llm_time_to_first_token_seconds_sum", **LLM) == pytest.approx(0.3)
    assert value(m, "byok_llm_duration_seconds_sum", **LLM) == pytest.approx(2.3)
    # 40 tokens over the 2.0 s after the first one
    assert value(m, "byok_llm_output_tokens_per_second_sum", **LLM) == pytest.approx(20.0)
    assert value(m, "byok_gateway_overhead_seconds_sum", **LLM) == pytest.approx(0.002)
    assert value(m, "byok_llm_errors_total", **LLM, kind="UPSTREAM_RATE_LIMITED") == 0

    m.llm_turn_started(**LLM)
    m.llm_turn_finished(
        **LLM,
        ttft_s=None,
        duration_s=0.5,
        input_tokens=0,
        output_tokens=0,
        overhead_s=None,
        error_kind="UPSTREAM_RATE_LIMITED",
    )
    assert value(m, "byok_llm_errors_total", **LLM, kind="UPSTREAM_RATE_LIMITED") == 1
    assert value(m, "byok_llm_output_tokens_per_second_count", **LLM) == 1  # no rate without tokens
    assert value(m, "byok_gateway_overhead_seconds_count", **LLM) == 1


async def test_llm_turn_handle_keeps_the_clocks() -> None:
    m = Metrics(process=False)
    turn = m.llm_turn(*TURN)
    assert value(m, "byok_llm_active_streams", **LLM) == 1
    turn.upstream_sent()
    await asyncio.sleep(0.02)
    turn.first_token()
    turn.first_token()  # only the first counts
    await asyncio.sleep(0.02)
    turn.upstream_done()
    turn.finish(input_tokens=10, output_tokens=5)
    turn.finish(input_tokens=10, output_tokens=5, error=RuntimeError())  # ignored
    assert value(m, "byok_llm_active_streams", **LLM) == 0
    assert value(m, "byok_llm_time_to_first_token_seconds_count", **LLM) == 1
    assert 0.015 < value(m, "byok_llm_time_to_first_token_seconds_sum", **LLM) < 1
    assert 0.035 < value(m, "byok_llm_duration_seconds_sum", **LLM) < 1
    assert value(m, "byok_llm_output_tokens_total", **LLM) == 5
    assert value(m, "byok_gateway_overhead_seconds_count", **LLM) == 1
    assert value(m, "byok_gateway_overhead_seconds_sum", **LLM) < 0.015
    assert sum(value(m, "byok_llm_errors_total", **LLM, kind=k) for k in ("internal",)) == 0

    cancelled = m.llm_turn(*TURN)
    cancelled.finish(error=asyncio.CancelledError())
    assert value(m, "byok_llm_errors_total", **LLM, kind="cancelled") == 1
    assert value(m, "byok_gateway_overhead_seconds_count", **LLM) == 1  # never reached the end


async def test_llm_turn_as_a_context_manager_in_a_generator() -> None:
    """The engine's shape: a generator that may be closed mid-stream or fail."""
    m = Metrics(process=False)

    async def relay(fail: bool) -> Any:
        with m.llm_turn(*TURN) as turn:
            turn.upstream_sent()
            for i in range(3):
                turn.first_token()
                yield i
            if fail:
                turn.tokens(50, 3)  # what the stored partial reply counted
                raise FailedPrecondition("bad key", reason="PROVIDER_AUTH_FAILED")
            turn.upstream_done()
            turn.finish(input_tokens=50, output_tokens=3)
            yield "done"

    assert [e async for e in relay(False)] == [0, 1, 2, "done"]
    closed = relay(False)
    assert await closed.__anext__() == 0
    await closed.aclose()  # the caller went away mid-stream
    with pytest.raises(FailedPrecondition):
        _ = [e async for e in relay(True)]
    assert value(m, "byok_llm_requests_total", **LLM) == 3
    assert value(m, "byok_llm_active_streams", **LLM) == 0
    assert value(m, "byok_llm_errors_total", **LLM, kind="cancelled") == 1
    assert value(m, "byok_llm_errors_total", **LLM, kind="PROVIDER_AUTH_FAILED") == 1
    assert value(m, "byok_llm_output_tokens_total", **LLM) == 6
    assert value(m, "byok_llm_input_tokens_total", **LLM) == 100
    assert value(m, "byok_gateway_overhead_seconds_count", **LLM) == 1  # only the full turn


async def test_llm_turn_overhead_counts_from_the_rpc_arrival() -> None:
    m = Metrics(process=False)

    async def call() -> None:
        begin_rpc(m, CHAT, "server_stream", "req-1")
        await asyncio.sleep(0.03)  # byok's own work before the upstream call
        turn = m.llm_turn(*TURN)
        turn.upstream_sent()
        turn.upstream_done()
        turn.finish()

    await asyncio.create_task(call())
    assert 0.025 < value(m, "byok_gateway_overhead_seconds_sum", **LLM) < 1


def test_error_kind() -> None:
    assert error_kind(FailedPrecondition("x", reason="PROVIDER_AUTH_FAILED")) == (
        "PROVIDER_AUTH_FAILED"
    )
    assert error_kind(asyncio.CancelledError()) == "cancelled"
    assert error_kind(GeneratorExit()) == "cancelled"
    assert error_kind(ValueError()) == "internal"


def test_db_size_is_read_at_scrape_time(tmp_path: Path) -> None:
    sizes: list[float | None] = [None]
    m = Metrics(db_size=lambda: sizes[-1], process=False)
    assert m.registry.get_sample_value("byok_db_size_bytes") is None
    sizes.append(4096.0)
    assert m.registry.get_sample_value("byok_db_size_bytes") == 4096.0
    sizes.append(8192.0)
    assert m.registry.get_sample_value("byok_db_size_bytes") == 8192.0

    def broken() -> float:
        raise OSError("gone")

    m.db_size = broken
    assert m.registry.get_sample_value("byok_db_size_bytes") is None  # the scrape still works
    assert b"byok_db_size_bytes" in m.exposition()[0]

    db = tmp_path / "byok.db"
    size = sqlite_size(db)
    assert size() is None
    db.write_bytes(b"x" * 100)
    (tmp_path / "byok.db-wal").write_bytes(b"x" * 20)
    assert size() == 120.0


class FakeStore:
    def __init__(self) -> None:
        self.path = "here"

    async def get_user(self, user_id: str) -> str:
        await asyncio.sleep(0.01)
        return user_id

    async def broken(self) -> None:
        raise RuntimeError("locked")

    def plain(self) -> int:
        return 7


async def test_instrument_store_times_each_coroutine_method() -> None:
    m = Metrics(process=False)
    store = instrument_store(FakeStore(), m)
    assert await store.get_user("ada") == "ada"
    assert await store.get_user("bob") == "bob"
    with pytest.raises(RuntimeError):
        await store.broken()
    assert store.plain() == 7 and store.path == "here"
    assert value(m, "byok_db_query_duration_seconds_count", operation="get_user") == 2
    assert value(m, "byok_db_query_duration_seconds_sum", operation="get_user") >= 0.015
    assert value(m, "byok_db_query_duration_seconds_count", operation="broken") == 1
    assert value(m, "byok_db_query_duration_seconds_count", operation="plain") == 0
    with m.time_db("vacuum"):
        pass
    assert value(m, "byok_db_query_duration_seconds_count", operation="vacuum") == 1


def test_ratelimit_counters_start_at_zero() -> None:
    m = Metrics(process=False)
    assert m.registry.get_sample_value("byok_ratelimit_refused_total", {"kind": "tokens"}) == 0
    m.ratelimit_refused("tokens")
    m.ratelimit_backend_error()
    assert value(m, "byok_ratelimit_refused_total", kind="tokens") == 1
    assert value(m, "byok_ratelimit_backend_errors_total") == 1


async def test_http_middleware_labels_by_route_template() -> None:
    m = Metrics(process=False)

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["id"])

    async def gateway(request: Request) -> PlainTextResponse:
        if request.url.path.startswith("/api/conversations/"):
            request.scope[ROUTE_SCOPE_KEY] = "/api/conversations/{conversation}"
            return PlainTextResponse("found")
        return PlainTextResponse("nope", status_code=404)

    async def stream(_: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for part in ("a", "b"):
                await asyncio.sleep(0.01)
                yield part

        return StreamingResponse(chunks())

    app = Starlette(
        routes=[
            Route("/items/{id}", item),
            Route("/stream", stream),
            Route("/{path:path}", gateway),
        ],
        middleware=[Middleware(HttpMetricsMiddleware, metrics=m)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/items/1")).text == "1"
        await client.get("/items/2")
        await client.get("/api/conversations/abc")
        await client.get("/whatever/raw/path")
        await client.get("/stream")
        await client.request("BREW", "/items/3")
    assert (
        value(m, "byok_http_requests_total", method="GET", route="/items/{id}", status="200") == 2
    )
    conv = "/api/conversations/{conversation}"
    assert value(m, "byok_http_requests_total", method="GET", route=conv, status="200") == 1
    assert value(m, "byok_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(m, "byok_http_requests_total", method="OTHER", route="/items/{id}", status="405")
    assert value(m, "byok_http_request_duration_seconds_sum", method="GET", route="/stream") > 0.015
    assert b"/whatever" not in m.exposition()[0]


class FakeContext:
    def __init__(self, code: grpc.StatusCode | None) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code


def test_status_of() -> None:
    assert status_of(None, FakeContext(None)) == "OK"
    assert status_of(NotFound("x"), FakeContext(None)) == "NOT_FOUND"
    assert status_of(asyncio.CancelledError(), FakeContext(None)) == "CANCELLED"
    abort = grpc.aio.AbortError()
    assert status_of(abort, FakeContext(grpc.StatusCode.PERMISSION_DENIED)) == "PERMISSION_DENIED"
    assert status_of(ValueError(), FakeContext(None)) == "INTERNAL"
    assert status_of(ValueError(), SimpleNamespace()) == "INTERNAL"


async def test_begin_rpc_counts_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(process=False)
    caplog.set_level(logging.INFO, logger="byok.access")

    async def call() -> str | None:
        rpc = begin_rpc(m, "/byok.v1.ConversationService/GetConversation", "unary", "rid-7")
        seen = current_request_id.get()
        rpc.message_sent()
        rpc.finish("NOT_FOUND", "ada")
        rpc.finish("OK", "ada")  # once only
        return seen

    assert await asyncio.create_task(call()) == "rid-7"
    labels = {
        "grpc_type": "unary",
        "grpc_service": "byok.v1.ConversationService",
        "grpc_method": "GetConversation",
    }
    assert value(m, "grpc_server_started_total", **labels) == 1
    assert value(m, "grpc_server_msg_received_total", **labels) == 1
    assert value(m, "grpc_server_handled_total", **labels, grpc_code="NotFound") == 1
    assert value(m, "grpc_server_handled_total", **labels, grpc_code="OK") == 0
    [record] = [r for r in caplog.records if r.name == "byok.access"]
    assert record.levelno == logging.INFO
    assert vars(record)["code"] == "NOT_FOUND" and vars(record)["user"] == "ada"
    assert vars(record)["request_id"] == "rid-7"
