"""ConversationService: proto in, `Conversations` core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from byok.server.conversations import exchange
from byok.server.conversations.service import Conversations
from byok.server.rpc.calls import user_of
from byok.server.services.convert import conversation_pb, hit_pb, message_from_pb, message_pb
from byok.v1 import conversations_pb2, conversations_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
_FORMATS: dict[int, Any] = {
    conversations_pb2.IMPORT_FORMAT_UNSPECIFIED: "auto",
    conversations_pb2.IMPORT_FORMAT_BYOK: "byok",
    conversations_pb2.IMPORT_FORMAT_CHATGPT: "chatgpt",
}


class ConversationServicer(conversations_pb2_grpc.ConversationServiceServicer):
    def __init__(self, core: Conversations):
        self.core = core

    async def CreateConversation(
        self, request: conversations_pb2.CreateConversationRequest, context: Context
    ) -> conversations_pb2.Conversation:
        c = request.conversation
        conv = await self.core.create(
            user_of(context),
            title=c.title,
            metadata=dict(c.metadata),
            space=c.space,
            pinned=c.pinned,
            archived=c.archived,
            conversation_id=request.conversation_id,
            request_id=request.request_id,
        )
        return conversation_pb(conv)

    async def GetConversation(
        self, request: conversations_pb2.GetConversationRequest, context: Context
    ) -> conversations_pb2.Conversation:
        full = request.view != conversations_pb2.CONVERSATION_VIEW_BASIC
        return conversation_pb(await self.core.get(user_of(context), request.name, full=full))

    async def ListConversations(
        self, request: conversations_pb2.ListConversationsRequest, context: Context
    ) -> conversations_pb2.ListConversationsResponse:
        page, token = await self.core.list_conversations(
            user_of(context),
            page_size=request.page_size,
            page_token=request.page_token,
            filter=request.filter,
            order_by=request.order_by,
        )
        return conversations_pb2.ListConversationsResponse(
            conversations=[conversation_pb(c) for c in page], next_page_token=token
        )

    async def UpdateConversation(
        self, request: conversations_pb2.UpdateConversationRequest, context: Context
    ) -> conversations_pb2.Conversation:
        c = request.conversation
        values = {
            "title": c.title,
            "metadata": dict(c.metadata),
            "pinned": c.pinned,
            "archived": c.archived,
            "space": c.space,
        }
        conv = await self.core.update(
            user_of(context), c.name, values, list(request.update_mask.paths), etag=c.etag
        )
        return conversation_pb(conv)

    async def DeleteConversation(
        self, request: conversations_pb2.DeleteConversationRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.core.delete(
            user_of(context), request.name, etag=request.etag, force=request.force
        )
        return empty_pb2.Empty()

    async def ListMessages(
        self, request: conversations_pb2.ListMessagesRequest, context: Context
    ) -> conversations_pb2.ListMessagesResponse:
        page, token = await self.core.list_messages(
            user_of(context),
            request.parent,
            page_size=request.page_size,
            page_token=request.page_token,
            order_by=request.order_by,
        )
        return conversations_pb2.ListMessagesResponse(
            messages=[message_pb(m) for m in page], next_page_token=token
        )

    async def CreateMessage(
        self, request: conversations_pb2.CreateMessageRequest, context: Context
    ) -> conversations_pb2.Message:
        message = await self.core.append(
            user_of(context),
            request.parent,
            message_from_pb(request.message),
            request_id=request.request_id,
        )
        return message_pb(message)

    async def GetMessage(
        self, request: conversations_pb2.GetMessageRequest, context: Context
    ) -> conversations_pb2.Message:
        return message_pb(await self.core.get_message(user_of(context), request.name))

    async def UpdateMessage(
        self, request: conversations_pb2.UpdateMessageRequest, context: Context
    ) -> conversations_pb2.Message:
        m = request.message
        values = {"content": m.content, "metadata": dict(m.metadata)}
        message = await self.core.update_message(
            user_of(context), m.name, values, list(request.update_mask.paths), etag=m.etag
        )
        return message_pb(message)

    async def DeleteMessage(
        self, request: conversations_pb2.DeleteMessageRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.core.delete_message(user_of(context), request.name, etag=request.etag)
        return empty_pb2.Empty()

    async def SearchMessages(
        self, request: conversations_pb2.SearchMessagesRequest, context: Context
    ) -> conversations_pb2.SearchMessagesResponse:
        hits, token = await self.core.search(
            user_of(context),
            request.parent,
            request.query,
            filter=request.filter,
            page_size=request.page_size,
            page_token=request.page_token,
            order_by=request.order_by,
        )
        return conversations_pb2.SearchMessagesResponse(
            results=[hit_pb(h) for h in hits], next_page_token=token
        )

    async def ExportConversations(
        self, request: conversations_pb2.ExportConversationsRequest, context: Context
    ) -> AsyncIterator[conversations_pb2.ExportConversationsResponse]:
        stats = exchange.ExportStats()
        sequence = 0
        async for chunk in self.core.export(user_of(context), list(request.names), stats):
            sequence += 1
            yield conversations_pb2.ExportConversationsResponse(sequence=sequence, data=chunk)
        yield conversations_pb2.ExportConversationsResponse(
            sequence=sequence + 1,
            summary=conversations_pb2.ExportSummary(
                conversation_count=stats.conversation_count,
                message_count=stats.message_count,
                format_version=exchange.FORMAT_VERSION,
            ),
        )

    async def ImportConversations(
        self, request: conversations_pb2.ImportConversationsRequest, context: Context
    ) -> conversations_pb2.ImportConversationsResponse:
        result = await self.core.import_(
            user_of(context),
            request.data,
            fmt=_FORMATS.get(request.format, "auto"),
            space=request.space,
        )
        return conversations_pb2.ImportConversationsResponse(
            created_count=len(result.created),
            skipped_count=result.skipped,
            failed_count=len(result.failures),
            failures=[
                conversations_pb2.ImportFailure(index=i, source_id=src, reason=why)
                for i, src, why in result.failures
            ],
            conversations=result.created,
        )
