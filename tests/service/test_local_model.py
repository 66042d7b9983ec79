"""The embedded model, for real: a few tokens from SmolLM2 through the whole server."""

from __future__ import annotations

from pathlib import Path

import grpc

from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2, conversations_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.support.servers import running_app


async def test_local_model_streams_a_real_answer_with_no_key(tmp_path: Path) -> None:
    # No routes configured at all: the local route is the default.
    async with running_app(tmp_path / "data", routes={}) as srv:
        async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
            chat = chat_pb2_grpc.ChatServiceStub(ch)
            params = common_pb2.GenerationParams(max_tokens=8, temperature=0.0)
            events = [
                e
                async for e in chat.StreamChat(
                    chat_pb2.ChatRequest(content="Say hello.", params=params)
                )
            ]
            kinds = [e.WhichOneof("event") for e in events]
            assert kinds[0] == "started" and kinds[-2:] == ["usage", "done"]
            assert events[0].started.route == "LOCAL" and events[0].started.provider == "local"
            text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
            assert text.strip(), "the model said nothing"
            assert kinds.count("delta") >= 2  # streamed token by token
            usage = events[-2].usage
            assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
            convs = conversations_pb2_grpc.ConversationServiceStub(ch)
            conv = await convs.GetConversation(
                cpb.GetConversationRequest(name=events[0].started.conversation)
            )
            assert conv.messages[-1].content == text and conv.last_model == "smollm2-135m"
