"""OpenAICompatProvider on the real openai SDK, talking HTTP to a scripted upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from byok.server.errors import (
    ByokError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from byok.server.models.routing import RouteTable, parse_routing
from byok.server.providers.base import (
    ChatMessage,
    Provider,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Timeouts,
)
from byok.server.providers.openai_compat import OpenAICompatProvider
from byok.server.providers.registry import build_providers, close_all
from tests.support.servers import free_port
from tests.support.upstream import ScriptedUpstream

KEY = "sk-test-0123456789abcdef"
QUICK = Timeouts(connect=2, read=0.5, write=2, total=10, max_retries=0)
HELLO = [ChatMessage("user", "hello")]
# The SDK honours retry-after-ms; it keeps the retry tests from sleeping for backoff.
FAST_RETRY = {"retry-after-ms": "10"}

Make = Callable[..., OpenAICompatProvider]


@pytest.fixture
async def up() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as server:
        yield server


@pytest.fixture
async def make(up: ScriptedUpstream) -> AsyncIterator[Make]:
    made: list[OpenAICompatProvider] = []

    def factory(
        key: str | None = KEY, timeouts: Timeouts = QUICK, base_url: str | None = None
    ) -> OpenAICompatProvider:
        provider = OpenAICompatProvider("openai", base_url or up.base_url, key, timeouts)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


async def collect(
    provider: OpenAICompatProvider,
    messages: Sequence[ChatMessage] = HELLO,
    params: SamplingParams | None = None,
    **kwargs: Any,
) -> list[StreamEvent]:
    stream = provider.stream("gpt-4o-mini", messages, params or SamplingParams(), **kwargs)
    return [event async for event in stream]


async def failure(
    provider: OpenAICompatProvider, messages: Sequence[ChatMessage] = HELLO
) -> tuple[list[StreamEvent], ByokError]:
    events: list[StreamEvent] = []
    with pytest.raises(ByokError) as caught:
        async for event in provider.stream("gpt-4o-mini", messages, SamplingParams()):
            events.append(event)
    return events, caught.value


async def collect_all(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def sse_chunk(content: str | None = None, finish_reason: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}
    return "data: " + json.dumps(chunk)


def assert_no_key(err: ByokError, *keys: str) -> None:
    for key in (KEY, *keys):
        assert key not in err.message
        assert key not in str(err)
        assert all(key not in value for value in err.metadata.values())


# -- the happy path ----------------------------------------------------------------------


async def test_streams_one_delta_per_chunk_then_end(up: ScriptedUpstream, make: Make) -> None:
    up.reply(["Hel", "lo", ", world"], delay=0.02, usage=(7, 3))
    events = await collect(make())
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta(", world"),
        StreamEnd("stop", prompt_tokens=7, completion_tokens=3),
    ]
    # Read to the end (the connection goes back to the pool); the upstream counts it
    # once its handler returns, a moment after the client saw the end.
    await up.wait_for(lambda: up.completed == 1)


async def test_chunks_that_arrive_together_go_out_as_one_delta(
    up: ScriptedUpstream, make: Make
) -> None:
    """What one read brings is forwarded at once, as one delta: nothing waits for a later
    read, and a server that is behind sends fewer, larger messages."""
    up.reply(["Hel", "lo", ", world"], together=True, usage=(7, 3))
    up.reply(["a", "b"], together=True, delay=0.05, usage=(4, 2))
    assert await collect(make()) == [
        TextDelta("Hello, world"),
        StreamEnd("stop", prompt_tokens=7, completion_tokens=3),
    ]
    assert await collect(make()) == [TextDelta("ab"), StreamEnd("stop", 4, 2)]


async def test_turns_reuse_one_connection(up: ScriptedUpstream, make: Make) -> None:
    """The body is read past [DONE] to its end, so the connection is kept: closing it
    there would cost every turn a new TCP (and TLS) handshake."""
    provider = make()
    for _ in range(3):
        up.reply(["a", "b"])
        assert isinstance((await collect(provider))[-1], StreamEnd)
    assert len({r.client_port for r in up.requests}) == 1
    assert up.requests[0].client_port > 0


async def test_finish_reason_is_passed_on(up: ScriptedUpstream, make: Make) -> None:
    up.reply(["cut sho"], finish_reason="length", usage=(1, 2))
    assert (await collect(make()))[-1] == StreamEnd("length", 1, 2)


async def test_default_reply_echoes_the_last_user_message(make: Make) -> None:
    events = await collect(make(), [ChatMessage("user", "first"), ChatMessage("user", "ping")])
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "echo: ping"
    assert isinstance(events[-1], StreamEnd)


async def test_sends_model_messages_and_key(up: ScriptedUpstream, make: Make) -> None:
    history = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("user", "how are you?"),
    ]
    await collect(make(), history)
    (sent,) = up.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["messages"] == [{"role": m.role, "content": m.content} for m in history]
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}
    for unset in ("temperature", "top_p", "max_tokens", "stop"):
        assert unset not in sent.json
    assert "openai-organization" not in sent.headers


async def test_sends_sampling_params_only_when_set(up: ScriptedUpstream, make: Make) -> None:
    provider = make()
    await collect(provider, params=SamplingParams(temperature=0.2, max_tokens=50))
    await collect(provider, params=SamplingParams(top_p=0.9, stop=("\n\n", "END")))
    first, second = (r.json for r in up.requests)
    assert (first["temperature"], first["max_tokens"]) == (0.2, 50)
    assert "top_p" not in first
    assert "stop" not in first
    assert (second["top_p"], second["stop"]) == (0.9, ["\n\n", "END"])
    assert "temperature" not in second
    assert "max_tokens" not in second


async def test_per_call_key_overrides_the_configured_one(up: ScriptedUpstream, make: Make) -> None:
    provider = make()
    await collect(provider, api_key="sk-user-key-aaaaaaaaaaaa")
    await collect(provider)
    await collect(provider, api_key="sk-user-key-bbbbbbbbbbbb")
    assert [r.authorization for r in up.requests] == [
        "Bearer sk-user-key-aaaaaaaaaaaa",
        f"Bearer {KEY}",
        "Bearer sk-user-key-bbbbbbbbbbbb",
    ]


async def test_provider_without_key_sends_no_authorization(
    up: ScriptedUpstream, make: Make
) -> None:
    await collect(make(key=None))
    assert up.requests[0].authorization is None


async def test_ignores_comments_other_fields_and_usage_only_chunks(
    up: ScriptedUpstream, make: Make
) -> None:
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    up.raw(
        [
            ": keep-alive",
            "event: message\n" + sse_chunk("a"),
            sse_chunk(""),  # empty text is no delta
            sse_chunk(None, "stop"),
            "data: " + json.dumps(usage),
            "data: [DONE]",
        ]
    )
    assert await collect(make()) == [TextDelta("a"), StreamEnd("stop", 4, 1)]


async def test_finish_reason_without_done_is_a_complete_answer(
    up: ScriptedUpstream, make: Make
) -> None:
    up.raw([sse_chunk("all"), sse_chunk(None, "stop")])
    assert await collect(make()) == [TextDelta("all"), StreamEnd("stop")]


async def test_reads_what_pythons_json_reads_beyond_strict_json(
    up: ScriptedUpstream, make: Make
) -> None:
    """NaN and integers past 64 bits are not strict JSON, but Python's own servers send
    them (json.dumps does): such a chunk is still read."""
    up.raw(
        [
            sse_chunk("a")[:-1] + ', "score": NaN}',
            sse_chunk("b")[:-1] + f', "seed": {2**70}}}',
            sse_chunk(None, "stop"),
        ],
        delay=0.05,
    )
    assert await collect(make()) == [TextDelta("a"), TextDelta("b"), StreamEnd("stop")]


async def test_a_long_chunk_arriving_in_many_reads_is_one_delta(
    up: ScriptedUpstream, make: Make
) -> None:
    text = "0123456789abcdef" * 65536  # 1 MiB
    up.raw([sse_chunk(text), sse_chunk(None, "stop")])
    assert await collect(make()) == [TextDelta(text), StreamEnd("stop")]


@pytest.mark.parametrize("shape", ["one line", "many data lines"])
async def test_an_event_past_8_mib_ends_the_stream_after_the_text_before_it(
    up: ScriptedUpstream, make: Make, shape: str
) -> None:
    """An upstream that never ends its event cannot fill the server's memory."""
    mib = "x" * (1024 * 1024)
    huge = "data: " + mib * 9 if shape == "one line" else "\n".join(["data: " + mib] * 9)
    up.raw([sse_chunk("before"), huge, sse_chunk(None, "stop")], delay=0.05)
    events, err = await failure(make())
    assert events == [TextDelta("before")]
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_MALFORMED"
    assert "longer than 8 MiB" in err.message


