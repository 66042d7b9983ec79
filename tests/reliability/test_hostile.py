"""Hostile input: every RPC of every byok.v1 service, fed hypothesis-generated requests
built from its descriptor, against a live `byok-server serve`. No request may get
INTERNAL or UNKNOWN, and none may hang (a 10 s deadline; DEADLINE_EXCEEDED is a hang).

Strings mix hypothesis text (unicode, NULs), resource names with traversal and wildcard
tricks, SQL and FTS5 syntax, and sizes around the limits; integers reach the extremes;
enums take unknown values; FieldMasks take real and made-up paths; bytes include JSON
documents that importers might choke on. Runs are derandomized (stable in CI).

Explicit cases follow: FTS syntax errors and odd filters are INVALID_ARGUMENT, oversized
requests are refused by size, undecodable bytes are INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byok.v1 import (
    chat_pb2,
    common_pb2,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    spaces_pb2,
)
from byok.v1 import conversations_pb2 as cpb
from tests.reliability.conftest import emit_from, route_env, threaded
from tests.support.servers import ServerProcess, running_app
from tests.support.upstream import ScriptedUpstream

CODE = grpc.StatusCode
EXAMPLES = 50  # per RPC
CALL_TIMEOUT = 10.0
FORBIDDEN = {CODE.INTERNAL, CODE.UNKNOWN, CODE.DEADLINE_EXCEEDED}
MASTER_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
MAX_RECEIVE = 64 * 1024 * 1024  # rpc/server.py MAX_MESSAGE_BYTES
MAX_CONTENT = 1024 * 1024


@dataclass(frozen=True)
class Rpc:
    service: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def id(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.method.name}"


RPCS = [
    Rpc(service.full_name, method)
    for module in (chat_pb2, conversations_pb2, models_pb2, spaces_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def message_class(descriptor: Descriptor) -> type[ProtoMessage]:
    return message_factory.GetMessageClass(descriptor)


# -- the live server ------------------------------------------------------------------


@dataclass
class Live:
    server: ServerProcess
    channel: grpc.Channel
    names: list[str] = field(default_factory=list)  # real resources, for the names strategy
    tallies: dict[str, Counter[str]] = field(default_factory=dict)

    def call(self, rpc: Rpc, request: ProtoMessage | bytes) -> tuple[grpc.StatusCode, str]:
        """Calls the RPC (raw bytes go out as they are); returns the status and details."""
        output = message_class(rpc.method.output_type)
        serialize: Callable[[Any], bytes] | None = (
            None if isinstance(request, bytes) else type(request).SerializeToString
        )
        try:
            if rpc.method.server_streaming:
                stream = self.channel.unary_stream(
                    rpc.path, request_serializer=serialize, response_deserializer=output.FromString
                )
                for _ in stream(request, timeout=CALL_TIMEOUT):
                    pass
            else:
                unary = self.channel.unary_unary(
                    rpc.path, request_serializer=serialize, response_deserializer=output.FromString
                )
                unary(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code(), exc.details() or ""
        return CODE.OK, ""


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("hostile")
    with threaded(ScriptedUpstream()) as upstream:  # echoes every turn
        env = route_env(upstream.base_url, BYOK_MASTER_KEY=MASTER_KEY, READ_TIMEOUT_SECONDS="5")
        server = ServerProcess(tmp / "data", env)
        server.start(timeout=120)
        try:
            with grpc.insecure_channel(server.grpc_target) as channel:
                live = Live(server, channel)
                seed_resources(live)
                yield live
                report(request.config, live)
                assert server.proc is not None and server.proc.poll() is None, server.log()
        finally:
            server.kill()
    assert "unexpected error" not in server.log(), server.log()[-5000:]


def seed_resources(live: Live) -> None:
    chat = live.channel.unary_unary(
        "/byok.v1.ChatService/Chat",
        request_serializer=chat_pb2.ChatRequest.SerializeToString,
        response_deserializer=chat_pb2.ChatResponse.FromString,
    )
    for content in ("hello there", "rust borrow checker", "café crème"):
        reply = chat(chat_pb2.ChatRequest(content=content), timeout=60)
        live.names += [reply.conversation, reply.user_message.name, reply.reply.name]


def report(config: pytest.Config, live: Live) -> None:
    lines = []
    total: Counter[str] = Counter()
    for rpc_id, tally in sorted(live.tallies.items()):
        shown = ", ".join(f"{code} {n}" for code, n in tally.most_common())
        lines.append(f"{rpc_id}: {sum(tally.values())} calls; {shown}")
        total.update(tally)
    lines.append(f"all: {sum(total.values())} calls; {dict(total.most_common())}")
    emit_from(config, "hostile: calls and statuses per RPC", lines)


# -- strategies from descriptors ------------------------------------------------------

NAME_PREFIXES = [
    "conversations/",
    "conversations/-",
    "conversations/-/messages/",
    "spaces/",
    "modelProfiles/",
    "models/",
    "providerKeys/",
    "users/",
    "",
]
SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "conversations/-",
    "conversations/../x",
    "conversations/..",
    "conversations/",
    "conversations//messages/",
    "conversations/x/messages/../../y",
    "conversations/%2e%2e/x",
    "conversations/UPPER",
    "conversations/" + "a" * 64,
    "conversations/a/messages/b/extra",
    "spaces/-",
    "spaces/../x",
    "modelProfiles/../x",
    "modelProfiles/-",
    "'; DROP TABLE messages; --",
    '" OR 1=1 --',
    "1; SELECT * FROM users",
    "%",
    "_",
    "\\",
    "*",
    '"unterminated',
    "a AND",
    "AND",
    "OR OR",
    "NOT",
    "NEAR(",
    "NEAR(a b, -1)",
    "title:",
    "content: x",
    "nosuchcolumn: x",
    "{content title}: x",
    "^x",
    "x*y",
    "()",
    "(((",
    "rank MATCH 'x'",
    "role = ROLE_USER",
    "role = ROLE_NOPE",
    'create_time > "2026-01-01T00:00:00Z"',
    'create_time > "not a time"',
    "pinned = true AND",
    "pinned = maybe",
    "pinned = true OR archived = true",
    "update_time > 5",
    'space = "spaces/x"',
    "update_time desc",
    "create_time desc",
    "create_time asc",
    "relevance",
    "x desc desc",
    "openai",
    "FAST",
    "fast",
    "local",
    "sk-test-0123456789abcdef",
    "🙂" * 40,
    "\u202e\u200b\ufeff",
    "é" * 300,
    "x" * 70_000,
    "y" * MAX_CONTENT + "z",
]
SPECIAL_BYTES = [
    b"",
    b"{}",
    b"[]",
    b"null",
    b"\xff\xfe\x00",
    b'{"format_version": 1, "conversations": []}',
    b'{"format_version": 99, "conversations": [{}]}',
    json.dumps(
        {
            "format_version": 1,
            "conversations": [
                {"id": "x", "title": "t" * 600, "messages": [{"role": "user", "content": "\x00"}]}
            ],
        }
    ).encode(),
    b'[{"title": "t", "mapping": {}}]',
    b'[{"title": "t", "mapping": {"a": {"message": {"author": {"role": "user"}, '
    b'"content": {"parts": [null, 1, {}]}}, "parent": "a", "children": ["a"]}}}]',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"x" * (2 << 20),
]
INT_EXTREMES = [0, 1, -1, 2, 20, 50, 100, 101, 1000, 1001, 2**31 - 1, -(2**31)]


def field_names() -> list[str]:
    names: set[str] = set()
    for module in (chat_pb2, conversations_pb2, models_pb2, spaces_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            names.update(f.name for f in message.fields)
    return sorted(names)


def strings(names: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True),  # plausible ids and words
        st.sampled_from(names),
        st.text(max_size=40),
        st.sampled_from(SPECIAL_STRINGS),
        st.builds(lambda p, s: p + s, st.sampled_from(NAME_PREFIXES), st.text(max_size=20)),
    )


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    extremes = [v for v in [*INT_EXTREMES, low, high, high - 1, low + 1] if low <= v <= high]
    return st.one_of(st.sampled_from(extremes), st.integers(low, high))


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


class Strategies:
    """Hypothesis strategies for byok.v1 messages, derived from their descriptors."""

    MAX_DEPTH = 3

    def __init__(self, names: list[str]) -> None:
        self.strings = strings(names)
        paths = [*field_names(), "*", "", "metadata.x", "messages", "name", "title.x", "id"]
        self.paths = st.one_of(st.sampled_from(paths), st.text(max_size=15))

    def scalar(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        if f.type == FieldDescriptor.TYPE_STRING:
            return self.strings
        if f.type == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=200), st.sampled_from(SPECIAL_BYTES))
        if f.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if f.type == FieldDescriptor.TYPE_DOUBLE:
            return st.floats(allow_nan=True, allow_infinity=True)
        if f.type == FieldDescriptor.TYPE_FLOAT:
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        if f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            known = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
        low, high = _INT_RANGES[f.type]
        return integers(low, high)

    def value(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None:
            return self.message(f.message_type, depth + 1)
        return self.scalar(f)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[ProtoMessage]:
        cls = message_class(descriptor)
        if descriptor.full_name == "google.protobuf.FieldMask":
            return st.lists(self.paths, max_size=4).map(lambda paths: cls(paths=paths))
        if depth > self.MAX_DEPTH:
            return st.just(cls())
        plans: list[tuple[FieldDescriptor, st.SearchStrategy[Any]]] = []
        for f in descriptor.fields:
            entry = f.message_type
            if entry is not None and entry.GetOptions().map_entry:
                key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
                plans.append(
                    (f, st.dictionaries(self.scalar(key), self.value(value, depth), max_size=4))
                )
            elif f.is_repeated:
                plans.append((f, st.lists(self.value(f, depth), max_size=4)))
            else:
                plans.append((f, self.value(f, depth)))

        @st.composite
        def build(draw: st.DrawFn) -> ProtoMessage:
            message = cls()
            for f, strategy in plans:
                if draw(st.integers(0, 99)) < presence(f):
                    fill(message, f, draw(strategy))
            return message

        return build()


def presence(f: FieldDescriptor) -> int:
    """How often (%) a field is set: required ones mostly, output-only ones rarely, so
    enough requests get past validation to reach the storage and search code."""
    behaviors = set(f.GetOptions().Extensions[field_behavior_pb2.field_behavior])
    if behaviors & {field_behavior_pb2.REQUIRED, field_behavior_pb2.IDENTIFIER}:
        return 85
    if field_behavior_pb2.OUTPUT_ONLY in behaviors:
        return 15
    return 35


def fill(message: ProtoMessage, f: FieldDescriptor, value: Any) -> None:
    target = getattr(message, f.name)
    entry = f.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if entry.fields_by_name["value"].message_type is not None:
            for key, item in value.items():
                target[key].CopyFrom(item)
        else:
            target.update(value)
    elif f.is_repeated:
        if f.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif f.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, f.name, value)


# -- generated requests ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("rpc", RPCS, ids=[r.id for r in RPCS])
def test_generated_requests_never_internal_nor_hang(live: Live, rpc: Rpc) -> None:
    tally = live.tallies.setdefault(rpc.id, Counter())

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(Strategies(live.names).message(rpc.method.input_type))
    def run(request: ProtoMessage) -> None:
        started = time.monotonic()
        code, details = live.call(rpc, request)
        tally[label(code, details)] += 1
        took = time.monotonic() - started
        assert code not in FORBIDDEN, f"{rpc.id} -> {code.name} after {took:.1f}s: {details}"

    run()
    assert live.server.proc is not None and live.server.proc.poll() is None, "the server died"


def label(code: grpc.StatusCode, details: str) -> str:
    """The status name; an error too large for the client to read is told apart."""
    if code == CODE.RESOURCE_EXHAUSTED and "metadata size exceeds" in details:
        return "RESOURCE_EXHAUSTED(error too large to deliver)"
    return code.name


# -- explicit cases -------------------------------------------------------------------


def by_id(rpc_id: str) -> Rpc:
    return next(r for r in RPCS if r.id == rpc_id)


def error_info(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, ErrorInfo reason and BadRequest fields of a failed call."""
    assert isinstance(exc, grpc.Call)
    reason, fields = "", []
    status = rpc_status.from_call(exc)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return exc.code(), reason, fields


