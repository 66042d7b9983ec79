"""A small typed, synchronous client for the byok gRPC API (ConversationService).

    with Client() as byok:                      # BYOK_GRPC_ADDR, else 127.0.0.1:50051
        conv = byok.create_conversation("Trip to Lisbon")
        byok.create_message(conv.name, "Plan 3 days in Lisbon")
        for hit in byok.search("lisbon"):
            print(hit.conversation_title, hit.snippet)

Every method raises `ByokError` (never a raw `grpc.RpcError`). Unary calls that fail with
UNAVAILABLE are retried up to 3 times with exponential backoff (gRPC's own retry support,
set up through the channel's service config); creates carry a generated `request_id`, so
a retried create never makes two resources.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from byok.client.errors import ByokError, from_rpc_error
from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2, conversations_pb2, conversations_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
ENV_CA_FILE = "BYOK_CA_FILE"
ENV_TARGET = "BYOK_GRPC_ADDR"
ENV_API_KEY = "BYOK_API_KEY"
ALL_CONVERSATIONS = "conversations/-"

_SERVICE = "byok.v1.ConversationService"
_UNARY_METHODS = (
    "CreateConversation",
    "GetConversation",
    "ListConversations",
    "UpdateConversation",
    "DeleteConversation",
    "ListMessages",
    "CreateMessage",
    "GetMessage",
    "UpdateMessage",
    "DeleteMessage",
    "SearchMessages",
    "ImportConversations",
)
RETRY_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": _SERVICE, "method": m} for m in _UNARY_METHODS],
            "retryPolicy": {
                "maxAttempts": 4,  # the first try and 3 retries
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a FULL conversation view or an import can be large

RoleArg: TypeAlias = conversations_pb2.Role.ValueType | str
FormatArg: TypeAlias = conversations_pb2.ImportFormat.ValueType | str  # "auto", "byok", "chatgpt"


def conversation_name(name_or_id: str) -> str:
    """Accepts a short id: "abc" → "conversations/abc"; a full name is kept."""
    if "/" in name_or_id:
        return name_or_id
    return f"conversations/{name_or_id}"


def conversation_id(name: str) -> str:
    """The id of a conversation name: "conversations/abc" → "abc"."""
    return name.removeprefix("conversations/")


def space_name(name_or_id: str) -> str:
    """Accepts a short id: "x" → "spaces/x"; "" stays "" (no space)."""
    if not name_or_id or "/" in name_or_id:
        return name_or_id
    return f"spaces/{name_or_id}"


def role_value(role: RoleArg) -> conversations_pb2.Role.ValueType:
    """The enum value of "user", "ROLE_USER" or `ROLE_USER`."""
    if isinstance(role, str):
        key = role.strip().upper()
        key = key if key.startswith("ROLE_") else f"ROLE_{key}"
        try:
            return conversations_pb2.Role.Value(key)
        except ValueError:
            raise ByokError("INVALID_ARGUMENT", f"unknown role {role!r}") from None
    return role


def _format_value(fmt: FormatArg) -> conversations_pb2.ImportFormat.ValueType:
    if isinstance(fmt, str):
        values = {
            "auto": conversations_pb2.IMPORT_FORMAT_UNSPECIFIED,
            "byok": conversations_pb2.IMPORT_FORMAT_BYOK,
            "chatgpt": conversations_pb2.IMPORT_FORMAT_CHATGPT,
        }
        if fmt not in values:
            raise ByokError("INVALID_ARGUMENT", f"unknown import format {fmt!r}")
        return values[fmt]
    return fmt


def masked_update(message: Any, **values: Any) -> field_mask_pb2.FieldMask:
    """Sets each value that is not None on `message` (maps are merged) and returns the
    update mask naming exactly those fields: an Update changes what the caller gave."""
    paths: list[str] = []
    for field, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            getattr(message, field).update(value)
        else:
            setattr(message, field, value)
        paths.append(field)
    return field_mask_pb2.FieldMask(paths=paths)


class Export(Iterator[bytes]):
    """An export in progress: iterate for the JSON document's slices, in order.

    `summary` is set once the stream has ended (the server sends it last).
    """

    def __init__(
        self, stream: Iterator[conversations_pb2.ExportConversationsResponse], target: str
    ) -> None:
        self._stream = stream
        self._target = target
        self._sequence = 0
        self.summary: conversations_pb2.ExportSummary | None = None
        self.bytes_received = 0
        self.slices_received = 0

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        while True:
            try:
                event = next(self._stream)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            if event.sequence != self._sequence + 1:
                self.cancel()
                raise ByokError(
                    "DATA_LOSS",
                    f"export stream from {self._target} skipped from event {self._sequence} "
                    f"to {event.sequence}",
                )
            self._sequence = event.sequence
            kind = event.WhichOneof("event")
            if kind == "data":
                self.bytes_received += len(event.data)
                self.slices_received += 1
                return event.data
            if kind == "summary":
                self.summary = event.summary

    def read_all(self) -> bytes:
        """The whole document."""
        return b"".join(self)

    def cancel(self) -> None:
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()


class Client:
    """A connection to a byok server. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        self.target = target or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
        ca_file = ca_file or os.environ.get(ENV_CA_FILE) or None
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            (("authorization", f"Bearer {key}"),) if key else ()
        )
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if ca_file:  # TLS, trusting this CA (e.g. a self-signed server certificate)
            with open(ca_file, "rb") as pem:
                credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self.conversations = conversations_pb2_grpc.ConversationServiceStub(self._channel)
        self.chat_service = chat_pb2_grpc.ChatServiceStub(self._channel)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None = None,
    ) -> _Resp:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # -- conversations ----------------------------------------------------------------

    def create_conversation(
        self,
        title: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        space: str = "",
        pinned: bool = False,
        archived: bool = False,
        conversation_id: str = "",
        request_id: str | None = None,
    ) -> conversations_pb2.Conversation:
        """Creates a conversation; `conversation_id` picks its id (else the server does)."""
        request = conversations_pb2.CreateConversationRequest(
            conversation=conversations_pb2.Conversation(
                title=title,
                metadata=dict(metadata or {}),
                space=space_name(space),
                pinned=pinned,
                archived=archived,
            ),
            conversation_id=conversation_id,
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._unary(self.conversations.CreateConversation, request)

    def get_conversation(self, name: str, full: bool = True) -> conversations_pb2.Conversation:
        """A conversation; with `full` its messages too (up to 10,000: see list_messages)."""
        view = conversations_pb2.CONVERSATION_VIEW_BASIC
        if full:
            view = conversations_pb2.CONVERSATION_VIEW_FULL
        request = conversations_pb2.GetConversationRequest(name=conversation_name(name), view=view)
        return self._unary(self.conversations.GetConversation, request)

    def list_conversations(
        self, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[conversations_pb2.Conversation]:
        """Every conversation matching `filter` (without messages), page after page."""
        token = ""
        while True:
            request = conversations_pb2.ListConversationsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=token
            )
            page = self._unary(self.conversations.ListConversations, request)
            yield from page.conversations
            token = page.next_page_token
            if not token:
                return

    def update_conversation(
        self,
        name: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        pinned: bool | None = None,
        archived: bool | None = None,
        space: str | None = None,
        etag: str = "",
    ) -> conversations_pb2.Conversation:
        """Changes the fields given (not None); `etag` refuses a concurrent change."""
        conv = conversations_pb2.Conversation(name=conversation_name(name), etag=etag)
        mask = masked_update(
            conv,
            title=title,
            metadata=metadata,
            pinned=pinned,
            archived=archived,
            space=space_name(space) if space is not None else None,
        )
        request = conversations_pb2.UpdateConversationRequest(conversation=conv, update_mask=mask)
        return self._unary(self.conversations.UpdateConversation, request)

    def delete_conversation(self, name: str, force: bool = False, *, etag: str = "") -> None:
        """Deletes a conversation and its messages; a pinned one needs `force`."""
        request = conversations_pb2.DeleteConversationRequest(
            name=conversation_name(name), force=force, etag=etag
        )
        self._unary(self.conversations.DeleteConversation, request)

    # -- messages ---------------------------------------------------------------------

    def list_messages(
        self, conversation: str, *, order_by: str = "", page_size: int = 0
    ) -> Iterator[conversations_pb2.Message]:
        """Every message of a conversation, oldest first unless `order_by` says otherwise."""
        parent = conversation_name(conversation)
        token = ""
        while True:
            request = conversations_pb2.ListMessagesRequest(
                parent=parent, order_by=order_by, page_size=page_size, page_token=token
            )
            page = self._unary(self.conversations.ListMessages, request)
            yield from page.messages
            token = page.next_page_token
            if not token:
                return

    def create_message(
        self,
        conversation: str,
        content: str,
        role: RoleArg = "user",
        *,
        model: str = "",
        status: conversations_pb2.MessageStatus.ValueType = (
            conversations_pb2.MESSAGE_STATUS_UNSPECIFIED
        ),
        incomplete_reason: str = "",
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> conversations_pb2.Message:
        """Appends a message to a conversation (role "user", "assistant", "system", "tool")."""
        request = conversations_pb2.CreateMessageRequest(
            parent=conversation_name(conversation),
            message=conversations_pb2.Message(
                role=role_value(role),
                content=content,
                model=model,
                status=status,
                incomplete_reason=incomplete_reason,
                metadata=dict(metadata or {}),
            ),
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._unary(self.conversations.CreateMessage, request)

    def get_message(self, name: str) -> conversations_pb2.Message:
        request = conversations_pb2.GetMessageRequest(name=name)
        return self._unary(self.conversations.GetMessage, request)

    def update_message(
        self,
        name: str,
        *,
        content: str | None = None,
        metadata: Mapping[str, str] | None = None,
        etag: str = "",
    ) -> conversations_pb2.Message:
        message = conversations_pb2.Message(name=name, etag=etag)
        mask = masked_update(message, content=content, metadata=metadata)
        request = conversations_pb2.UpdateMessageRequest(message=message, update_mask=mask)
        return self._unary(self.conversations.UpdateMessage, request)

    def delete_message(self, name: str, *, etag: str = "") -> None:
        request = conversations_pb2.DeleteMessageRequest(name=name, etag=etag)
        self._unary(self.conversations.DeleteMessage, request)

    # -- search -----------------------------------------------------------------------

    def search(
        self,
        query: str,
        parent: str = ALL_CONVERSATIONS,
        *,
        filter: str = "",
        order_by: str = "",
        limit: int | None = None,
    ) -> Iterator[conversations_pb2.SearchResult]:
        """Hits for `query` in one conversation or all ("conversations/-"), up to `limit`."""
        if limit is not None and limit <= 0:
            return
        parent = conversation_name(parent) if parent != "-" else ALL_CONVERSATIONS
        page_size = min(limit, 100) if limit is not None else 100
        seen = 0
        token = ""
        while True:
            request = conversations_pb2.SearchMessagesRequest(
                parent=parent,
                query=query,
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=token,
            )
            page = self._unary(self.conversations.SearchMessages, request)
            for result in page.results:
                yield result
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    # -- export / import --------------------------------------------------------------

    def export(self, names: Iterable[str] = (), *, timeout: float | None = None) -> Export:
        """Starts an export of `names` (every conversation when empty).

        Iterate the result for the document's slices; its `summary` is set at the end.
        Exports have no deadline unless `timeout` gives one.
        """
        request = conversations_pb2.ExportConversationsRequest(
            names=[conversation_name(n) for n in names]
        )
        try:
            stream = self.conversations.ExportConversations(
                request, timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return Export(stream, self.target)

    def import_conversations(
        self,
        data: bytes,
        format: FormatArg = "auto",
        space: str = "",
        *,
        timeout: float | None = None,
    ) -> conversations_pb2.ImportConversationsResponse:
        """Imports a byok export or ChatGPT's conversations.json (at most 64 MiB).

        Importing the same file twice creates no duplicates. The default deadline is ten
        times the client's, as large files take a while.
        """
        request = conversations_pb2.ImportConversationsRequest(
            data=data, format=_format_value(format), space=space_name(space)
        )
        return self._unary(
            self.conversations.ImportConversations, request, timeout or self.timeout * 10
        )

    # -- chat -------------------------------------------------------------------------

    def stream_chat(
        self, request: chat_pb2.ChatRequest, *, timeout: float | None = None
    ) -> Iterator[chat_pb2.StreamChatResponse]:
        """Yields started, delta..., usage, done as the server sends them (no deadline by
        default: a long answer may take minutes). Closing the iterator cancels the turn."""
        call = self.chat_service.StreamChat(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    def chat(
        self, request: chat_pb2.ChatRequest, *, timeout: float | None = None
    ) -> chat_pb2.ChatResponse:
        """The whole reply at once."""
        return self._unary(self.chat_service.Chat, request, timeout=timeout or 600.0)


def chat_request(
    content: str,
    *,
    conversation: str | None = None,
    model_key: str = "",
    model_profile: str = "",
    system_prompt: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    stop: Iterable[str] = (),
    title: str = "",
) -> chat_pb2.ChatRequest:
    params = common_pb2.GenerationParams(stop=list(stop))
    if system_prompt is not None:
        params.system_prompt = system_prompt
    if temperature is not None:
        params.temperature = temperature
    if top_p is not None:
        params.top_p = top_p
    if max_tokens is not None:
        params.max_tokens = max_tokens
    return chat_pb2.ChatRequest(
        conversation=conversation_name(conversation) if conversation else "",
        content=content,
        model_key=model_key,
        model_profile=model_profile,
        params=params,
        title=title,
    )
