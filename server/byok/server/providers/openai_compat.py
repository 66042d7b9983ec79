"""Any OpenAI-compatible chat completions endpoint, on the official `openai` SDK.

The SDK builds the request, authenticates, retries with backoff (only before the
response starts, i.e. before the first token) and maps HTTP statuses to its errors.
The event stream itself is read here, straight from the HTTP response with a lean SSE
parser, so text is handed on the moment its bytes arrive: one delta per read that
carries text, which is one per chunk unless several arrived together.

All per-key SDK clients of one provider share one HTTP client (one connection pool, one
set of timeouts): `providers/http.py`, the SDK's httpx2 API on an aiohttp transport
(docs/adr/0006-upstream-http-on-aiohttp.md). The body is read through that client's
`BodyReader`; errors raised while reading it are `httpx2` errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import httpx2
import openai
import orjson

from byok.server.errors import (
    ByokError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from byok.server.providers.base import (
    ChatMessage,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Timeouts,
)
from byok.server.providers.http import BODY_READER, BodyReader, UpstreamHttpClient

# Per-key SDK clients kept; they only wrap the shared HTTP client, so dropping one is free.
MAX_CACHED_CLIENTS = 256
MAX_UPSTREAM_MESSAGE = 500
MAX_SHOWN_LINE = 200
DEFAULT_RETRY_AFTER = 1.0
# After [DONE], how long and how much more of the body is read so that the connection
# goes back to the pool (normally just the chunked-encoding terminator, already read).
DRAIN_SECONDS = 0.2
DRAIN_BYTES = 64 * 1024
# One event of the stream (a chunk is well under 1 KiB; a whole answer in one chunk stays
# far below this): an upstream that never ends its line cannot fill the server's memory.
MAX_EVENT_BYTES = 8 * 1024 * 1024

_KEYLIKE = re.compile(r"sk-[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',]+")
# Sent with every request: never let OPENAI_ORG_ID / OPENAI_PROJECT_ID from the process
# environment reach an upstream (the SDK reads them when not given).
_NO_ORG_HEADERS: dict[str, str | openai.Omit] = {
    "OpenAI-Organization": openai.omit,
    "OpenAI-Project": openai.omit,
}
# The stream is asked for uncompressed (the HTTP client's default asks for gzip): the body
# is read raw, event by event, and a compressing server or proxy may also hold back the
# text it has not filled a block with. One that compresses anyway is decoded (_inflater).
_STREAM_HEADERS: dict[str, str | openai.Omit] = {**_NO_ORG_HEADERS, "Accept-Encoding": "identity"}
# A provider without a key sends no Authorization header at all.
_NO_AUTH_HEADERS: dict[str, str | openai.Omit] = {**_STREAM_HEADERS, "Authorization": openai.omit}
# Per-request SDK options, built once: the SDK copies them into its own request options.
_WITH_KEY: openai.RequestOptions = {"headers": _STREAM_HEADERS}
_WITHOUT_KEY: openai.RequestOptions = {"headers": _NO_AUTH_HEADERS}
_STREAM_OPTIONS = {"include_usage": True}
_UNUSED_KEY = "byok-no-key"  # only to satisfy the SDK; never sent (see _NO_AUTH_HEADERS)


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """Removes known secrets and anything that looks like an API key or bearer token."""
    text = _BEARER.sub("Bearer …", _KEYLIKE.sub("sk-…", text))
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "…")
    return text


class OpenAICompatProvider:
    """Streams chat completions from an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self._api_key = api_key or None
        self._timeouts = timeouts or Timeouts()
        t = self._timeouts
        self._http = UpstreamHttpClient(
            timeout=httpx2.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=True,
        )
        self._sdk_timeout = openai.Timeout(
            connect=t.connect, read=t.read, write=t.write, pool=t.connect
        )
        self._clients: OrderedDict[str, openai.AsyncOpenAI] = OrderedDict()

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    def _client(self, key: str | None) -> openai.AsyncOpenAI:
        cache_key = key or ""
        client = self._clients.get(cache_key)
        if client is not None:
            self._clients.move_to_end(cache_key)
            return client
        client = openai.AsyncOpenAI(
            api_key=key or _UNUSED_KEY,
            base_url=self.base_url,
            timeout=self._sdk_timeout,
            max_retries=self._timeouts.max_retries,
            http_client=self._http,
        )
        self._clients[cache_key] = client
        if len(self._clients) > MAX_CACHED_CLIENTS:
            self._clients.popitem(last=False)
        return client

    async def aclose(self) -> None:
        self._clients.clear()
        await self._http.aclose()

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        api_key: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        key = api_key or self._api_key
        request: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": _STREAM_OPTIONS,
        }
        if params.temperature is not None:
            request["temperature"] = params.temperature
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.max_tokens is not None:
            request["max_tokens"] = params.max_tokens
        if params.stop:
            request["stop"] = list(params.stop)

        client = self._client(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.total
        secrets = (key,)
        deltas = 0
        finish_reason: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        done = False
        # The body is our plain JSON, serialized as the SDK would (same bytes).
        content = orjson.dumps(request)
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout_at(deadline):
                    # The client's own `post` rather than `chat.completions.create`: the
                    # same auth headers, retries and status errors, without the typed
                    # parameter transform and response wrappers (~1 ms a turn), since
                    # the stream is parsed below.
                    response = await client.post(
                        "/chat/completions",
                        cast_to=httpx2.Response,
                        content=content,
                        options=_WITH_KEY if key else _WITHOUT_KEY,
                        stream=True,
                        stream_cls=None,
                    )
                stack.push_async_callback(response.aclose)
                kind = response.headers.get("content-type", "")
                if "text/event-stream" not in kind:
                    # Some servers answer a streamed request with a 200 and a JSON error,
                    # and some with the whole answer as one chat.completion.
                    async with asyncio.timeout_at(deadline):
                        raw_body = await self._read_whole(response)
                    answer = _whole_answer(raw_body)
                    if answer is None:
                        raise self._error_body(raw_body, secrets)
                    whole, finish_reason, prompt_tokens, completion_tokens = answer
                    done = True
                    if whole:
                        deltas += 1
                        yield TextDelta(whole)
                else:
                    body: BodyReader = response.extensions[BODY_READER]
                    encoding = response.headers.get("content-encoding", "")
                    inflate = self._inflater(encoding)
                    # TOTAL_TIMEOUT_SECONDS over the body: one timer that drops the
                    # connection, rather than a timeout scope per read (this generator
                    # yields between reads, and a scope must not span a yield).
                    expired = False

                    def expire() -> None:
                        nonlocal expired
                        expired = True
                        body.abort()

                    stack.callback(loop.call_at(deadline, expire).cancel)
                    buffer = b""
                    data: list[bytes] = []
                    held = 0  # bytes in `data`: the event being read
                    eof = False
                    while not done and not eof:
                        try:
                            piece = await body.read_some()
                        except httpx2.TransportError:
                            if expired:
                                raise TimeoutError from None
                            raise
                        if expired:
                            raise TimeoutError
                        eof = not piece
                        if inflate is not None:
                            piece = self._inflate(inflate, piece, encoding)
                        buffer += piece
                        if eof:
                            buffer += b"\n\n"  # dispatch an event left without its blank line
                        elif b"\n" not in piece:  # the line goes on: nothing to dispatch yet
                            if len(buffer) + held > MAX_EVENT_BYTES:
                                raise self._too_large()
                            continue
                        *lines, buffer = buffer.split(b"\n")
                        # The chunks of one read go out as one delta: nothing is held back
                        # for a later read, and a server that is behind forwards fewer,
                        # larger messages instead of falling further behind.
                        texts: list[str] = []
                        failure: Unavailable | None = None
                        for raw in lines:
                            line = raw[:-1] if raw.endswith(b"\r") else raw
                            if line.startswith(b"data:"):
                                value = line[5:]
                                data.append(value[1:] if value.startswith(b" ") else value)
                                held += len(value)
                                continue
                            if line or not data:
                                continue  # a comment or another field; or a blank line alone
                            payload = b"\n".join(data)
                            data.clear()
                            held = 0
                            if payload.strip() == b"[DONE]":
                                done = True
                                break
                            try:
                                chunk = self._decode(payload, secrets)
                            except Unavailable as exc:
                                failure = exc  # after the text that came before it
                                break
                            choices = chunk.get("choices")
                            if (
                                choices
                                and isinstance(choices, list)
                                and isinstance(choices[0], dict)
                            ):
                                choice = choices[0]
                                delta = choice.get("delta")
                                if isinstance(delta, dict):
                                    text = delta.get("content")
                                    if text and isinstance(text, str):
                                        deltas += 1
                                        texts.append(text)
                                reason = choice.get("finish_reason")
                                if reason and isinstance(reason, str):
                                    finish_reason = reason
                            usage = chunk.get("usage")
                            if isinstance(usage, dict):
                                prompt_tokens = _int_or(usage.get("prompt_tokens"), prompt_tokens)
                                completion_tokens = _int_or(
                                    usage.get("completion_tokens"), completion_tokens
                                )
                        if failure is None and len(buffer) + held > MAX_EVENT_BYTES:
                            failure = self._too_large()
                        if texts:
                            yield TextDelta(texts[0] if len(texts) == 1 else "".join(texts))
                        if failure is not None:
                            raise failure
                    if done and not eof:
                        await _drain(body)
        except TimeoutError:
            raise DeadlineExceeded(
                f"provider '{self.name}' did not finish within {self._timeouts.total:g}s "
                "(TOTAL_TIMEOUT_SECONDS)",
                reason="UPSTREAM_TIMEOUT",
                metadata={"provider": self.name},
            ) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, model, secrets) from None
        except openai.APITimeoutError as exc:
            self._timed_out(before_response=True, cause=exc.__cause__)
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            detail = f": {type(cause).__name__}" if cause else ""
            raise Unavailable(
                f"provider '{self.name}' could not be reached{detail}",
                reason="UPSTREAM_UNAVAILABLE",
                metadata={"provider": self.name},
                retry_after=DEFAULT_RETRY_AFTER,
            ) from None
        except httpx2.TimeoutException:
            if finish_reason is None:
                self._timed_out(before_response=False)
        except httpx2.TransportError as exc:
            if finish_reason is None:  # a finished answer survives a lost [DONE]
                raise Unavailable(
                    f"provider '{self.name}' broke off the stream after {deltas} text chunks "
                    f"({type(exc).__name__})",
                    reason="UPSTREAM_UNAVAILABLE",
                    metadata={"provider": self.name, "deltas": str(deltas)},
                    retry_after=DEFAULT_RETRY_AFTER,
                ) from None
        if not done and finish_reason is None:
            raise Unavailable(
                f"provider '{self.name}' ended the stream after {deltas} text chunks "
                "without a finish reason or [DONE]",
                reason="UPSTREAM_DISCONNECTED",
                metadata={"provider": self.name, "deltas": str(deltas)},
                retry_after=DEFAULT_RETRY_AFTER,
            )
        yield StreamEnd(finish_reason or "stop", prompt_tokens, completion_tokens)

    def _too_large(self, what: str = "a stream event") -> Unavailable:
        return Unavailable(
            f"provider '{self.name}' sent {what} longer than "
            f"{MAX_EVENT_BYTES // (1024 * 1024)} MiB",
            reason="UPSTREAM_MALFORMED",
            metadata={"provider": self.name},
        )

    async def _read_whole(self, response: httpx2.Response) -> bytes:
        """A body that is not a stream, decoded, up to MAX_EVENT_BYTES."""
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > MAX_EVENT_BYTES:
                raise self._too_large("an answer")
            parts.append(part)
        return b"".join(parts)

    def _inflater(self, encoding: str) -> zlib._Decompress | None:
        """A decoder for a stream sent compressed although it was asked for as is."""
        name = encoding.strip().lower()
        if name in ("", "identity"):
            return None
        if name in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if name == "deflate":
            return zlib.decompressobj(zlib.MAX_WBITS)
        raise Unavailable(
            f"provider '{self.name}' sent the stream in Content-Encoding '{encoding[:40]}', "
            "which byok cannot read while streaming (it asks for 'identity' and decodes "
            "gzip and deflate)",
            reason="UPSTREAM_ENCODING",
            metadata={"provider": self.name, "content_encoding": encoding[:40]},
        )

    def _inflate(self, inflate: zlib._Decompress, piece: bytes, encoding: str) -> bytes:
        """The decoded bytes of `piece` (maybe none yet); at the end (b""), whatever the
        decoder still holds."""
        try:
            if piece:
                return inflate.decompress(piece)
            return inflate.flush()
        except zlib.error as exc:
            raise Unavailable(
                f"provider '{self.name}' sent a stream that does not decode as "
                f"{encoding.strip().lower()} ({exc})",
                reason="UPSTREAM_MALFORMED",
                metadata={"provider": self.name},
            ) from None

    def _error_body(self, raw: bytes, secrets: Sequence[str | None]) -> Unavailable:
        message = raw[:500].decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            error = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(error, str):
                message = error
        return Unavailable(
            f"provider '{self.name}' answered with an error instead of a stream: "
            f"{redact(message, secrets)[:500]}",
            reason="UPSTREAM_ERROR",
            metadata={"provider": self.name},
            retry_after=1.0,
        )

    def _decode(self, payload: bytes, secrets: Sequence[str | None]) -> dict[str, Any]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:  # what the stdlib also reads (NaN, integers past 64 bits)
                chunk = json.loads(payload)
            except ValueError:
                chunk = None
        if not isinstance(chunk, dict):
            shown = redact(payload.decode("utf-8", "replace"), secrets)[:MAX_SHOWN_LINE]
            raise Unavailable(
                f"provider '{self.name}' sent a malformed stream line: {shown!r}",
                reason="UPSTREAM_MALFORMED",
                metadata={"provider": self.name},
            )
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            text = redact(str(message or error), secrets)[:MAX_UPSTREAM_MESSAGE]
            raise Unavailable(
                f"provider '{self.name}' reported an error mid-stream: {text}",
                reason="UPSTREAM_ERROR",
                metadata={"provider": self.name},
            )
        return chunk

    def _timed_out(self, *, before_response: bool, cause: BaseException | None = None) -> NoReturn:
        t = self._timeouts
        if isinstance(cause, httpx2.ConnectTimeout):
            seconds, what, setting = t.connect, "to accept a connection", "CONNECT_TIMEOUT_SECONDS"
        elif isinstance(cause, httpx2.WriteTimeout):
            seconds, what, setting = t.write, "to take the request", "WRITE_TIMEOUT_SECONDS"
        elif before_response:
            seconds, what, setting = t.read, "to answer", "READ_TIMEOUT_SECONDS"
        else:
            seconds, what, setting = t.read, "to send more of the stream", "READ_TIMEOUT_SECONDS"
        raise DeadlineExceeded(
            f"provider '{self.name}' took longer than {seconds:g}s {what} ({setting})",
            reason="UPSTREAM_TIMEOUT",
            metadata={"provider": self.name},
        ) from None

    def _status_error(
        self, exc: openai.APIStatusError, model: str, secrets: Sequence[str | None]
    ) -> ByokError:
        status = exc.status_code
        metadata = {"provider": self.name, "http_status": str(status)}
        upstream = _upstream_message(exc.body)
        said = f": {redact(upstream, secrets)[:MAX_UPSTREAM_MESSAGE]}" if upstream else ""
        who = f"provider '{self.name}'"
        if status in (401, 403):
            return FailedPrecondition(
                f"{who} rejected the API key (HTTP {status}); set a valid key for it{said}",
                reason="PROVIDER_AUTH_FAILED",
                metadata=metadata,
            )
        if status == 429:
            return ResourceExhausted(
                f"{who} is rate limiting requests (HTTP 429){said}",
                reason="UPSTREAM_RATE_LIMITED",
                metadata=metadata,
                retry_after=_retry_after(exc.response.headers),
            )
        if status == 404:
            return InvalidArgument(
                f"{who} does not know model '{model}' (HTTP 404){said}",
                reason="UPSTREAM_REJECTED",
                metadata={**metadata, "model": model},
            )
        if status == 408:
            return DeadlineExceeded(
                f"{who} timed out the request (HTTP 408){said}",
                reason="UPSTREAM_TIMEOUT",
                metadata=metadata,
            )
        if status >= 500:
            return Unavailable(
                f"{who} is unavailable (HTTP {status}){said}",
                reason="UPSTREAM_UNAVAILABLE",
                metadata=metadata,
                retry_after=DEFAULT_RETRY_AFTER,
            )
        return InvalidArgument(
            f"{who} rejected the request (HTTP {status}){said}",
            reason="UPSTREAM_REJECTED",
            metadata={**metadata, "model": model},
        )