def unary(live: Live, rpc_id: str, request: ProtoMessage) -> Any:
    rpc = by_id(rpc_id)
    output = message_class(rpc.method.output_type)
    if rpc.method.server_streaming:
        call = live.channel.unary_stream(
            rpc.path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=output.FromString,
        )
        return list(call(request, timeout=CALL_TIMEOUT))
    return live.channel.unary_unary(
        rpc.path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=output.FromString,
    )(request, timeout=CALL_TIMEOUT)


def refused(
    live: Live, rpc_id: str, request: ProtoMessage
) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        unary(live, rpc_id, request)
    return error_info(caught.value)


@pytest.mark.parametrize(
    "query",
    [
        '"unterminated phrase',
        "AND",
        "rust AND",
        "OR rust",
        "NOT",
        "NEAR(",
        "NEAR(rust checker",
        "nosuchcolumn: rust",
        "(rust",
        "rust)",
        "*",
        "^",
        "x" * 1001,
    ],
)
def test_fts_syntax_errors_are_invalid_argument(live: Live, query: str) -> None:
    request = cpb.SearchMessagesRequest(parent="conversations/-", query=query)
    code, _, fields = refused(live, "ConversationService.SearchMessages", request)
    assert code == CODE.INVALID_ARGUMENT
    assert fields == ["query"], fields


