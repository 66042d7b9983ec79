"""Server-streaming responses over HTTP: SSE or NDJSON framing, heartbeats,
and noticing a closed connection.

SSE (`text/event-stream`): one `event: <kind>` / `data: <json>` event per
message, a `: heartbeat` comment whenever `interval` passes with no message, and
`event: error` with the error JSON if the stream fails after it started.
NDJSON (`application/x-ndjson`): one `{"result": ...}` line per message and a
final `{"error": ...}` line on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"
SSE_HEARTBEAT = b": heartbeat\n\n"
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
NDJSON_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def wants_sse(accept: str) -> bool:
    return SSE_MEDIA_TYPE in accept


def sse_event(kind: str, data: bytes) -> bytes:
    """One SSE event; `data` is compact JSON, so it holds no line break."""
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def ndjson_result(data: bytes) -> bytes:
    return b'{"result":' + data + b"}\n"


def ndjson_error(error_json: bytes) -> bytes:
    """`error_json` is the whole `{"error": {...}}` body: it is the line."""
    return error_json + b"\n"


class Heartbeat:
    """Yielded by `with_heartbeats` when `interval` passed with no item."""

    __slots__ = ()


HEARTBEAT = Heartbeat()


async def with_heartbeats(
    source: AsyncIterable[T], interval: float
) -> AsyncGenerator[T | Heartbeat, None]:
    """The items of `source`, with `HEARTBEAT` whenever `interval` seconds pass
    while waiting for the next one. The pending read is never cancelled by a
    heartbeat (cancelling a gRPC read would cancel the call)."""
    iterator = aiter(source)
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def watch_disconnect(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], on_disconnect: Callable[[], object]
) -> None:
    """Waits for the client to go away (ASGI `http.disconnect`), then calls
    `on_disconnect`. Run it as a task once the request body has been read, and
    cancel it when the response is complete."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return
