"""The gateway: an ASGI app that serves every REST route by calling the gRPC door.

Each REST call goes over ONE shared `grpc.aio` channel to the local gRPC server,
as a generic unary-unary or unary-stream call with the method's own
serializers, so every server interceptor applies. The `Authorization` header and
an `x-request-id` (the caller's, or a new UUID; echoed as a response header) go
along as gRPC metadata. A closed HTTP connection cancels the gRPC call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from byok.server.gateway import errors, streams
from byok.server.gateway.routes import Binding, RouteTable
from byok.server.gateway.transcode import TranscodeError, Transcoder
from byok.server.observability.metrics import ROUTE_SCOPE_KEY

log = logging.getLogger("byok.server.gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A JSON body holds bytes fields as base64 (4/3 larger) plus the JSON around them.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES * 3 // 2
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_JSON = (b"content-type", b"application/json")
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_http_proxy", 0),  # the gRPC door is local; never go through a proxy
]


@dataclass
class _Plan:
    binding: Binding
    transcoder: Transcoder
    call: Any = None  # the channel's multicallable, made with the channel


class Gateway:
    """ASGI app for the REST routes of `routes`, calling gRPC at `grpc_target`."""

    def __init__(
        self,
        routes: RouteTable,
        grpc_target: str,
        *,
        heartbeat_seconds: float = 15.0,
        grpc_credentials: grpc.ChannelCredentials | None = None,
        grpc_options: Sequence[tuple[str, Any]] = (),
    ):
        self.routes = routes
        self.grpc_target = grpc_target
        self.heartbeat_seconds = heartbeat_seconds
        self._credentials = grpc_credentials
        self._options = [*_CHANNEL_OPTIONS, *grpc_options]
        self._plans = {id(b): _Plan(b, Transcoder(b)) for b in routes.bindings}
        self._channel: grpc.aio.Channel | None = None

    def _open(self) -> None:
        """Makes the channel on first use: it must be made inside the event loop."""
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.grpc_target, options=self._options)
        else:
            channel = grpc.aio.secure_channel(
                self.grpc_target, self._credentials, options=self._options
            )
        for plan in self._plans.values():
            b = plan.binding
            make = channel.unary_stream if b.server_streaming else channel.unary_unary
            plan.call = make(
                b.grpc_path,
                request_serializer=b.request_cls.SerializeToString,
                response_deserializer=b.response_cls.FromString,
            )
        self._channel = channel

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._handle(scope, receive, tracked)
        except Exception:
            log.exception("gateway error on %s %s", scope["method"], scope["path"])
            if not started:
                error = errors.gateway_error(
                    "INTERNAL", "internal gateway error; see the server log", "INTERNAL"
                )
                await _send_error(send, error, [])

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        request_id = ""
        auth = ""
        accept = ""
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth = value.decode("latin-1")
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = str(uuid.uuid4())
        headers = [(b"x-request-id", request_id.encode())]
        if auth and not _HEADER_VALUE.fullmatch(auth):  # gRPC metadata would refuse it
            error = errors.gateway_error(
                "UNAUTHENTICATED",
                "the authorization header must be printable ASCII: `Bearer <api key>`",
                "API_KEY_MALFORMED",
            )
            await _send_error(send, error, headers)
            return

        match = self.routes.match(method, path)
        if match is None:
            allowed = self.routes.allowed_methods(path)
            error = (
                errors.method_not_allowed(method, path, allowed)
                if allowed
                else errors.not_found(path)
            )
            await _send_error(send, error, headers)
            return
        plan = self._plans[id(match.binding)]
        scope[ROUTE_SCOPE_KEY] = match.binding.template.text  # the metrics label
        try:
            body = await _read_body(receive) if match.binding.body else b""
            request = plan.transcoder.build_request(
                match.values, scope.get("query_string", b""), body
            )
        except TranscodeError as exc:
            error = errors.gateway_error(
                "INVALID_ARGUMENT",
                exc.message,
                exc.reason,
                metadata={"field": exc.field} if exc.field else None,
                violations=exc.violations,
            )
            await _send_error(send, error, headers)
            return
        except _BodyTooLarge:
            error = errors.gateway_error(
                "INVALID_ARGUMENT",
                f"the body is larger than {MAX_BODY_BYTES} bytes",
                "BODY_TOO_LARGE",
            )
            error.status = error.body["error"]["code"] = 413
            await _send_error(send, error, headers)
            return

        if self._channel is None:
            self._open()
        metadata: tuple[tuple[str, str], ...] = (("x-request-id", request_id),)
        if auth:
            metadata += (("authorization", auth),)
        if match.binding.server_streaming:
            await self._stream(plan, request, metadata, headers, accept, receive, send)
        else:
            await self._unary(plan, request, metadata, headers, receive, send)

    async def _unary(
        self,
        plan: _Plan,
        request: Any,
        metadata: tuple[tuple[str, str], ...],
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
    ) -> None:
        call = plan.call(request, metadata=metadata)
        watcher = asyncio.create_task(streams.watch_disconnect(receive, call.cancel))
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            await _send_error(send, errors.from_rpc_error(exc), headers)
            return
        except asyncio.CancelledError:
            if watcher.done():  # the caller went away: nobody to answer
                return
            raise
        finally:
            watcher.cancel()
        body = plan.transcoder.response_json(response)
        await _send(send, 200, [_JSON, *headers], body)

    async def _stream(
        self,
        plan: _Plan,
        request: Any,
        metadata: tuple[tuple[str, str], ...],
        headers: list[tuple[bytes, bytes]],
        accept: str,
        receive: Receive,
        send: Send,
    ) -> None:
        sse = streams.wants_sse(accept)
        transcoder = plan.transcoder
        call = plan.call(request, metadata=metadata)
        gone = asyncio.Event()

        def disconnected() -> None:
            gone.set()
            call.cancel()

        watcher = asyncio.create_task(streams.watch_disconnect(receive, disconnected))
        items = streams.with_heartbeats(call, self.heartbeat_seconds)
        started = False
        try:
            async for item in items:
                if not started:
                    # The first message (or the first heartbeat interval) commits
                    # the headers; an error before that is an ordinary HTTP error.
                    started = True
                    framing = streams.SSE_HEADERS if sse else streams.NDJSON_HEADERS
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [*framing, *headers],
                        }
                    )
                if isinstance(item, streams.Heartbeat):
                    if sse:
                        await send(_chunk(streams.SSE_HEARTBEAT))
                    continue
                data = transcoder.response_json(item)
                frame = (
                    streams.sse_event(transcoder.event_name(item), data)
                    if sse
                    else streams.ndjson_result(data)
                )
                await send(_chunk(frame))
        except grpc.aio.AioRpcError as exc:
            error = errors.from_rpc_error(exc)
            if not started:
                await _send_error(send, error, headers)
                return
            data = error.encode()
            await send(
                _chunk(streams.sse_event("error", data) if sse else streams.ndjson_error(data))
            )
        except asyncio.CancelledError:
            if gone.is_set():
                log.debug("%s: the caller went away; call cancelled", plan.binding.grpc_path)
                return
            raise
        finally:
            watcher.cancel()
            await items.aclose()
        if not started:  # an empty stream that ended within the first interval
            framing = streams.SSE_HEADERS if sse else streams.NDJSON_HEADERS
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*framing, *headers]}
            )
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _chunk(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send, error: errors.HttpError, headers: list[tuple[bytes, bytes]]
) -> None:
    await _send(send, error.status, [_JSON, *error.headers, *headers], error.encode())