async def test_sends_non_ascii_text_as_utf8(up: ScriptedUpstream, make: Make) -> None:
    await collect(make(), [ChatMessage("user", "héllo 🌊 日本")])
    assert up.requests[0].json["messages"] == [{"role": "user", "content": "héllo 🌊 日本"}]


async def test_deltas_are_not_held_back(up: ScriptedUpstream, make: Make) -> None:
    up.reply(["a", "b", "c", "d"], delay=0.2)
    arrivals: list[float] = []
    async for event in make().stream("gpt-4o-mini", HELLO, SamplingParams()):
        if isinstance(event, TextDelta):
            arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap >= 0.15 for gap in gaps), gaps


# -- compression ---------------------------------------------------------------------


async def test_asks_for_the_stream_uncompressed(up: ScriptedUpstream, make: Make) -> None:
    await collect(make())
    await collect(make(key=None))
    assert [r.headers.get("accept-encoding") for r in up.requests] == ["identity", "identity"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_stream_compressed_anyway_is_decoded_as_it_arrives(
    up: ScriptedUpstream, make: Make, encoding: str
) -> None:
    """A proxy that compresses whatever was asked: each event still goes out on arrival."""
    up.reply(["a", "b", "c"], delay=0.2, usage=(5, 3), encoding=encoding)
    events: list[StreamEvent] = []
    arrivals: list[float] = []
    async for event in make().stream("gpt-4o-mini", HELLO, SamplingParams()):
        events.append(event)
        arrivals.append(time.monotonic())
    assert events == [TextDelta("a"), TextDelta("b"), TextDelta("c"), StreamEnd("stop", 5, 3)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:3])]
    assert all(gap >= 0.15 for gap in gaps), gaps


