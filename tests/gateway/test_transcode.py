"""transcode.py and errors.py on their own: requests from path, query and body;
responses and stream events as JSON; gRPC status → HTTP."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from byok.server.gateway import errors
from byok.server.gateway.routes import Binding, load_bindings
from byok.server.gateway.transcode import TranscodeError, Transcoder
from byok.v1 import conversations_pb2 as pb
from byok.v1 import spaces_pb2


def binding(rpc: str, http_method: str | None = None) -> Binding:
    for b in load_bindings().bindings:
        if b.method.name == rpc and (http_method is None or b.http_method == http_method):
            return b
    raise KeyError(rpc)


def test_patch_infers_update_mask_from_the_body_leaving_out_name_and_etag() -> None:
    t = Transcoder(binding("UpdateConversation"))
    body = json.dumps(
        {"name": "ignored", "etag": "e1", "title": "t", "pinned": True, "metadata": {}}
    )
    request = t.build_request({"conversation.name": "conversations/c1"}, b"", body.encode())
    assert isinstance(request, pb.UpdateConversationRequest)
    assert request.conversation.name == "conversations/c1"  # the path wins over the body
    assert request.conversation.etag == "e1"
    assert list(request.update_mask.paths) == ["title", "pinned", "metadata"]
    # An explicit mask is kept as given (snake_case accepted in the query).
    request = t.build_request(
        {"conversation.name": "conversations/c1"}, b"updateMask=last_model,title", b'{"title": "t"}'
    )
    assert isinstance(request, pb.UpdateConversationRequest)
    assert list(request.update_mask.paths) == ["last_model", "title"]


def test_body_star_takes_no_query_and_path_fields_override_the_body() -> None:
    t = Transcoder(binding("LinkModelProfile"))
    request = t.build_request(
        {"space": "spaces/s1"}, b"", b'{"space": "spaces/other", "modelProfile": "modelProfiles/p"}'
    )
    assert isinstance(request, spaces_pb2.LinkModelProfileRequest)
    assert request.space == "spaces/s1" and request.model_profile == "modelProfiles/p"
    with pytest.raises(TranscodeError) as err:
        t.build_request({"space": "spaces/s1"}, b"makeDefault=true", b"{}")
    assert err.value.reason == "UNKNOWN_FIELD"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"title": 5}', "conversation.title", "INVALID_ARGUMENT"),
        (b'{"messageCount": "x"}', "conversation.messageCount", "INVALID_ARGUMENT"),
        (b'{"usage": {"promptTokens": {}}}', "conversation.usage.promptTokens", "INVALID_ARGUMENT"),
        (b'{"usage": {"nope": 1}}', "conversation.usage.nope", "UNKNOWN_FIELD"),
        (b'{"metadata": []}', "conversation.metadata", "INVALID_ARGUMENT"),
        (b"[", None, "INVALID_JSON"),
        (b"\xff", None, "INVALID_JSON"),
    ],
)
def test_body_errors_name_the_field(body: bytes, field: str | None, reason: str) -> None:
    t = Transcoder(binding("CreateConversation"))
    with pytest.raises(TranscodeError) as err:
        t.build_request({}, b"", body)
    assert err.value.reason == reason
    assert err.value.field == field
    if field:
        assert err.value.violations[0][0] == field
        assert err.value.message.startswith(field + ": ")


def test_both_field_spellings_in_bodies_and_queries() -> None:
    t = Transcoder(binding("CreateConversation"))
    a = t.build_request(
        {}, b"conversationId=c-1&request_id=r", b'{"last_model": "m", "pinned": true}'
    )
    b = t.build_request(
        {}, b"conversation_id=c-1&requestId=r", b'{"lastModel": "m", "pinned": true}'
    )
    assert isinstance(a, pb.CreateConversationRequest)
    assert a == b and a.conversation_id == "c-1" and a.conversation.last_model == "m"


def test_response_json_and_stream_event_names() -> None:
    t = Transcoder(binding("ExportConversations"))
    data = pb.ExportConversationsResponse(sequence=2, data=b"{}")
    assert json.loads(t.response_json(data)) == {"sequence": "2", "data": "e30="}
    assert t.event_name(data) == "data"
    summary = pb.ExportConversationsResponse(sequence=3, summary=pb.ExportSummary())
    assert t.event_name(summary) == "summary"
    assert json.loads(t.response_json(summary))["summary"] == {
        "conversationCount": "0",
        "messageCount": "0",
        "formatVersion": 0,
    }
    chat = Transcoder(binding("StreamChat"))
    from byok.v1 import chat_pb2

    assert (
        chat.event_name(chat_pb2.StreamChatResponse(delta=chat_pb2.ChatDelta(text="x"))) == "delta"
    )
    assert chat.event_name(chat_pb2.StreamChatResponse()) == "message"  # no kind set
    unary = Transcoder(binding("GetConversation"))
    assert unary.event_name(pb.Conversation()) == "message"


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("INVALID_ARGUMENT", 400),
        ("FAILED_PRECONDITION", 400),
        ("OUT_OF_RANGE", 400),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("ABORTED", 409),
        ("RESOURCE_EXHAUSTED", 429),
        ("CANCELLED", 499),
        ("UNKNOWN", 500),
        ("INTERNAL", 500),
        ("DATA_LOSS", 500),
        ("UNIMPLEMENTED", 501),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
    ],
)
def test_canonical_status_table(code: str, http: int) -> None:
    assert getattr(grpc.StatusCode, code).name == code
    error = errors.from_status(code, "m")
    assert error.status == http
    assert error.body == {"error": {"code": http, "message": "m", "status": code, "details": []}}


def test_retry_after_rounds_up_and_only_for_retryable_codes() -> None:
    retry = _any(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=1)))
    assert errors.from_status("RESOURCE_EXHAUSTED", "m", [retry]).headers == [
        (b"retry-after", b"3")
    ]
    assert errors.from_status("UNAVAILABLE", "m", [retry]).headers == [(b"retry-after", b"3")]
    assert errors.from_status("INTERNAL", "m", [retry]).headers == []
    assert errors.from_status("UNAVAILABLE", "m").headers == []


def test_details_decode_with_their_type_and_unknown_types_survive() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/x.Unknown", value=b"\x01")
    info = _any(error_details_pb2.ErrorInfo(reason="R", domain="byok.dev"))
    body = errors.from_status("NOT_FOUND", "m", [info, unknown]).body
    assert body["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R", "domain": "byok.dev"},
        {"@type": "type.googleapis.com/x.Unknown", "value": "AQ=="},
    ]


def test_from_rpc_error_reads_the_status_trailer() -> None:
    status = status_pb2.Status(
        code=5, message="gone", details=[_any(error_details_pb2.ErrorInfo(reason="X"))]
    )
    failure = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details="gone",
    )
    error = errors.from_rpc_error(failure)
    assert error.status == 404
    assert error.body["error"]["details"][0]["reason"] == "X"
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert errors.from_rpc_error(plain).body["error"]["message"] == "UNAVAILABLE"
