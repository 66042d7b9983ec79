"""The async client: the same calls as `Client`, on grpc.aio, for asyncio programs.

    async with AsyncClient() as byok:
        async for event in byok.stream_chat(chat_request("hello")):
            ...
        async for conv in byok.list_conversations():
            ...

Errors are `ByokError` with the server's google.rpc details; unary calls are retried
on UNAVAILABLE with backoff (the same service config as the sync client).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from byok.client.client import (
    ALL_CONVERSATIONS,
    DEFAULT_TARGET,
    ENV_API_KEY,
    ENV_CA_FILE,
    ENV_TARGET,
    MAX_MESSAGE_BYTES,
    RETRY_SERVICE_CONFIG,
    conversation_name,
    role_value,
)
from byok.client.errors import from_rpc_error
from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2, conversations_pb2_grpc

_Resp = TypeVar("_Resp")


class AsyncClient:
    """A connection to a byok server for asyncio code; `async with` or `await close()`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        self.target = target or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {key}"),) if key else ()
        )
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        ca_file = ca_file or os.environ.get(ENV_CA_FILE) or None
        if ca_file:
            with open(ca_file, "rb") as pem:
                credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self.conversations = conversations_pb2_grpc.ConversationServiceStub(self._channel)
        self.chat_service = chat_pb2_grpc.ChatServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, deadline: float | None = None) -> Any:
        """`deadline`: seconds the server gets (a gRPC deadline, sent with the call)."""
        try:
            return await method(request, timeout=deadline or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # -- conversations ----------------------------------------------------------------

    async def create_conversation(
        self,
        title: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        space: str = "",
        conversation_id: str = "",
        request_id: str = "",
    ) -> conversations_pb2.Conversation:
        request = conversations_pb2.CreateConversationRequest(
            conversation=conversations_pb2.Conversation(
                title=title, metadata=dict(metadata or {}), space=space
            ),
            conversation_id=conversation_id,
            request_id=request_id,
        )
        result: conversations_pb2.Conversation = await self._unary(
            self.conversations.CreateConversation, request
        )
        return result

    async def get_conversation(
        self, name: str, full: bool = True
    ) -> conversations_pb2.Conversation:
        view = (
            conversations_pb2.CONVERSATION_VIEW_FULL
            if full
            else conversations_pb2.CONVERSATION_VIEW_BASIC
        )
        request = conversations_pb2.GetConversationRequest(name=conversation_name(name), view=view)
        result: conversations_pb2.Conversation = await self._unary(
            self.conversations.GetConversation, request
        )
        return result

    async def list_conversations(
        self, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> AsyncIterator[conversations_pb2.Conversation]:
        """Every conversation that matches, fetching pages as the loop needs them."""
        token = ""
        while True:
            page: conversations_pb2.ListConversationsResponse = await self._unary(
                self.conversations.ListConversations,
                conversations_pb2.ListConversationsRequest(
                    filter=filter, order_by=order_by, page_size=page_size, page_token=token
                ),
            )
            for conversation in page.conversations:
                yield conversation
            token = page.next_page_token
            if not token:
                return

    async def delete_conversation(self, name: str, *, force: bool = False) -> None:
        await self._unary(
            self.conversations.DeleteConversation,
            conversations_pb2.DeleteConversationRequest(name=conversation_name(name), force=force),
        )

    async def create_message(
        self, conversation: str, content: str, *, role: Any = "user"
    ) -> conversations_pb2.Message:
        request = conversations_pb2.CreateMessageRequest(
            parent=conversation_name(conversation),
            message=conversations_pb2.Message(role=role_value(role), content=content),
        )
        result: conversations_pb2.Message = await self._unary(
            self.conversations.CreateMessage, request
        )
        return result

    async def list_messages(
        self, conversation: str, *, page_size: int = 0
    ) -> AsyncIterator[conversations_pb2.Message]:
        token = ""
        while True:
            page: conversations_pb2.ListMessagesResponse = await self._unary(
                self.conversations.ListMessages,
                conversations_pb2.ListMessagesRequest(
                    parent=conversation_name(conversation), page_size=page_size, page_token=token
                ),
            )
            for message in page.messages:
                yield message
            token = page.next_page_token
            if not token:
                return

    async def search(
        self,
        query: str,
        *,
        parent: str = ALL_CONVERSATIONS,
        filter: str = "",
        order_by: str = "",
        limit: int = 100,
    ) -> AsyncIterator[conversations_pb2.SearchResult]:
        token, seen = "", 0
        while seen < limit:
            page: conversations_pb2.SearchMessagesResponse = await self._unary(
                self.conversations.SearchMessages,
                conversations_pb2.SearchMessagesRequest(
                    parent=parent,
                    query=query,
                    filter=filter,
                    order_by=order_by,
                    page_size=min(100, limit - seen),
                    page_token=token,
                ),
            )
            for result in page.results:
                seen += 1
                yield result
            token = page.next_page_token
            if not token:
                return

    # -- chat -------------------------------------------------------------------------

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, *, deadline: float | None = None
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        """started, delta..., usage, done as they arrive; leaving the loop early (or
        cancelling the task) cancels the turn on the server and upstream."""
        call = self.chat_service.StreamChat(request, timeout=deadline, metadata=self._metadata)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def chat(
        self, request: chat_pb2.ChatRequest, *, deadline: float | None = None
    ) -> chat_pb2.ChatResponse:
        result: chat_pb2.ChatResponse = await self._unary(
            self.chat_service.Chat, request, deadline=deadline or 600.0
        )
        return result
