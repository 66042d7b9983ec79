"""Graceful stop: SIGTERM with 20 live streams and a grace period some of them outlive.

Half the replies would end within the grace period, half long after it. Every stream has
received text before SIGTERM. Each must either finish (`done`, reply stored COMPLETE) or
end with an error status and its reply stored INCOMPLETE with reason "shutdown". A call
made after SIGTERM is refused, and the process exits 0 within the grace period plus a
few seconds.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc
from tests.reliability.conftest import (
    COMPLETE,
    INCOMPLETE,
    PlannedUpstream,
    emit,
    expected_reply,
    planned,
    route_env,
    threaded,
)
from tests.support.servers import ServerProcess

GRACE = 3.0
STREAMS = 20
FAST = (15, 100)  # 1.5 s: still streaming at SIGTERM, ends well within the grace period
SLOW = (100, 100)  # 10 s: outlives the grace period
EXIT_SLACK = 8.0  # seconds past the grace period a slow machine may need to exit


@dataclass
class Stream:
    content: str
    user_message: str = ""
    received: str = ""
    done: bool = False
    code: grpc.StatusCode | None = None
    details: str = ""


async def run(chat: chat_pb2_grpc.ChatServiceAsyncStub, stream: Stream) -> None:
    try:
        async for event in chat.StreamChat(
            chat_pb2.ChatRequest(content=stream.content), timeout=120
        ):
            kind = event.WhichOneof("event")
            if kind == "started":
                stream.user_message = event.started.user_message
            elif kind == "delta":
                stream.received += event.delta.text
            elif kind == "done":
                stream.done = True
    except grpc.aio.AioRpcError as exc:
        stream.code, stream.details = exc.code(), exc.details() or ""


async def refused(target: str, content: str) -> grpc.StatusCode | None:
    """A new call's status (None: it was served)."""
    async with grpc.aio.insecure_channel(target) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        try:
            async for _ in chat.StreamChat(chat_pb2.ChatRequest(content=content), timeout=30):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigterm_finishes_or_stores_shutdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = PlannedUpstream()
    streams = [Stream(planned(f"g{i}x", *(FAST if i % 2 else SLOW))) for i in range(STREAMS)]
    with threaded(upstream):
        env = route_env(upstream.base_url, BYOK_SHUTDOWN_GRACE_SECONDS=f"{GRACE:g}")
        server = ServerProcess(tmp_path / "data", env)
        await asyncio.to_thread(server.start, 120.0)
        assert server.proc is not None
        try:
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                chat = chat_pb2_grpc.ChatServiceStub(channel)
                tasks = [asyncio.create_task(run(chat, s)) for s in streams]
                async with asyncio.timeout(90):
                    while not all(s.received for s in streams):
                        assert not any(t.done() for t in tasks), [s.code for s in streams]
                        await asyncio.sleep(0.02)
                live_at_sigterm = sum(1 for t in tasks if not t.done())
                sigterm = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(30):
                    while True:  # /readyz says 503 once the stop has begun
                        try:
                            if (await http.get(f"{server.http_url}/readyz")).status_code != 200:
                                break
                        except httpx.HTTPError:
                            break
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                late_new_channel = await refused(server.grpc_target, planned("late1x", 2, 0))
                late_same_channel: grpc.StatusCode | None = None
                try:
                    async for _ in chat.StreamChat(
                        chat_pb2.ChatRequest(content=planned("late2x", 2, 0)), timeout=30
                    ):
                        pass
                except grpc.aio.AioRpcError as exc:
                    late_same_channel = exc.code()
                await asyncio.wait_for(asyncio.gather(*tasks), GRACE + 60)
                ended = time.monotonic() - sigterm
            code = await asyncio.to_thread(server.proc.wait, GRACE + 60)
            exited = time.monotonic() - sigterm
        finally:
            server.kill()

    con = sqlite3.connect(tmp_path / "data" / "byok.db")
    try:
        stored = {}
        for s in streams:
            user_id = s.user_message.rsplit("/", 1)[-1]
            stored[s.content] = con.execute(
                "SELECT r.status, r.incomplete_reason, r.content FROM messages u"
                " JOIN messages r ON r.conversation_seq = u.conversation_seq AND r.seq > u.seq"
                " WHERE u.id = ? ORDER BY r.seq LIMIT 1",
                (user_id,),
            ).fetchone()
        late = con.execute(
            "SELECT count(*) FROM messages WHERE content LIKE '%late1x%' OR content LIKE '%late2x%'"
        ).fetchone()[0]
    finally:
        con.close()

    finished = [s for s in streams if s.done]
    cut = [s for s in streams if not s.done]
    codes = Counter(s.code.name if s.code else "finished" for s in streams)
    emit(
        capsys,
        "graceful stop",
        [
            f"{STREAMS} streams ({live_at_sigterm} live at SIGTERM), grace {GRACE:g}s: "
            f"finished {len(finished)}, cut {len(cut)}; "
            f"client statuses {dict(codes)}",
            f"cut streams' details: {sorted({s.details for s in cut})}",
            f"stored: {dict(Counter(f'{r[0]}:{r[1]}' if r else 'absent' for r in stored.values()))}"
            " (1 = COMPLETE, 2 = INCOMPLETE)",
            f"a call after SIGTERM: new channel {late_new_channel}, same channel "
            f"{late_same_channel}",
            f"streams ended {ended:.1f}s after SIGTERM; exit code {code} after {exited:.1f}s",
        ],
    )
    assert code == 0, server.log()
    assert exited < GRACE + EXIT_SLACK, f"exited {exited:.1f}s after SIGTERM (grace {GRACE:g}s)"
    assert late_new_channel is not None and late_same_channel is not None, "a late call was served"
    assert late == 0, "a call refused after SIGTERM stored its message"
    assert cut, "no stream outlived the grace period: the test proves nothing"
    assert live_at_sigterm >= STREAMS // 2, "the slow streams were live at SIGTERM"
    for s in streams:
        row = stored[s.content]
        assert row is not None, f"no reply stored for {s.content!r} ({s.code})"
        status, reason, content = row
        if s.done:
            assert (status, content) == (COMPLETE, expected_reply(s.content))
        else:
            assert s.code is not None
            assert (status, reason) == (INCOMPLETE, "shutdown"), (s.code, row)
            assert content and expected_reply(s.content).startswith(content)
            assert content.startswith(s.received) or s.received.startswith(content)
