"""streams.py on its own: heartbeats while a slow source waits, framing, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from byok.server.gateway import streams


async def slow(items: list[str], delay: float) -> AsyncIterator[str]:
    for item in items:
        await asyncio.sleep(delay)
        yield item


async def test_heartbeats_while_waiting_and_items_in_order() -> None:
    out: list[Any] = []
    started = time.monotonic()
    async for item in streams.with_heartbeats(slow(["a", "b"], 0.25), interval=0.05):
        out.append(item)
    assert time.monotonic() - started < 1.0
    assert [x for x in out if not isinstance(x, streams.Heartbeat)] == ["a", "b"]
    beats_before_a = out.index("a")
    beats_between = out.index("b") - beats_before_a - 1
    assert beats_before_a >= 3 and beats_between >= 3


async def test_no_heartbeat_when_items_come_fast() -> None:
    out = [x async for x in streams.with_heartbeats(slow(list("abc"), 0), interval=1.0)]
    assert out == ["a", "b", "c"]


async def test_errors_pass_through_and_a_heartbeat_never_cancels_the_read() -> None:
    reads = 0

    async def source() -> AsyncIterator[str]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.2)  # a cancelled read would never reach the yield
        yield "x"
        raise RuntimeError("boom")

    out: list[Any] = []
    try:
        async for item in streams.with_heartbeats(source(), interval=0.03):
            out.append(item)
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the error was swallowed")
    assert out[-1] == "x" and reads == 1


async def test_closing_early_cancels_the_pending_read() -> None:
    cancelled = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        yield "first"
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield "never"

    items = streams.with_heartbeats(source(), interval=0.02)
    assert await anext(items) == "first"
    assert isinstance(await anext(items), streams.Heartbeat)
    await items.aclose()
    await asyncio.wait_for(cancelled.wait(), 1)


def test_sse_and_ndjson_framing() -> None:
    assert streams.sse_event("delta", b'{"text":"hi"}') == b'event: delta\ndata: {"text":"hi"}\n\n'
    assert streams.SSE_HEARTBEAT == b": heartbeat\n\n"
    assert streams.ndjson_result(b'{"a":1}') == b'{"result":{"a":1}}\n'
    assert streams.ndjson_error(b'{"error":{}}') == b'{"error":{}}\n'
    assert streams.wants_sse("text/event-stream")
    assert streams.wants_sse("application/json, text/event-stream;q=0.9")
    assert not streams.wants_sse("*/*")
    headers = dict(streams.SSE_HEADERS)
    assert headers[b"x-accel-buffering"] == b"no" and headers[b"cache-control"] == b"no-cache"


async def test_watch_disconnect() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return messages.pop(0)

    seen: list[str] = []
    await asyncio.wait_for(streams.watch_disconnect(receive, lambda: seen.append("gone")), 1)
    assert seen == ["gone"]
