"""Streams and calls the real server cannot be made to produce on demand, over
the real gateway and a test-only gRPC servicer (tests/gateway/fakes.py):
heartbeats on a slow stream, errors after a stream started, cancellation when the
HTTP caller goes away, Retry-After, metadata forwarding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.conftest import serve_gateway
from tests.gateway.fakes import FakeConversations, fake_grpc_server

SSE = {"accept": "text/event-stream"}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[httpx.AsyncClient, FakeConversations]]:
    async with (
        fake_grpc_server() as (target, servicer),
        serve_gateway(target, heartbeat_seconds=0.1) as url,
        httpx.AsyncClient(base_url=url, timeout=10.0) as client,
    ):
        yield client, servicer


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) per SSE event; comments become ("comment", text)."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
            else:
                key, _, value = line.partition(": ")
                fields[key] = value
        if fields:
            events.append((fields.get("event", "message"), fields.get("data", "")))
    return events


async def test_heartbeats_on_a_slow_stream(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, _ = fake
    reply = await client.post(
        "/api/conversations:export", json={"names": ["heartbeat"]}, headers=SSE
    )
    assert reply.status_code == 200
    events = sse_events(reply.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "data" and kinds[-1] == "summary"
    assert ("comment", "heartbeat") in events
    # A heartbeat between the first and the second data event, and none after the end.
    between = kinds[1 : kinds.index("data", 1)]
    assert between and set(between) == {"comment"}
    assert reply.text.endswith("\n\n")


async def test_ndjson_has_no_heartbeats(fake: tuple[httpx.AsyncClient, FakeConversations]) -> None:
    client, _ = fake
    reply = await client.post("/api/conversations:export", json={"names": ["heartbeat"]})
    lines = reply.text.splitlines()
    assert [next(iter(json.loads(line)["result"].keys() - {"sequence"})) for line in lines] == [
        "data",
        "data",
        "summary",
    ]


async def test_error_after_the_stream_started_is_an_event(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, _ = fake
    reply = await client.post("/api/conversations:export", json={"names": ["fail"]}, headers=SSE)
    assert reply.status_code == 200
    events = [e for e in sse_events(reply.text) if e[0] != "comment"]
    assert [kind for kind, _ in events] == ["data", "error"]
    error = json.loads(events[-1][1])["error"]
    assert error["code"] == 503 and error["status"] == "UNAVAILABLE"
    assert error["message"] == "upstream went away"
    types = [d["@type"].rsplit(".", 1)[-1] for d in error["details"]]
    assert types == ["ErrorInfo", "RetryInfo"]

    reply = await client.post("/api/conversations:export", json={"names": ["fail"]})
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert "result" in lines[0] and lines[-1]["error"]["status"] == "UNAVAILABLE"


async def test_error_before_the_first_event_is_an_http_error(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, _ = fake
    for headers in (SSE, {}):
        reply = await client.post(
            "/api/conversations:export", json={"names": ["fail-first"]}, headers=headers
        )
        assert reply.status_code == 503
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["retry-after"] == "1"  # 0.5 s, rounded up
        assert reply.json()["error"]["status"] == "UNAVAILABLE"


async def test_retry_after_on_resource_exhausted(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, _ = fake
    reply = await client.get("/api/conversations/busy")
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "2"  # 1.2 s, rounded up
    details = reply.json()["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.200s"} in details


async def test_authorization_and_request_id_are_forwarded(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, _ = fake
    reply = await client.get(
        "/api/conversations/echo",
        headers={"authorization": "Bearer k-123", "x-request-id": "req-42"},
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["title"] == "Bearer k-123"
    assert body["metadata"]["x-request-id"] == "req-42"
    assert reply.headers["x-request-id"] == "req-42"
    # Without one, the gateway makes one and sends the same to gRPC and back.
    reply = await client.get("/api/conversations/echo")
    assert reply.headers["x-request-id"] == reply.json()["metadata"]["x-request-id"]
    assert "authorization" not in reply.json()["metadata"]


async def test_closing_an_sse_stream_cancels_the_grpc_call(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, servicer = fake
    async with client.stream(
        "POST", "/api/conversations:export", json={"names": ["slow"]}, headers=SSE
    ) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("event: data"):
                break
        await asyncio.wait_for(servicer.started.wait(), 5)
    # Leaving the block closes the connection mid-stream.
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


async def test_closing_a_unary_call_cancels_the_grpc_call(
    fake: tuple[httpx.AsyncClient, FakeConversations],
) -> None:
    client, servicer = fake
    call = asyncio.create_task(client.get("/api/conversations/slow"))
    await asyncio.wait_for(servicer.started.wait(), 5)
    call.cancel()  # httpx closes the connection
    await asyncio.gather(call, return_exceptions=True)
    await asyncio.wait_for(servicer.cancelled.wait(), 5)