@pytest.mark.parametrize(
    ("rpc_id", "request_"),
    [
        ("ConversationService.ListConversations", cpb.ListConversationsRequest(filter="(((")),
        ("ConversationService.ListConversations", cpb.ListConversationsRequest(filter="foo = 1")),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter="pinned = maybe"),
        ),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter="pinned = true OR archived = true"),
        ),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter='update_time > "yesterday"'),
        ),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter="pinned = true AND"),
        ),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter='last_model > "gpt"'),
        ),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter="'; DROP TABLE conversations; --"),
        ),
        ("ConversationService.ListConversations", cpb.ListConversationsRequest(order_by="title")),
        (
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(page_token="not-a-token"),
        ),
        (
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(
                parent="conversations/-", query="x", filter="role = ROLE_NOPE"
            ),
        ),
        (
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(parent="conversations/-", query="x", filter="role > 2"),
        ),
        (
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(parent="conversations/-", query="x", filter="pinned = true"),
        ),
        (
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(parent="conversations/-", query="x", order_by="bm25"),
        ),
    ],
)
def test_odd_filters_are_invalid_argument(live: Live, rpc_id: str, request_: ProtoMessage) -> None:
    code, reason, _ = refused(live, rpc_id, request_)
    assert code == CODE.INVALID_ARGUMENT, (code, reason)