async def _drain(body: BodyReader) -> None:
    """Reads a stream's body to its end after [DONE], within bounds.

    An HTTP client returns a connection to its pool only once the response was read to
    the end; closing it right after [DONE] closes the connection, so every turn paid a
    new TCP (and, on a real provider, TLS) handshake. Anything after [DONE] is ignored;
    an upstream that keeps the stream open past the bounds just loses its connection.
    """
    seen = 0
    with contextlib.suppress(Exception):  # the timeout, or a transport error
        async with asyncio.timeout(DRAIN_SECONDS):
            while piece := await body.read_some():
                seen += len(piece)
                if seen > DRAIN_BYTES:
                    break


def _whole_answer(raw: bytes) -> tuple[str, str | None, int | None, int | None] | None:
    """Text, finish reason and token counts of a whole chat.completion sent instead of a
    stream; None for any other body (an error, a proxy's page)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("error"):
        return None
    choices = body.get("choices")
    if not (choices and isinstance(choices, list) and isinstance(choices[0], dict)):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    reason = choices[0].get("finish_reason")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return (
        content if isinstance(content, str) else "",
        reason if isinstance(reason, str) and reason else None,
        _int_or(usage.get("prompt_tokens"), None),
        _int_or(usage.get("completion_tokens"), None),
    )


def _int_or(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _upstream_message(body: object) -> str:
    """The SDK keeps the JSON `error` object (or the raw text) as the error's body."""
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
        return json.dumps(body)[:MAX_UPSTREAM_MESSAGE]
    return str(body).strip() if body else ""


def _retry_after(headers: Any) -> float:
    for header, scale in (("retry-after", 1.0), ("retry-after-ms", 0.001)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 <= seconds < float("inf"):
            return seconds
    return DEFAULT_RETRY_AFTER
