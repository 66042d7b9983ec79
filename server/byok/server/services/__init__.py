"""One module per proto service: proto in, core call, proto out.

Until the issue that owns a service lands, `unimplemented` stands in for it and
answers each of its RPCs with UNIMPLEMENTED and the RPC's name.
"""

from __future__ import annotations

from typing import Any

import grpc

from byok.server.accounts.provider_keys import ProviderKeys
from byok.server.chat.engine import ChatEngine
from byok.server.conversations.service import Conversations
from byok.server.models.catalog import ModelCatalog
from byok.server.models.profiles import ModelProfiles
from byok.server.rpc.server import ServiceBinding
from byok.server.services.chat import ChatServicer
from byok.server.services.conversations import ConversationServicer
from byok.server.services.models import ModelServicer
from byok.server.services.provider_keys import ProviderKeysMixin
from byok.server.services.spaces import SpaceServicer
from byok.server.spaces.service import Spaces
from byok.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    spaces_pb2,
    spaces_pb2_grpc,
)


def binding(pb2: Any, pb2_grpc: Any, service: str, servicer: Any) -> ServiceBinding:
    full_name = str(pb2.DESCRIPTOR.services_by_name[service].full_name)
    register = getattr(pb2_grpc, f"add_{service}Servicer_to_server")
    return ServiceBinding(full_name, servicer, register)


def unimplemented(pb2: Any, pb2_grpc: Any, service: str) -> ServiceBinding:
    """A servicer whose every RPC answers UNIMPLEMENTED, without a traceback."""
    return binding(pb2, pb2_grpc, service, unimplemented_class(pb2, pb2_grpc, service)())


def unimplemented_class(pb2: Any, pb2_grpc: Any, service: str) -> type:
    descriptor = pb2.DESCRIPTOR.services_by_name[service]

    def make(method: str) -> Any:
        full = f"/{descriptor.full_name}/{method}"

        async def handler(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{full} is not implemented yet")

        return handler

    base = getattr(pb2_grpc, f"{service}Servicer")
    methods = {m.name: make(m.name) for m in descriptor.methods}
    return type(f"Unimplemented{service}", (base,), methods)


class _ModelServicer(ProviderKeysMixin, ModelServicer):
    def __init__(
        self, catalog: ModelCatalog, profiles: ModelProfiles, provider_keys: ProviderKeys
    ) -> None:
        super().__init__(catalog, profiles)
        self.provider_keys = provider_keys


def service_bindings(
    conversations: Conversations,
    chat: ChatEngine,
    provider_keys: ProviderKeys,
    catalog: ModelCatalog,
    profiles: ModelProfiles,
    spaces: Spaces,
) -> list[ServiceBinding]:
    return [
        binding(
            conversations_pb2,
            conversations_pb2_grpc,
            "ConversationService",
            ConversationServicer(conversations),
        ),
        binding(chat_pb2, chat_pb2_grpc, "ChatService", ChatServicer(chat)),
        binding(
            models_pb2,
            models_pb2_grpc,
            "ModelService",
            _ModelServicer(catalog, profiles, provider_keys),
        ),
        binding(spaces_pb2, spaces_pb2_grpc, "SpaceService", SpaceServicer(spaces)),
    ]