@pytest.mark.parametrize(
    ("rpc_id", "request_"),
    [
        (
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(parent="conversations/../x", query="x"),
        ),
        ("ConversationService.ListMessages", cpb.ListMessagesRequest(parent="conversations/-")),
        (
            "ConversationService.GetConversation",
            cpb.GetConversationRequest(name="conversations/.."),
        ),
        (
            "ConversationService.GetMessage",
            cpb.GetMessageRequest(name="conversations/-/messages/../../x"),
        ),
        (
            "ConversationService.DeleteConversation",
            cpb.DeleteConversationRequest(name="conversations/%2e%2e"),
        ),
        (
            "ConversationService.ExportConversations",
            cpb.ExportConversationsRequest(names=["conversations/../../etc/passwd"]),
        ),
    ],
)
def test_tricky_names_are_refused(live: Live, rpc_id: str, request_: ProtoMessage) -> None:
    """Traversal, and wildcards where none is allowed, name nothing: refused as malformed
    or as not found (the server answers either; never a match, never a server error)."""
    code, reason, _ = refused(live, rpc_id, request_)
    live.tallies.setdefault("tricky names", Counter())[code.name] += 1
    assert code in {CODE.INVALID_ARGUMENT, CODE.NOT_FOUND}, (code, reason)


def test_content_over_1_mib_is_invalid_argument(live: Live) -> None:
    big = "x" * (MAX_CONTENT + 1)
    code, _, fields = refused(live, "ChatService.Chat", chat_pb2.ChatRequest(content=big))
    assert (code, fields) == (CODE.INVALID_ARGUMENT, ["content"])
    parent = next(n for n in live.names if n.count("/") == 1)
    request = cpb.CreateMessageRequest(
        parent=parent, message=cpb.Message(role=cpb.ROLE_USER, content=big)
    )
    code, _, fields = refused(live, "ConversationService.CreateMessage", request)
    assert code == CODE.INVALID_ARGUMENT and fields and fields[0].endswith("content"), fields


