"""The byok Python client: a typed sync client over the gRPC API, and the `byok` CLI."""

from byok.client.client import (
    ALL_CONVERSATIONS,
    DEFAULT_TARGET,
    Client,
    Export,
    conversation_id,
    conversation_name,
)
from byok.client.errors import ByokError, FieldViolation, from_rpc_error

__all__ = [
    "ALL_CONVERSATIONS",
    "DEFAULT_TARGET",
    "ByokError",
    "Client",
    "Export",
    "FieldViolation",
    "conversation_id",
    "conversation_name",
    "from_rpc_error",
]
