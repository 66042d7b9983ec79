"""A test-only ConversationService whose calls can be slow, fail mid-stream or
echo their metadata: what the real server cannot be made to do on demand.

ExportConversations by its first name:
  "slow"       one data event, then waits until cancelled (records it)
  "heartbeat"  two data events 0.35 s apart, then a summary
  "fail"       one data event, then UNAVAILABLE with RetryInfo
  "fail-first" UNAVAILABLE before any event
GetConversation by name:
  "conversations/slow"  waits until cancelled (records it)
  "conversations/busy"  RESOURCE_EXHAUSTED with RetryInfo of 1.2 s
  "conversations/echo"  title = the Authorization metadata, metadata = every key
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from byok.server.errors import ResourceExhausted, Unavailable
from byok.server.rpc.errors import abort
from byok.v1 import conversations_pb2 as pb
from byok.v1 import conversations_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class FakeConversations(conversations_pb2_grpc.ConversationServiceServicer):
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def _wait_forever(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context
    ) -> pb.Conversation:
        if request.name == "conversations/slow":
            await self._wait_forever()
        if request.name == "conversations/busy":
            await abort(context, ResourceExhausted("slow down", retry_after=1.2))
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        return pb.Conversation(
            name=request.name, title=metadata.get("authorization", ""), metadata=metadata
        )

    async def ExportConversations(
        self, request: pb.ExportConversationsRequest, context: Context
    ) -> AsyncIterator[pb.ExportConversationsResponse]:
        mode = request.names[0] if request.names else ""
        if mode == "fail-first":
            await abort(context, Unavailable("not now", retry_after=0.5))
        yield pb.ExportConversationsResponse(sequence=1, data=b"[")
        if mode == "slow":
            await self._wait_forever()
        if mode == "fail":
            await abort(context, Unavailable("upstream went away", retry_after=2))
        if mode == "heartbeat":
            await asyncio.sleep(0.35)
            yield pb.ExportConversationsResponse(sequence=2, data=b"]")
            await asyncio.sleep(0.35)
        yield pb.ExportConversationsResponse(
            sequence=3, summary=pb.ExportSummary(conversation_count=0, format_version=1)
        )


@contextlib.asynccontextmanager
async def fake_grpc_server() -> AsyncIterator[tuple[str, FakeConversations]]:
    """The fake on a loopback port: yields (target, servicer)."""
    server = grpc.aio.server()
    fake = FakeConversations()  # type: ignore[abstract]  # the other RPCs: UNIMPLEMENTED
    conversations_pb2_grpc.add_ConversationServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        await server.stop(0)
