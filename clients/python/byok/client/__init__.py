"""The byok Python client: typed sync (`Client`) and async (`AsyncClient`) clients over
the gRPC API, and the `byok` CLI."""

from byok.client.aio import AsyncClient
from byok.client.client import (
    ALL_CONVERSATIONS,
    DEFAULT_TARGET,
    Client,
    Export,
    chat_request,
    conversation_id,
    conversation_name,
)
from byok.client.errors import ByokError, FieldViolation, from_rpc_error

__all__ = [
    "ALL_CONVERSATIONS",
    "DEFAULT_TARGET",
    "AsyncClient",
    "ByokError",
    "Client",
    "Export",
    "FieldViolation",
    "chat_request",
    "conversation_id",
    "conversation_name",
    "from_rpc_error",
]