async def test_a_stream_in_an_encoding_byok_cannot_read_is_a_clear_error(
    up: ScriptedUpstream, make: Make
) -> None:
    up.reply(["a"], encoding="br")
    events, err = await failure(make())
    assert events == []
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_ENCODING"
    assert "Content-Encoding 'br'" in err.message


# -- HTTP errors ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key_is_a_failed_precondition(
    up: ScriptedUpstream, make: Make, status: int
) -> None:
    body = {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid"}}
    up.fail(status, body)
    events, err = await failure(make())
    assert events == []
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "PROVIDER_AUTH_FAILED"
    assert err.metadata == {"provider": "openai", "http_status": str(status)}
    assert f"provider 'openai' rejected the API key (HTTP {status})" in err.message
    assert "Incorrect API key provided: sk-…" in err.message
    assert_no_key(err)


async def test_rate_limit_carries_retry_after(up: ScriptedUpstream, make: Make) -> None:
    up.fail(429, headers={"retry-after": "3"})
    _, err = await failure(make())
    assert isinstance(err, ResourceExhausted)
    assert err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.retry_after == 3.0
    assert err.metadata == {"provider": "openai", "http_status": "429"}
    up.fail(429)
    _, err = await failure(make())
    assert err.retry_after == 1.0


async def test_server_errors_are_retried_then_unavailable(up: ScriptedUpstream, make: Make) -> None:
    up.fail(500, headers=FAST_RETRY, times=3)
    provider = make(timeouts=Timeouts(read=0.5, total=10, max_retries=2))
    events, err = await failure(provider)
    assert events == []
    assert len(up.requests) == 3  # max_retries + 1
    assert [r.headers["x-stainless-retry-count"] for r in up.requests] == ["0", "1", "2"]
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.retry_after == 1.0
    assert err.metadata == {"provider": "openai", "http_status": "500"}
    assert "HTTP 500" in err.message


async def test_a_retry_before_the_first_token_is_invisible(
    up: ScriptedUpstream, make: Make
) -> None:
    up.fail(503, headers=FAST_RETRY)
    up.reply(["fine"])
    events = await collect(make(timeouts=Timeouts(read=0.5, max_retries=1)))
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("fine")]
    assert len(up.requests) == 2


