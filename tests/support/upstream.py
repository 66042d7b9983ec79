"""A scripted OpenAI-compatible HTTP server on a loopback port, for tests.

    async with ScriptedUpstream() as up:
        up.reply(chunks=["Hel", "lo"], usage=(5, 2))
        ... point a provider at up.base_url ...
        assert up.requests[0].json["model"] == "gpt-4o-mini"

It is a real Starlette app served by uvicorn in the test's event loop. Each request to
POST /v1/chat/completions takes the next scripted answer from a queue; with none
queued it echoes the last user message ("echo: <text>") in a few chunks. Streams use
OpenAI's exact chunk format, with a final usage chunk when the request asks for
`stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from byok.server.config import Address
from byok.server.gateway.server import EmbeddedServer, bind


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    client_port: int = 0  # the client's end of the connection: tells a reused one

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass(frozen=True)
class _Reply:
    chunks: tuple[str, ...]
    delay: float = 0.0
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    cut_after: int | None = None  # content chunks sent before the connection is dropped
    together: bool = False  # all content chunks in one write
    encoding: str = ""  # a Content-Encoding the stream is sent in, whatever was asked


@dataclass(frozen=True)
class _Fail:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Stall:
    seconds: float


@dataclass(frozen=True)
class _Raw:
    lines: tuple[str, ...]
    delay: float = 0.0


_Script = _Reply | _Fail | _Stall | _Raw

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class ScriptedUpstream:
    """The server, its script queue and what it saw."""

    def __init__(self, models: Sequence[str] = ("gpt-4o-mini", "gpt-4o")) -> None:
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0  # streams the client closed before they were complete
        self.completed = 0  # streams sent to the end
        self.port = 0
        self._script: deque[_Script] = deque()
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    # -- scripting ---------------------------------------------------------------------

    def reply(
        self,
        chunks: Sequence[str] = ("Hello", ", ", "world"),
        *,
        delay: float = 0.0,
        finish_reason: str = "stop",
        usage: tuple[int, int] | None = None,
        together: bool = False,
        encoding: str = "",
    ) -> None:
        """Answers with these content chunks, `delay` seconds before each one; with
        `together`, all of them in one write (as a fast upstream's chunks arrive at a
        reader that is behind). With `encoding` ("gzip" or "deflate"; any other name is
        sent as is over plain bytes) the stream is compressed whatever the request's
        Accept-Encoding said, each write flushed, as a compressing proxy would."""
        self._script.append(
            _Reply(tuple(chunks), delay, finish_reason, usage, together=together, encoding=encoding)
        )

    def fail(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        times: int = 1,
    ) -> None:
        """Answers `times` requests with this HTTP error (body: OpenAI's error JSON)."""
        if body is None:
            body = {
                "error": {
                    "message": f"scripted failure {status}",
                    "type": _ERROR_TYPES.get(status, "server_error"),
                    "param": None,
                    "code": None,
                }
            }
        for _ in range(times):
            self._script.append(_Fail(status, body, dict(headers or {})))

    def cut_after(
        self,
        n_chunks: int,
        chunks: Sequence[str] = ("one ", "two ", "three ", "four ", "five "),
        *,
        delay: float = 0.0,
    ) -> None:
        """Streams `n_chunks` content chunks, then drops the connection (no [DONE])."""
        self._script.append(_Reply(tuple(chunks), delay, "stop", None, cut_after=n_chunks))

    def stall(self, seconds: float) -> None:
        """Sends the response headers, then nothing for `seconds`, then ends the body."""
        self._script.append(_Stall(seconds))

    def raw(self, lines: Sequence[str], *, delay: float = 0.0) -> None:
        """Streams these SSE lines verbatim, each followed by a blank line."""
        self._script.append(_Raw(tuple(lines), delay))

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ScriptedUpstream:
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        sock = bind(Address("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # leave logging alone; pytest captures uvicorn's records
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._server = EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the scripted upstream stopped while starting")
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for stalled streams
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Waits until `predicate()` is true (e.g. `lambda: up.disconnects == 1`)."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the scripted upstream never reached the expected state")
            await asyncio.sleep(0.01)

    # -- endpoints ---------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        self._record(request, None)
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "byok-tests"}
            for model in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self._record(request, body)
        script = self._script.popleft() if self._script else self._echo(body)
        if isinstance(script, _Fail):
            return JSONResponse(script.body, status_code=script.status, headers=script.headers)
        model = str(body.get("model", ""))
        if not body.get("stream"):
            if not isinstance(script, _Reply):
                raise RuntimeError("stall/raw scripts need a streaming request")
            return JSONResponse(_completion(script, model, body))
        return _SSEStream(self, script, model, _include_usage(body), body)

    def _record(self, request: Request, body: Any) -> None:
        headers = {name.lower(): value for name, value in request.headers.items()}
        port = request.client.port if request.client else 0
        self.requests.append(RecordedRequest(request.method, request.url.path, headers, body, port))

    @staticmethod
    def _echo(body: Any) -> _Reply:
        messages = body.get("messages") or []
        last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        text = f"echo: {last.get('content', '') if last else ''}"
        third = max(1, len(text) // 3)
        chunks = [text[:third], text[third : 2 * third], text[2 * third :]]
        return _Reply(tuple(c for c in chunks if c))


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(options.get("include_usage"))


def _usage(script: _Reply, body: Mapping[str, Any]) -> dict[str, int]:
    if script.usage is not None:
        prompt, completion = script.usage
    else:
        messages = body.get("messages") or []
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        completion = len(script.chunks)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(script: _Reply, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(script.chunks)},
                "logprobs": None,
                "finish_reason": script.finish_reason,
            }
        ],
        "usage": _usage(script, body),
    }


