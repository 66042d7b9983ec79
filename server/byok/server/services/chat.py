"""ChatService: proto in, `ChatEngine` turn, proto events out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from byok.server.chat.engine import (
    ChatEngine,
    ChatTurn,
    Delta,
    Done,
    GenerationOverrides,
    Started,
    UsageReport,
)
from byok.server.errors import ByokError
from byok.server.rpc.calls import user_of
from byok.server.services.convert import duration, message_pb
from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def turn_from(request: chat_pb2.ChatRequest, user_id: str) -> ChatTurn:
    p = request.params
    return ChatTurn(
        user_id=user_id,
        content=request.content,
        conversation=request.conversation,
        model_key=request.model_key,
        model_profile=request.model_profile,
        params=GenerationOverrides(
            system_prompt=p.system_prompt if p.HasField("system_prompt") else None,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
            stop=tuple(p.stop),
        ),
        title=request.title,
        space=request.space,
    )


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, engine: ChatEngine):
        self.engine = engine

    async def StreamChat(
        self, request: chat_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        sequence = 0
        turn = turn_from(request, user_of(context))
        async with contextlib.aclosing(self.engine.stream(turn)) as events:
            async for event in events:
                sequence += 1
                yield _event_pb(sequence, event)

    async def Chat(self, request: chat_pb2.ChatRequest, context: Context) -> chat_pb2.ChatResponse:
        response = chat_pb2.ChatResponse()
        turn = turn_from(request, user_of(context))
        async with contextlib.aclosing(self.engine.stream(turn)) as events:
            async for event in events:
                if isinstance(event, Started):
                    response.conversation = event.conversation.name
                    response.user_message.CopyFrom(message_pb(event.user_message))
                elif isinstance(event, Done):
                    response.reply.CopyFrom(message_pb(event.message))
        if not response.reply.name:
            raise ByokError("the turn ended without a reply")
        return response


def _event_pb(sequence: int, event: object) -> chat_pb2.StreamChatResponse:
    if isinstance(event, Delta):
        return chat_pb2.StreamChatResponse(
            sequence=sequence, delta=chat_pb2.ChatDelta(text=event.text)
        )
    if isinstance(event, Started):
        return chat_pb2.StreamChatResponse(
            sequence=sequence,
            started=chat_pb2.ChatStarted(
                conversation=event.conversation.name,
                conversation_created=event.conversation_created,
                user_message=event.user_message.name,
                route=event.route.key,
                provider=event.route.provider,
                model=event.route.model_id,
            ),
        )
    if isinstance(event, UsageReport):
        return chat_pb2.StreamChatResponse(
            sequence=sequence,
            usage=common_pb2.TokenUsage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                total_tokens=event.prompt_tokens + event.completion_tokens,
            ),
        )
    assert isinstance(event, Done)
    m = event.message
    return chat_pb2.StreamChatResponse(
        sequence=sequence,
        done=chat_pb2.ChatDone(
            message=m.name,
            finish_reason=m.finish_reason,
            time_to_first_token=duration(m.ttft_us),
            latency=duration(m.latency_us),
        ),
    )