async def test_unknown_model_is_an_invalid_argument(up: ScriptedUpstream, make: Make) -> None:
    up.fail(
        404, {"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}
    )
    _, err = await failure(make())
    assert isinstance(err, InvalidArgument)
    assert err.reason == "UPSTREAM_REJECTED"
    assert "does not know model 'gpt-4o-mini' (HTTP 404)" in err.message
    assert "does not exist" in err.message
    assert err.metadata["http_status"] == "404"


@pytest.mark.parametrize("status", [400, 422])
async def test_bad_request_is_an_invalid_argument(
    up: ScriptedUpstream, make: Make, status: int
) -> None:
    up.fail(status, {"error": {"message": "max_tokens is too large"}})
    _, err = await failure(make())
    assert isinstance(err, InvalidArgument)
    assert err.reason == "UPSTREAM_REJECTED"
    assert f"(HTTP {status}): max_tokens is too large" in err.message


async def test_unreachable_upstream_is_unavailable(make: Make) -> None:
    provider = make(base_url=f"http://127.0.0.1:{free_port()}/v1")
    _, err = await failure(provider)
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.metadata == {"provider": "openai"}
    assert_no_key(err)


async def test_upstream_hanging_up_before_answering_is_unavailable_not_a_timeout(
    make: Make,
) -> None:
    """The HTTP transport reports a hang-up as a connect *timeout*; it must not read as one."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(1024)  # the request's first bytes, then close without a word
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        _, err = await failure(make(base_url=f"http://127.0.0.1:{port}/v1"))
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(err, Unavailable), err
    assert err.reason == "UPSTREAM_UNAVAILABLE"
    assert "could not be reached" in err.message
    assert "Timeout" not in err.message
    assert accepted >= 1
    assert time.monotonic() - started < 2  # answered at once, not after a timeout


async def test_upstream_not_reading_the_request_hits_the_write_timeout(make: Make) -> None:
    """aiohttp has no write timeout of its own; WRITE_TIMEOUT_SECONDS must still apply."""

    connections: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # kept open, never read, closed at the end

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = make(
        base_url=f"http://127.0.0.1:{port}/v1",
        timeouts=Timeouts(connect=0.3, read=30, write=0.3, total=30, max_retries=0),
    )
    big = [ChatMessage("user", "x" * 32_000_000)]  # more than the kernel buffers take
    try:
        started = time.monotonic()
        _, err = await failure(provider, big)
    finally:
        server.close()
        for writer in connections:
            writer.close()
    assert isinstance(err, DeadlineExceeded), err
    assert err.reason == "UPSTREAM_TIMEOUT"
    assert "WRITE_TIMEOUT_SECONDS" in err.message
    assert time.monotonic() - started < 10  # not the read or total timeout (30 s)


# -- broken streams ------------------------------------------------------------------


async def test_connection_cut_mid_stream(up: ScriptedUpstream, make: Make) -> None:
    up.cut_after(2, delay=0.02)
    events, err = await failure(make())
    assert events == [TextDelta("one "), TextDelta("two ")]
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.metadata["provider"] == "openai"


async def test_stream_ending_without_finish_or_done(up: ScriptedUpstream, make: Make) -> None:
    up.raw([sse_chunk("half")])
    events, err = await failure(make())
    assert events == [TextDelta("half")]
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_DISCONNECTED"


async def test_stall_longer_than_read_timeout(up: ScriptedUpstream, make: Make) -> None:
    up.stall(5)
    started = time.monotonic()
    events, err = await failure(make())
    assert events == []
    assert isinstance(err, DeadlineExceeded)
    assert err.reason == "UPSTREAM_TIMEOUT"
    assert "READ_TIMEOUT_SECONDS" in err.message
    assert time.monotonic() - started < 3


async def test_total_timeout_covers_the_whole_stream(up: ScriptedUpstream, make: Make) -> None:
    up.reply(["a", "b", "c", "d", "e"], delay=0.25)
    provider = make(timeouts=Timeouts(read=2, total=0.6, max_retries=0))
    events, err = await failure(provider)
    assert 1 <= len(events) < 5
    assert isinstance(err, DeadlineExceeded)
    assert err.reason == "UPSTREAM_TIMEOUT"
    assert "TOTAL_TIMEOUT_SECONDS" in err.message


async def test_malformed_line(up: ScriptedUpstream, make: Make) -> None:
    bad = '{"choices": [oops' + "x" * 300
    up.raw([sse_chunk("ok"), "data: " + bad])
    events, err = await failure(make())
    assert events == [TextDelta("ok")]
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_MALFORMED"
    assert '{"choices": [oops' in err.message
    assert "x" * 200 not in err.message  # the line is cut to 200 characters


async def test_a_whole_completion_sent_instead_of_a_stream_is_one_delta(
    up: ScriptedUpstream, make: Make
) -> None:
    """A server that ignores `stream: true` and answers the whole chat.completion."""
    choice = {"index": 0, "message": {"role": "assistant", "content": "all at once"}}
    completion = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{**choice, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    up.fail(200, completion)
    assert await collect(make()) == [TextDelta("all at once"), StreamEnd("length", 9, 4)]
    up.fail(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]})
    assert await collect(make()) == [StreamEnd("stop")]


@pytest.mark.parametrize(
    "body", [{"error": {"message": "quota exceeded"}}, {"detail": "quota exceeded"}, "quota"]
)
async def test_a_json_body_that_is_no_answer_is_an_error_with_its_message(
    up: ScriptedUpstream, make: Make, body: object
) -> None:
    up.fail(200, body)
    events, err = await failure(make())
    assert events == []
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_ERROR"
    assert "quota" in err.message


async def test_an_answer_past_8_mib_instead_of_a_stream_is_refused(
    up: ScriptedUpstream, make: Make
) -> None:
    up.fail(200, {"choices": [{"message": {"content": "y" * (9 * 1024 * 1024)}}]})
    events, err = await failure(make())
    assert events == []
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_MALFORMED"
    assert "an answer longer than 8 MiB" in err.message


async def test_error_inside_a_200_stream(up: ScriptedUpstream, make: Make) -> None:
    error = {"error": {"message": f"model overloaded (key {KEY})", "type": "server_error"}}
    up.raw([sse_chunk("par"), "data: " + json.dumps(error)])
    events, err = await failure(make())
    assert events == [TextDelta("par")]
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_ERROR"
    assert "model overloaded" in err.message
    assert_no_key(err)


# -- cancellation --------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_request(
    up: ScriptedUpstream, make: Make
) -> None:
    up.reply([f"part {i} " for i in range(20)], delay=0.1)
    provider = make()
    first = asyncio.Event()
    received: list[StreamEvent] = []

    async def consume() -> None:
        async for event in provider.stream("gpt-4o-mini", HELLO, SamplingParams()):
            received.append(event)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await up.wait_for(lambda: up.disconnects == 1)
    assert up.completed == 0
    assert 1 <= len(received) < 20


# -- routes to providers -------------------------------------------------------------


class _FakeLocal:
    """Stands in for the embedded model, which is not part of this layer."""

    name = "local"
    closed = False

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        api_key: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        yield TextDelta(f"{model} says hi")
        yield StreamEnd("stop")

    async def aclose(self) -> None:
        self.closed = True


async def test_routes_reach_their_providers(up: ScriptedUpstream) -> None:
    config = parse_routing(
        {
            "MODEL_ROUTE_FAST": "groq/llama-3.1-8b",
            "PROVIDER_GROQ_BASE_URL": up.base_url,
            "PROVIDER_GROQ_API_KEY": "gsk_groq_key_0001",
            "MODEL_ROUTE_TINY": "local/smollm2-135m",
            "READ_TIMEOUT_SECONDS": "0.5",
            "MAX_RETRIES": "0",
        }
    )
    made: list[_FakeLocal] = []

    def local_factory() -> Provider:
        made.append(_FakeLocal())
        return made[-1]

    providers = build_providers(config, local_factory)
    routes = RouteTable(config)
    try:
        assert sorted(providers) == ["groq", "local"]
        assert made == []  # the local model is made on first use only
        fast = routes.resolve("fast")
        up.reply(["quick"])
        events = [
            e async for e in providers[fast.provider].stream(fast.model_id, HELLO, SamplingParams())
        ]
        assert events[0] == TextDelta("quick")
        assert up.requests[0].json["model"] == "llama-3.1-8b"
        assert up.requests[0].authorization == "Bearer gsk_groq_key_0001"
        tiny = routes.resolve("TINY")
        stream = providers[tiny.provider].stream(tiny.model_id, HELLO, SamplingParams())
        assert await collect_all(stream) == [TextDelta("smollm2-135m says hi"), StreamEnd("stop")]
        assert len(made) == 1
    finally:
        await close_all(providers)
    assert made[0].closed


async def test_local_route_without_a_local_model() -> None:
    config = parse_routing({})  # the LOCAL fallback route
    providers = build_providers(config, None)
    route = RouteTable(config).resolve(None)
    with pytest.raises(FailedPrecondition) as caught:
        async for _ in providers[route.provider].stream(route.model_id, HELLO, SamplingParams()):
            pass
    assert caught.value.reason == "LOCAL_MODEL_UNAVAILABLE"
    await close_all(providers)