class _SSEStream(Response):
    """Plays one script as an event stream and notices when the client goes away."""

    def __init__(
        self,
        upstream: ScriptedUpstream,
        script: _Reply | _Stall | _Raw,
        model: str,
        include_usage: bool,
        body: Mapping[str, Any],
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.upstream = upstream
        self.script = script
        self.model = model
        self.include_usage = include_usage
        self.body_json = body
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        complete = False
        gone = asyncio.Event()

        async def watch() -> None:
            # The request body is read, so receive() now waits for the disconnect.
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        encoding = self.script.encoding if isinstance(self.script, _Reply) else ""
        compress = _compressor(encoding)

        async def play() -> None:
            nonlocal complete
            headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
            ]
            if encoding:
                headers.append((b"content-encoding", encoding.encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for data in self._events():
                if compress is not None:
                    data = compress.compress(data) + compress.flush(zlib.Z_SYNC_FLUSH)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if isinstance(self.script, _Reply) and self.script.cut_after is not None:
                return  # returning mid-body makes uvicorn drop the connection
            tail = compress.flush() if compress is not None else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            complete = True

        watcher = asyncio.create_task(watch())
        player = asyncio.create_task(play())
        try:
            await asyncio.wait({watcher, player}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, player):
                task.cancel()
            await asyncio.gather(watcher, player, return_exceptions=True)
        if complete:
            self.upstream.completed += 1
        elif gone.is_set():
            self.upstream.disconnects += 1
        error = player.exception() if player.done() and not player.cancelled() else None
        if error is not None:
            raise error

    async def _events(self) -> AsyncIterator[bytes]:
        script = self.script
        if isinstance(script, _Stall):
            await asyncio.sleep(script.seconds)
            return
        if isinstance(script, _Raw):
            for line in script.lines:
                if script.delay:
                    await asyncio.sleep(script.delay)
                yield f"{line}\n\n".encode()
            return
        yield self._chunk({"role": "assistant", "content": ""}, None)
        if script.together:
            if script.delay:
                await asyncio.sleep(script.delay)
            yield b"".join(self._chunk({"content": text}, None) for text in script.chunks)
        for index, text in enumerate(() if script.together else script.chunks):
            if script.cut_after is not None and index >= script.cut_after:
                return
            if script.delay:
                await asyncio.sleep(script.delay)
            yield self._chunk({"content": text}, None)
        if script.cut_after is not None:
            return
        yield self._chunk({}, script.finish_reason)
        if self.include_usage:
            yield self._sse(self._envelope([], _usage(script, self.body_json)))
        yield b"data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._sse(self._envelope([choice], None))

    def _envelope(
        self, choices: list[dict[str, Any]], usage: dict[str, int] | None
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    @staticmethod
    def _sse(chunk: Mapping[str, Any]) -> bytes:
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()


def _compressor(encoding: str) -> zlib._Compress | None:
    """A zlib stream for gzip or deflate (each write is flushed, so every event can be
    decoded on arrival); None for any other name, whose bytes go out as they are."""
    if encoding not in ("gzip", "deflate"):
        return None
    return zlib.compressobj(wbits=16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)


class ThreadedUpstream:
    """A ScriptedUpstream on its own event loop in a thread, for tests whose byok server
    and client are separate processes (the test itself stays synchronous)."""

    def __init__(self) -> None:
        self.upstream = ScriptedUpstream()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.__aenter__(), self._loop).result(30)
        return self.upstream

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(
            self.upstream.__aexit__(None, None, None), self._loop
        ).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
