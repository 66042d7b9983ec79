"""Crash durability: SIGKILL the server mid-traffic, again and again, on one data folder.

Each round starts `byok-server serve` (forked from a preloaded process, see ForkServer),
runs concurrent streamed turns whose replies stream slowly, and kills the server with
SIGKILL at a random moment (seeded; the seed is printed, BYOK_CRASH_SEED replays it).
The client records every user message the server acknowledged (the `started` event).

After each kill, before the restart, the database file is opened directly: integrity
check, FTS integrity check, the index holds exactly the messages, every message is
found by one of its words, every acknowledged user message is there and every assistant
message is its turn's full reply (COMPLETE) or a prefix of it (INCOMPLETE). After each
restart the server must be ready and the previous round's turns must read back through
the API. The last restart is a cold `byok-server serve` that checks everything.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.reliability.conftest import (
    ROLE_ASSISTANT,
    ROLE_USER,
    ForkServer,
    PlannedUpstream,
    StoredMessage,
    check_database,
    emit,
    expected_reply,
    planned,
    route_env,
    threaded,
)
from tests.support.servers import ServerProcess

if TYPE_CHECKING:
    ChatStub = chat_pb2_grpc.ChatServiceAsyncStub
    ConvStub = conversations_pb2_grpc.ConversationServiceAsyncStub

KILLS = int(os.environ.get("BYOK_CRASH_KILLS", "30"))
STREAMS = 8  # concurrent turns per round
CHUNKS, CHUNK_MS = 20, 50  # each reply: 20 chunks, 50 ms apart
CALL_TIMEOUT = 60.0


@dataclass
class Turn:
    content: str
    continues: str = ""  # the conversation continued, or "" for a new one
    sent: bool = False
    conversation: str = ""  # from `started`
    user_message: str = ""  # from `started`: the server acknowledged the message
    received: str = ""
    done_message: str = ""
    error: grpc.StatusCode | None = None

    @property
    def user_id(self) -> str:
        return self.user_message.rsplit("/", 1)[-1]


async def run_turn(chat: ChatStub, turn: Turn, start_after: float) -> None:
    await asyncio.sleep(start_after)
    turn.sent = True
    request = chat_pb2.ChatRequest(conversation=turn.continues, content=turn.content)
    try:
        async for event in chat.StreamChat(request, timeout=CALL_TIMEOUT):
            kind = event.WhichOneof("event")
            if kind == "started":
                turn.conversation = event.started.conversation
                turn.user_message = event.started.user_message
            elif kind == "delta":
                turn.received += event.delta.text
            elif kind == "done":
                turn.done_message = event.done.message
    except grpc.aio.AioRpcError as exc:
        turn.error = exc.code()


def check_stored(messages: list[StoredMessage], turns: list[Turn]) -> None:
    """What a fresh process reads after the kill, against what the client saw."""
    sent = {t.content for t in turns if t.sent}
    by_conversation: dict[str, list[StoredMessage]] = {}
    for m in messages:
        by_conversation.setdefault(m.conversation_id, []).append(m)
    for thread in by_conversation.values():
        previous: StoredMessage | None = None
        for m in thread:
            if m.role == ROLE_USER:
                assert m.content in sent, f"a stored user message nobody sent: {m.content!r}"
            else:
                assert m.role == ROLE_ASSISTANT
                assert previous is not None and previous.role == ROLE_USER, (
                    f"assistant message {m.id} does not follow a user message"
                )
                check_reply(previous.content, m.status, m.content, m.finish_reason)
            previous = m
    ids = {m.id: m for m in messages}
    for turn in turns:
        if turn.user_message:
            assert turn.user_id in ids, f"acknowledged user message lost: {turn.user_message}"
        if turn.done_message:
            reply = ids.get(turn.done_message.rsplit("/", 1)[-1])
            assert reply is not None, f"reply lost after `done`: {turn.done_message}"
            assert reply.status == cpb.MESSAGE_STATUS_COMPLETE and reply.content == expected_reply(
                turn.content
            )


def check_reply(user_content: str, status: int, content: str, finish_reason: str) -> None:
    full = expected_reply(user_content)
    if status == cpb.MESSAGE_STATUS_COMPLETE:
        assert content == full, f"COMPLETE reply is not the full text: {content!r}"
        assert finish_reason == "stop"
    else:
        assert status == cpb.MESSAGE_STATUS_INCOMPLETE, f"unknown status {status}"
        assert content and full.startswith(content), f"INCOMPLETE, not a prefix: {content!r}"


async def read_back(convs: ConvStub, turns: list[Turn], outcomes: Counter[str] | None) -> None:
    """Through the API: every acknowledged user message, and its reply if any."""
    threads: dict[str, list[cpb.Message]] = {}
    for turn in turns:
        if not turn.user_message:
            continue
        user = await convs.GetMessage(
            cpb.GetMessageRequest(name=turn.user_message), timeout=CALL_TIMEOUT
        )
        assert (user.role, user.content) == (cpb.ROLE_USER, turn.content)
        if turn.conversation not in threads:
            listing = await convs.ListMessages(
                cpb.ListMessagesRequest(parent=turn.conversation, page_size=1000),
                timeout=CALL_TIMEOUT,
            )
            threads[turn.conversation] = list(listing.messages)
        thread = threads[turn.conversation]
        index = [m.name for m in thread].index(turn.user_message)
        after = thread[index + 1] if index + 1 < len(thread) else None
        if after is None or after.role != cpb.ROLE_ASSISTANT:
            assert not turn.done_message, f"`done` was sent, the reply is gone: {turn}"
            outcome = "absent"
        else:
            check_reply(turn.content, after.status, after.content, after.finish_reason)
            if turn.done_message:
                assert after.name == turn.done_message
            outcome = "complete" if after.status == cpb.MESSAGE_STATUS_COMPLETE else "incomplete"
        if outcomes is not None:
            outcomes[outcome] += 1


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_loses_no_acknowledged_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("BYOK_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    emit(capsys, "crash", [f"seed {seed} (BYOK_CRASH_SEED={seed} replays it), {KILLS} kills"])
    rng = random.Random(seed)
    data = tmp_path / "data"
    db = data / "byok.db"
    turns: list[Turn] = []
    kill_points: list[float] = []
    ready_times: list[float] = []
    began = time.monotonic()
    upstream = PlannedUpstream()
    with threaded(upstream), ForkServer(tmp_path / "logs") as forks:
        env = route_env(upstream.base_url)
        previous: list[Turn] = []
        for round_no in range(KILLS):
            server = forks.spawn(data, env)
            ready_times.append(await server.wait_ready())
            if round_no:
                check_database(db)  # also with the restarted server running
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                chat = chat_pb2_grpc.ChatServiceStub(channel)
                convs = conversations_pb2_grpc.ConversationServiceStub(channel)
                await read_back(convs, previous, None)
                # Some turns continue a conversation from an earlier round (one per round).
                earlier = sorted({t.conversation for t in turns if t.conversation})
                continued = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 3)))
                batch = [
                    Turn(
                        planned(f"r{round_no:02d}t{i}q", CHUNKS, CHUNK_MS),
                        continued[i] if i < len(continued) else "",
                    )
                    for i in range(STREAMS)
                ]
                turns.extend(batch)
                kill_at = rng.uniform(0.0, 2.5)
                kill_points.append(kill_at)
                tasks = [
                    asyncio.create_task(run_turn(chat, turn, rng.uniform(0.0, 0.8)))
                    for turn in batch
                ]
                await asyncio.sleep(kill_at)
                server.kill()
                await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT + 30)
            check_stored(check_database(db), turns)  # after the kill, before the restart
            previous = batch

        # A cold start of the real command on the data the last kill left.
        cold = ServerProcess(data, env)
        await asyncio.to_thread(cold.start, 120.0)
        try:
            outcomes: Counter[str] = Counter()
            async with grpc.aio.insecure_channel(cold.grpc_target) as channel:
                convs = conversations_pb2_grpc.ConversationServiceStub(channel)
                await read_back(convs, turns, outcomes)
            messages = check_database(db)
            check_stored(messages, turns)
        finally:
            cold.kill()

    sent = [t for t in turns if t.sent]
    acked = [t for t in turns if t.user_message]
    acked_ids = {t.user_id for t in acked}
    stored_unacked = sum(1 for m in messages if m.role == ROLE_USER and m.id not in acked_ids)
    errors = Counter(t.error.name if t.error else "none" for t in sent)
    assert len(kill_points) == KILLS
    assert acked, "no turn was ever acknowledged: the kills came too early"
    emit(
        capsys,
        "crash",
        [
            f"seed {seed}; {KILLS} SIGKILLs at {min(kill_points):.2f}-{max(kill_points):.2f}s "
            f"into a round; {time.monotonic() - began:.0f}s in all",
            f"turns started {len(sent)}, acknowledged {len(acked)}, `done` received "
            f"{sum(1 for t in acked if t.done_message)}, user messages stored but never "
            f"acknowledged {stored_unacked}",
            f"replies of acknowledged turns: complete {outcomes['complete']}, incomplete "
            f"{outcomes['incomplete']}, absent {outcomes['absent']}",
            f"client statuses: {dict(errors)}",
            f"stored messages {len(messages)}; restart to ready: median "
            f"{sorted(ready_times)[len(ready_times) // 2]:.2f}s, max {max(ready_times):.2f}s",
        ],
    )
