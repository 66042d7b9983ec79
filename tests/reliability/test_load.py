"""Load: 500 concurrent streamed turns against `byok-server serve`, none fails, and the
server's memory (VmRSS of its process) grows within a generous bound and comes back.
Under concurrent load, what `started` acknowledged is readable by the next call."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.reliability.conftest import emit, route_env, rss_mb, threaded
from tests.support.servers import ServerProcess
from tests.support.upstream import ScriptedUpstream

TURNS = 500
CHANNELS = 5  # the turns share 5 client connections, 100 streams each
WARM_UP = 20
PEAK_GROWTH_MB = 300
AFTER_GROWTH_MB = 100


async def one_turn(chat: chat_pb2_grpc.ChatServiceAsyncStub, index: int) -> str:
    """Returns "" when the turn streamed and ended well, else what went wrong."""
    content = f"load turn {index}"
    text, done = "", False
    try:
        async for event in chat.StreamChat(chat_pb2.ChatRequest(content=content), timeout=120):
            kind = event.WhichOneof("event")
            if kind == "delta":
                text += event.delta.text
            elif kind == "done":
                done = event.done.finish_reason == "stop"
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    if not done or text != f"echo: {content}":
        return f"turn {index} ended without done or with {text!r}"
    return ""


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append(rss_mb(self.pid))
            self.halt.wait(self.every)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_500_concurrent_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = ScriptedUpstream()  # echoes "echo: <message>" in three chunks
    with threaded(upstream):
        server = ServerProcess(tmp_path / "data", route_env(upstream.base_url))
        await asyncio.to_thread(server.start, 120.0)
        assert server.proc is not None
        pid = server.proc.pid
        channels = [grpc.aio.insecure_channel(server.grpc_target) for _ in range(CHANNELS)]
        try:
            stubs = [chat_pb2_grpc.ChatServiceStub(ch) for ch in channels]
            warm = await asyncio.gather(*(one_turn(stubs[0], -i - 1) for i in range(WARM_UP)))
            assert not any(warm), warm
            await asyncio.sleep(1)
            before = rss_mb(pid)
            sampler = RssSampler(pid)
            sampler.start()
            started = time.monotonic()
            problems = await asyncio.gather(
                *(one_turn(stubs[i % CHANNELS], i) for i in range(TURNS))
            )
            took = time.monotonic() - started
            sampler.halt.set()
            sampler.join(5)
            await asyncio.sleep(2)
            after = rss_mb(pid)
        finally:
            for channel in channels:
                await channel.close()
            server.kill()

    con = sqlite3.connect(tmp_path / "data" / "byok.db")
    try:
        (stored,) = con.execute("SELECT count(*) FROM messages").fetchone()
    finally:
        con.close()
    peak = max([before, *sampler.samples, after])
    failed = [p for p in problems if p]
    emit(
        capsys,
        "load",
        [
            f"{TURNS} concurrent streamed turns on {CHANNELS} connections: {TURNS - len(failed)} "
            f"ok, {len(failed)} failed, {took:.1f}s ({TURNS / took:.0f} turns/s)",
            f"server RSS: before {before:.0f} MB, peak {peak:.0f} MB (+{peak - before:.0f}), "
            f"after {after:.0f} MB (+{after - before:.0f}); {len(sampler.samples)} samples",
        ],
    )
    assert not failed, failed[:5]
    assert stored == 2 * (TURNS + WARM_UP)
    assert peak - before < PEAK_GROWTH_MB
    assert after - before < AFTER_GROWTH_MB


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_acknowledged_messages_are_readable_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read-your-writes: the names in `started` are found by the very next call, while
    other calls keep the store's reader busy."""
    tally: dict[str, int] = {}

    def count(key: str) -> None:
        tally[key] = tally.get(key, 0) + 1

    with threaded(ScriptedUpstream()) as upstream:
        server = ServerProcess(tmp_path / "data", route_env(upstream.base_url))
        await asyncio.to_thread(server.start, 120.0)
        channels = [grpc.aio.insecure_channel(server.grpc_target) for _ in range(4)]
        try:

            async def writer(i: int) -> None:
                chat = chat_pb2_grpc.ChatServiceStub(channels[i % 4])
                convs = conversations_pb2_grpc.ConversationServiceStub(channels[(i + 1) % 4])
                for k in range(15):
                    request = chat_pb2.ChatRequest(content=f"writer {i} turn {k} hello")
                    async for event in chat.StreamChat(request, timeout=120):
                        if event.WhichOneof("event") != "started":
                            continue
                        started = event.started
                        lookups = (
                            (
                                "conversation",
                                convs.GetConversation(
                                    cpb.GetConversationRequest(name=started.conversation),
                                    timeout=60,
                                ),
                            ),
                            (
                                "message",
                                convs.GetMessage(
                                    cpb.GetMessageRequest(name=started.user_message), timeout=60
                                ),
                            ),
                        )
                        for kind, lookup in lookups:
                            try:
                                await lookup
                                count("found")
                            except grpc.aio.AioRpcError as exc:
                                count(f"{kind} {exc.code().name}")

            async def reader(i: int) -> None:
                convs = conversations_pb2_grpc.ConversationServiceStub(channels[i % 4])
                for _ in range(60):
                    await convs.ListConversations(
                        cpb.ListConversationsRequest(page_size=100), timeout=60
                    )
                    await convs.SearchMessages(
                        cpb.SearchMessagesRequest(parent="conversations/-", query="hello"),
                        timeout=60,
                    )

            await asyncio.gather(*(writer(i) for i in range(40)), *(reader(i) for i in range(10)))
        finally:
            for channel in channels:
                await channel.close()
            server.kill()
    emit(capsys, "read your writes", [f"lookups right after `started`: {tally}"])
    assert set(tally) == {"found"}, tally