def test_message_over_max_receive_size_is_resource_exhausted(live: Live) -> None:
    huge = chat_pb2.ChatRequest(content="x" * (MAX_RECEIVE + 1))
    with pytest.raises(grpc.RpcError) as caught:
        unary(live, "ChatService.StreamChat", huge)
    code, _, _ = error_info(caught.value)
    assert code == CODE.RESOURCE_EXHAUSTED
    assert unary(live, "ConversationService.ListConversations", cpb.ListConversationsRequest())


BAD_BYTES = [
    b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # field 1, a length that overflows
    b"\x0a\x05ab",  # field 1, 5 bytes announced, 2 sent
    b"\x12\x02\xff\xfe",  # field 2 (a string in most requests) that is not UTF-8
    b"\x0f",  # wire type 7 does not exist
]


@pytest.mark.parametrize("rpc", RPCS, ids=[r.id for r in RPCS])
def test_undecodable_bytes_are_invalid_argument(live: Live, rpc: Rpc) -> None:
    rng = random.Random(rpc.id)
    for data in [*BAD_BYTES, *(rng.randbytes(rng.randint(1, 64)) for _ in range(8))]:
        code, details = live.call(rpc, data)
        live.tallies.setdefault(f"{rpc.id} (raw bytes)", Counter())[label(code, details)] += 1
        assert code not in FORBIDDEN, (data, code, details)
        if data in BAD_BYTES[:2] or data == BAD_BYTES[3]:
            assert code == CODE.INVALID_ARGUMENT and "not a valid protobuf" in details, details


def test_server_survived(live: Live) -> None:
    assert live.server.proc is not None and live.server.proc.poll() is None
    assert unary(live, "ConversationService.ListConversations", cpb.ListConversationsRequest())


# -- regressions found by the generated requests (in-process servers: they poison data) --

