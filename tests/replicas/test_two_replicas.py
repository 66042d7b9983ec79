"""Two `byok-server serve` processes on one PostgreSQL and one Redis, as deployed behind
a load balancer (docs/deploy.md): any replica serves any request.

- a conversation started on one replica continues on the other, with its history;
- 2 x 50 concurrent appends to one thread through both keep one order and exact counts;
- an etag taken before another replica's update is ABORTED;
- the per-user rate limit is one budget across both replicas (Redis).

The module creates its own database and drops it at the end. Redis counters are keyed
by user id, and the users here are new, so nothing is shared with other runs. PostgreSQL
or Redis not answering is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from byok.server.accounts.provider_keys import new_master_key
from byok.server.accounts.users import Accounts
from byok.server.storage.postgres import PostgresStore
from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2, conversations_pb2_grpc
from tests.storage.test_store_contract import create_database, drop_database
from tests.support.rpc import rpc_error
from tests.support.servers import ServerProcess
from tests.support.upstream import ScriptedUpstream, ThreadedUpstream

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE_LIMIT = 6
APPENDS = 50  # per replica

pytestmark = [
    pytest.mark.timeout(300),
]

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Cluster:
    url: str
    upstream: ScriptedUpstream
    master_key: str


def new_user(url: str, name: str) -> str:
    """A user with an API key in the shared database; returns the key."""

    async def create() -> str:
        store = await PostgresStore.open(url)
        try:
            accounts = Accounts(store)
            await accounts.create_user(name)
            return (await accounts.create_key(name, "replica test")).key
        finally:
            await store.close()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start redis-server")
    url = create_database("byok_replicas")
    try:
        with ThreadedUpstream() as upstream:
            yield Cluster(url, upstream, new_master_key())
    finally:
        drop_database(url)


def start_pair(cluster: Cluster, data: Path, **env: str) -> list[ServerProcess]:
    """Two replicas started at once (both migrate: one applies, the other waits)."""
    shared = {
        "BYOK_DATABASE_URL": cluster.url,
        "USE_REDIS": "true",
        "REDIS_URL": REDIS_URL,
        "RATE_LIMIT_FAIL_OPEN": "false",  # a Redis failure must not pass for a shared limit
        "REDIS_TIMEOUT_SECONDS": "5",  # a busy CI machine must not look like a Redis outage
        "AUTH_MODE": "keys",
        "BYOK_MASTER_KEY": cluster.master_key,
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "DEFAULT_MODEL_ROUTE": "FAST",
        "OPENAI_API_KEY": "sk-test-0123456789abcdef",
        "OPENAI_BASE_URL": cluster.upstream.base_url,
        "BYOK_LOG_LEVEL": "WARNING",
        **env,
    }
    servers = [ServerProcess(data / f"replica-{i}" / "data", dict(shared)) for i in range(2)]
    for server in servers:
        server.data_dir.parent.mkdir(parents=True)
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start(timeout=120)
        except BaseException as exc:  # reported below, with the server's log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in servers:
            server.kill()
        raise errors[0]
    return servers


@pytest.fixture(scope="module")
def replicas(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """Two replicas without a rate limit."""
    servers = start_pair(cluster, tmp_path_factory.mktemp("replicas"))
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()


@asynccontextmanager
async def channels(servers: list[ServerProcess]) -> AsyncIterator[list[grpc.aio.Channel]]:
    opened = [grpc.aio.insecure_channel(s.grpc_target) for s in servers]
    try:
        yield opened
    finally:
        for channel in opened:
            await channel.close()


def auth(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


async def turn(
    channel: grpc.aio.Channel, md: Metadata, content: str, conversation: str = ""
) -> tuple[str, str]:
    """One streamed turn; returns (conversation name, reply text)."""
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    name, text, done = "", "", False
    request = chat_pb2.ChatRequest(conversation=conversation, content=content)
    async for event in chat.StreamChat(request, metadata=md, timeout=60):
        kind = event.WhichOneof("event")
        if kind == "started":
            name = event.started.conversation
        elif kind == "delta":
            text += event.delta.text
        elif kind == "done":
            done = event.done.finish_reason == "stop"
    assert done and name
    return name, text


async def list_all(channel: grpc.aio.Channel, md: Metadata, parent: str) -> list[str]:
    """Every message name of the thread, oldest first, page by page."""
    stub = conversations_pb2_grpc.ConversationServiceStub(channel)
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListMessages(
            conversations_pb2.ListMessagesRequest(parent=parent, page_size=37, page_token=token),
            metadata=md,
        )
        names += [m.name for m in page.messages]
        token = page.next_page_token
        if not token:
            return names


async def test_a_conversation_continues_on_the_other_replica(
    cluster: Cluster, replicas: list[ServerProcess]
) -> None:
    md = auth(await asyncio.to_thread(new_user, cluster.url, "ada"))
    async with channels(replicas) as (a, b):
        name, reply = await turn(a, md, "first question, on replica A")
        assert reply == "echo: first question, on replica A"
        seen = len(cluster.upstream.requests)
        again, reply = await turn(b, md, "second question, on replica B", conversation=name)
        assert again == name and reply == "echo: second question, on replica B"

        sent = cluster.upstream.requests[seen].json["messages"]
        history = [(m["role"], m["content"]) for m in sent if m["role"] != "system"]
        assert history == [
            ("user", "first question, on replica A"),
            ("assistant", "echo: first question, on replica A"),
            ("user", "second question, on replica B"),
        ]
        conversations = conversations_pb2_grpc.ConversationServiceStub(a)
        conv = await conversations.GetConversation(
            conversations_pb2.GetConversationRequest(name=name), metadata=md
        )
        assert conv.message_count == 4
        assert [m.content for m in conv.messages][-1] == "echo: second question, on replica B"


async def test_concurrent_appends_through_both_replicas_keep_one_order(
    cluster: Cluster, replicas: list[ServerProcess]
) -> None:
    md = auth(await asyncio.to_thread(new_user, cluster.url, "bob"))
    async with channels(replicas) as (a, b):
        stubs = [conversations_pb2_grpc.ConversationServiceStub(ch) for ch in (a, b)]
        conv = await stubs[0].CreateConversation(
            conversations_pb2.CreateConversationRequest(
                conversation=conversations_pb2.Conversation(title="busy")
            ),
            metadata=md,
        )

        async def append(replica: int, i: int) -> str:
            message = await stubs[replica].CreateMessage(
                conversations_pb2.CreateMessageRequest(
                    parent=conv.name,
                    message=conversations_pb2.Message(
                        role=conversations_pb2.ROLE_USER, content=f"{replica}:{i}"
                    ),
                ),
                metadata=md,
                timeout=60,
            )
            return str(message.name)

        created = await asyncio.gather(
            *(append(replica, i) for i in range(APPENDS) for replica in (0, 1))
        )
        assert len(set(created)) == 2 * APPENDS

        via_a, via_b = await asyncio.gather(list_all(a, md, conv.name), list_all(b, md, conv.name))
        assert via_a == via_b and sorted(via_a) == sorted(created)
        for stub in stubs:
            got = await stub.GetConversation(
                conversations_pb2.GetConversationRequest(name=conv.name), metadata=md
            )
            assert got.message_count == 2 * APPENDS == len(got.messages)
            assert [m.name for m in got.messages] == via_a
            # The order is the commit order: each append takes its time under the
            # thread's row lock (both replicas read one clock here).
            times = [m.create_time.ToMicroseconds() for m in got.messages]
            assert times == sorted(times)


async def test_an_etag_conflict_between_replicas_is_aborted(
    cluster: Cluster, replicas: list[ServerProcess]
) -> None:
    md = auth(await asyncio.to_thread(new_user, cluster.url, "cy"))
    async with channels(replicas) as (a, b):
        stub_a = conversations_pb2_grpc.ConversationServiceStub(a)
        stub_b = conversations_pb2_grpc.ConversationServiceStub(b)
        conv = await stub_a.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                conversation=conversations_pb2.Conversation(title="v1")
            ),
            metadata=md,
        )

        def update(title: str, etag: str) -> conversations_pb2.UpdateConversationRequest:
            request = conversations_pb2.UpdateConversationRequest(
                conversation=conversations_pb2.Conversation(name=conv.name, title=title, etag=etag)
            )
            request.update_mask.paths.append("title")
            return request

        first = await stub_a.UpdateConversation(update("v2 by A", conv.etag), metadata=md)
        assert first.title == "v2 by A" and first.etag != conv.etag
        with rpc_error(grpc.StatusCode.ABORTED) as err:
            await stub_b.UpdateConversation(update("v2 by B", conv.etag), metadata=md)
        assert err.reason == "ETAG_MISMATCH"
        current = await stub_b.GetConversation(
            conversations_pb2.GetConversationRequest(name=conv.name), metadata=md
        )
        assert current.title == "v2 by A" and current.etag == first.etag
        second = await stub_b.UpdateConversation(update("v3 by B", first.etag), metadata=md)
        assert second.title == "v3 by B"


async def test_the_rate_limit_is_one_budget_across_replicas(
    cluster: Cluster, replicas: list[ServerProcess], tmp_path: Path
) -> None:
    limited = await asyncio.to_thread(
        start_pair, cluster, tmp_path, RATE_LIMIT_PER_MIN=str(RATE_LIMIT)
    )
    try:
        md = auth(await asyncio.to_thread(new_user, cluster.url, "dee"))
        # The limit is per calendar minute: keep the burst inside one.
        if time.time() % 60 > 50:
            await asyncio.sleep(61 - time.time() % 60)
        async with channels(limited) as (a, b):
            stubs = [conversations_pb2_grpc.ConversationServiceStub(ch) for ch in (a, b)]
            allowed = refused = 0
            for i in range(3 * RATE_LIMIT):
                try:
                    await stubs[i % 2].ListConversations(
                        conversations_pb2.ListConversationsRequest(), metadata=md
                    )
                    allowed += 1
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                    refused += 1
            assert (allowed, refused) == (RATE_LIMIT, 2 * RATE_LIMIT)
            # Another user has a budget of their own, on either replica.
            other = auth(await asyncio.to_thread(new_user, cluster.url, "eve"))
            await stubs[1].ListConversations(
                conversations_pb2.ListConversationsRequest(), metadata=other
            )
    finally:
        for server in limited:
            server.kill()