_BUG_OVERFLOW = (
    "server bug: CreateMessage stores usage/latency without range checks; int64 overflow "
    "answers INTERNAL (after storing) and leaves conversation totals as REAL, so reading that "
    "conversation (and listing) is INTERNAL from then on"
)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            cpb.Message(role=cpb.ROLE_ASSISTANT, content="x", latency=Duration(seconds=10**13)),
            id="latency-1e13s",
        ),
        pytest.param(
            cpb.Message(
                role=cpb.ROLE_ASSISTANT,
                content="x",
                time_to_first_token=Duration(seconds=-(10**13)),
            ),
            id="ttft-negative",
        ),
        pytest.param(
            cpb.Message(
                role=cpb.ROLE_ASSISTANT,
                content="x",
                usage=common_pb2.TokenUsage(prompt_tokens=2**63 - 1, completion_tokens=2**63 - 1),
            ),
            id="usage-int64-max",
        ),
        pytest.param(
            cpb.Message(
                role=cpb.ROLE_ASSISTANT, content="x", usage=common_pb2.TokenUsage(prompt_tokens=-5)
            ),
            id="usage-negative",
        ),
    ],
)
async def test_out_of_range_usage_and_durations_are_invalid_argument(
    tmp_path: Path, message: cpb.Message
) -> None:
    async with running_app(tmp_path / "data") as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            convs = conversations_pb2_grpc.ConversationServiceStub(channel)
            conv = await convs.CreateConversation(
                cpb.CreateConversationRequest(conversation=cpb.Conversation(title="t"))
            )
            code = CODE.OK
            for _ in range(2):  # twice: totals past int64 need two
                try:
                    await convs.CreateMessage(
                        cpb.CreateMessageRequest(parent=conv.name, message=message)
                    )
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
            # Whatever the answer, the conversation and the list must stay readable.
            await convs.GetConversation(cpb.GetConversationRequest(name=conv.name))
            await convs.ListConversations(cpb.ListConversationsRequest())
    assert code == CODE.INVALID_ARGUMENT


async def test_imported_usage_cannot_overflow_the_totals(tmp_path: Path) -> None:
    big = {"prompt_tokens": 2**62, "completion_tokens": 2**62}
    doc = {
        "format": "byok.conversations",
        "version": 1,
        "conversations": [
            {
                "id": "overflow",
                "title": "t",
                "messages": [
                    {"role": "assistant", "content": "a", "usage": big},
                    {"role": "assistant", "content": "b", "usage": big},
                ],
            }
        ],
    }
    async with running_app(tmp_path / "data") as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            convs = conversations_pb2_grpc.ConversationServiceStub(channel)
            try:
                done = await convs.ImportConversations(
                    cpb.ImportConversationsRequest(data=json.dumps(doc).encode())
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == CODE.INVALID_ARGUMENT  # refusing it is fine
                return
            for name in done.conversations:
                await convs.GetConversation(cpb.GetConversationRequest(name=name))
            await convs.ListConversations(cpb.ListConversationsRequest())


_BUG_ECHO = (
    "server bug: the error message (and ErrorInfo) echo the whole value; 1 MiB of it exceeds "
    "the client's 16 KiB metadata limit, so the caller gets RESOURCE_EXHAUSTED 'Stream removed' "
    "instead of INVALID_ARGUMENT"
)


@pytest.mark.parametrize(
    ("rpc_id", "request_"),
    [
        pytest.param(
            "ConversationService.GetConversation",
            cpb.GetConversationRequest(name="conversations/" + "a" * MAX_CONTENT),
            id="GetConversation-name",
        ),
        pytest.param(
            "ModelService.SetProviderKey",
            models_pb2.SetProviderKeyRequest(provider="p" * MAX_CONTENT),
            id="SetProviderKey-provider",
        ),
        pytest.param(
            "ConversationService.ListConversations",
            cpb.ListConversationsRequest(filter="x" * MAX_CONTENT),
            id="ListConversations-filter",
        ),
        pytest.param(
            "ConversationService.SearchMessages",
            cpb.SearchMessagesRequest(parent="conversations/-", query="q" * MAX_CONTENT),
            id="SearchMessages-query",
        ),
    ],
)
def test_huge_values_are_refused_with_a_readable_error(
    live: Live, rpc_id: str, request_: ProtoMessage
) -> None:
    code, reason, _ = refused(live, rpc_id, request_)
    assert (code, bool(reason)) == (CODE.INVALID_ARGUMENT, True), (code, reason)
