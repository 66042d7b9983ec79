"""REST over the real byok server: ConversationService through the gateway,
as curl would call it (httpx), with the API.md error body and status mapping."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import grpc
import httpx
from google.protobuf import json_format

from byok.v1 import conversations_pb2 as pb
from byok.v1 import conversations_pb2_grpc
from tests.gateway.test_stream_edges import sse_events

SSE = {"accept": "text/event-stream"}


def error_of(reply: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == status and error["status"] == name
    assert isinstance(error["message"], str) and error["message"]
    assert all("@type" in d for d in error["details"])
    return error


def detail(error: dict[str, Any], kind: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        d for d in error["details"] if d["@type"].endswith("/google.rpc." + kind)
    ]
    assert found, f"no {kind} in {error['details']}"
    return found[0]


async def new_conversation(rest: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    reply = await rest.post("/api/conversations", json=fields)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def test_conversation_crud(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest, title="Trip plans", metadata={"tag": "travel"})
    name = conv["name"]
    assert re.fullmatch(r"conversations/[0-9a-f-]{36}", name)
    assert conv["createTime"].endswith("Z") and conv["etag"]
    assert conv["messageCount"] == "0"  # int64 as a string, per proto3 JSON

    got = (await rest.get(f"/api/{name}")).json()
    assert got["title"] == "Trip plans" and got["metadata"] == {"tag": "travel"}

    # PATCH without update_mask: the mask is the body's fields.
    patched = await rest.patch(f"/api/{name}", json={"title": "Japan trip", "pinned": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Japan trip" and patched.json()["pinned"] is True
    assert patched.json()["etag"] != conv["etag"]
    # With an explicit mask (query, snake_case accepted), only the named field changes.
    reply = await rest.patch(
        f"/api/{name}", params={"update_mask": "archived"}, json={"title": "x", "archived": True}
    )
    assert reply.json()["title"] == "Japan trip" and reply.json()["archived"] is True

    listed = await rest.get(
        "/api/conversations", params={"pageSize": 10, "filter": "pinned = true AND archived = true"}
    )
    assert [c["name"] for c in listed.json()["conversations"]] == [name]
    assert listed.json()["nextPageToken"] == ""
    # Original field names work in the query too.
    listed = await rest.get(
        "/api/conversations", params={"page_size": "1", "filter": "archived = false"}
    )
    assert listed.status_code == 200 and listed.json()["conversations"] == []

    basic = await rest.get(f"/api/{name}", params={"view": "CONVERSATION_VIEW_BASIC"})
    assert basic.status_code == 200 and basic.json()["messages"] == []

    error = error_of(await rest.delete(f"/api/{name}"), 400, "FAILED_PRECONDITION")
    assert detail(error, "ErrorInfo")["reason"] == "CONVERSATION_PINNED"
    assert (await rest.delete(f"/api/{name}", params={"force": "true"})).json() == {}
    error = error_of(await rest.get(f"/api/{name}"), 404, "NOT_FOUND")
    info = detail(error, "ErrorInfo")
    assert info["reason"] == "RESOURCE_NOT_FOUND" and info["domain"] == "byok.dev"
    assert info["metadata"]["name"] == name


async def test_etag_mismatch_is_409_aborted(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest, title="v1")
    await rest.patch(f"/api/{conv['name']}", json={"title": "v2"})
    stale = await rest.patch(f"/api/{conv['name']}", json={"title": "v3", "etag": conv["etag"]})
    error = error_of(stale, 409, "ABORTED")
    assert detail(error, "ErrorInfo")["reason"] == "ETAG_MISMATCH"
    stale = await rest.delete(f"/api/{conv['name']}", params={"etag": conv["etag"]})
    error_of(stale, 409, "ABORTED")


async def test_messages_and_search(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest, title="Holidays")
    parent = conv["name"]
    first = await rest.post(
        f"/api/{parent}/messages", json={"role": "ROLE_USER", "content": "three days in lisbon"}
    )
    assert first.status_code == 200, first.text
    second = await rest.post(
        f"/api/{parent}/messages", json={"role": 3, "content": "Day 1: Alfama", "model": "m"}
    )  # enums by number work too
    assert second.json()["role"] == "ROLE_ASSISTANT"
    msg = first.json()["name"]
    assert msg.startswith(parent + "/messages/")

    assert (await rest.get(f"/api/{msg}")).json()["content"] == "three days in lisbon"
    page = await rest.get(f"/api/{parent}/messages", params={"orderBy": "create_time desc"})
    assert [m["content"] for m in page.json()["messages"]] == [
        "Day 1: Alfama",
        "three days in lisbon",
    ]

    edited = await rest.patch(f"/api/{msg}", json={"content": "four days in lisbon"})
    assert edited.status_code == 200 and edited.json()["content"] == "four days in lisbon"

    hits = await rest.get("/api/conversations/-/messages:search", params={"query": "lisbon"})
    assert hits.status_code == 200, hits.text
    [hit] = hits.json()["results"]
    assert hit["message"]["name"] == msg and "[lisbon]" in hit["snippet"]
    assert hit["conversationTitle"] == "Holidays"
    scoped = await rest.get(f"/api/{parent}/messages:search", params={"query": "alfama"})
    assert [h["message"]["content"] for h in scoped.json()["results"]] == ["Day 1: Alfama"]

    assert (await rest.delete(f"/api/{msg}")).json() == {}
    error_of(await rest.get(f"/api/{msg}"), 404, "NOT_FOUND")


async def test_invalid_argument_has_field_violations(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest)
    reply = await rest.post(f"/api/{conv['name']}/messages", json={"content": "no role"})
    error = error_of(reply, 400, "INVALID_ARGUMENT")
    [violation] = detail(error, "BadRequest")["fieldViolations"]
    assert violation["field"] == "message.role"
    error = error_of(
        await rest.get("/api/conversations", params={"pageSize": -1}), 400, "INVALID_ARGUMENT"
    )
    assert detail(error, "BadRequest")["fieldViolations"][0]["field"] == "page_size"


async def test_bad_json_unknown_fields_and_wrong_types(rest: httpx.AsyncClient) -> None:
    error = error_of(
        await rest.post("/api/conversations", content=b'{"title": '), 400, "INVALID_ARGUMENT"
    )
    assert detail(error, "ErrorInfo")["reason"] == "INVALID_JSON"

    error = error_of(
        await rest.post("/api/conversations", json={"bogus": 1}), 400, "INVALID_ARGUMENT"
    )
    assert detail(error, "ErrorInfo")["reason"] == "UNKNOWN_FIELD"
    assert detail(error, "BadRequest")["fieldViolations"] == [
        {"field": "conversation.bogus", "description": "unknown field"}
    ]

    reply = await rest.post("/api/conversations", json={"pinned": "yes"})
    error = error_of(reply, 400, "INVALID_ARGUMENT")
    assert detail(error, "BadRequest")["fieldViolations"][0]["field"] == "conversation.pinned"

    reply = await rest.get("/api/conversations", params={"pageSize": "ten"})
    error = error_of(reply, 400, "INVALID_ARGUMENT")

    reply = await rest.get("/api/conversations", params={"nope": "1"})
    error = error_of(reply, 400, "INVALID_ARGUMENT")
    assert detail(error, "BadRequest")["fieldViolations"][0]["field"] == "nope"

    reply = await rest.post("/api/conversations:export", content=b"[1, 2]")
    assert detail(error_of(reply, 400, "INVALID_ARGUMENT"), "ErrorInfo")["reason"] == "INVALID_JSON"


async def test_unknown_path_and_wrong_method(rest: httpx.AsyncClient) -> None:
    for path in (
        "/api/nothing-here",
        "/api/conversations/a/b/c",
        "/nowhere",
        "/api/conversations:nope",
    ):
        error = error_of(await rest.get(path), 404, "NOT_FOUND")
        assert detail(error, "ErrorInfo")["reason"] == "ROUTE_NOT_FOUND"
    reply = await rest.put("/api/conversations", json={})
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, POST"
    assert reply.json()["error"]["code"] == 405
    assert detail(reply.json()["error"], "ErrorInfo")["reason"] == "METHOD_NOT_ALLOWED"


async def test_kebab_collection_maps_to_camel_name(rest: httpx.AsyncClient) -> None:
    # /api/model-profiles/abc reaches GetModelProfile with name "modelProfiles/abc":
    # while ModelService is not implemented that is a 501 naming the RPC, once it
    # is, a 404 naming the camelCase resource.
    reply = await rest.get("/api/model-profiles/abc")
    if reply.status_code == 501:
        error = error_of(reply, 501, "UNIMPLEMENTED")
        assert "ModelService/GetModelProfile" in error["message"]
    else:
        error = error_of(reply, 404, "NOT_FOUND")
        assert "modelProfiles/abc" in error["message"]


async def test_export_as_sse(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest, title="Exported")
    await rest.post(f"/api/{conv['name']}/messages", json={"role": "ROLE_USER", "content": "hi"})
    reply = await rest.post(
        "/api/conversations:export", json={"names": [conv["name"]]}, headers=SSE
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["x-accel-buffering"] == "no"
    assert reply.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r"(event: \w+\ndata: [^\n]+\n\n)+", reply.text), reply.text[:300]
    events = sse_events(reply.text)
    kinds = [kind for kind, _ in events]
    assert set(kinds[:-1]) == {"data"} and kinds[-1] == "summary"
    payloads = [json.loads(data) for _, data in events]
    assert [p["sequence"] for p in payloads] == [str(i) for i in range(1, len(payloads) + 1)]
    document = json.loads(b"".join(base64.b64decode(p["data"]) for p in payloads[:-1]))
    assert [c["name"] for c in document["conversations"]] == [conv["name"]]
    assert payloads[-1]["summary"]["conversationCount"] == "1"
    assert payloads[-1]["summary"]["messageCount"] == "1"


async def test_export_as_ndjson_and_import(rest: httpx.AsyncClient) -> None:
    conv = await new_conversation(rest, title="Round trip")
    await rest.post(f"/api/{conv['name']}/messages", json={"role": "ROLE_USER", "content": "hello"})
    reply = await rest.post("/api/conversations:export", json={})
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert all(set(line) == {"result"} for line in lines)
    assert "summary" in lines[-1]["result"]
    data = b"".join(base64.b64decode(line["result"]["data"]) for line in lines[:-1])

    # Importing its own export creates nothing new.
    reply = await rest.post(
        "/api/conversations:import",
        json={"data": base64.b64encode(data).decode(), "format": "IMPORT_FORMAT_BYOK"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["createdCount"] == 0 and reply.json()["skippedCount"] == 1

    error = error_of(
        await rest.post("/api/conversations:export", json={"names": ["conversations/none"]}),
        404,
        "NOT_FOUND",
    )
    assert detail(error, "ErrorInfo")["metadata"]["name"] == "conversations/none"


async def test_same_result_over_rest_and_grpc(
    rest: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    stub = conversations_pb2_grpc.ConversationServiceStub(channel)
    conv = await stub.CreateConversation(
        pb.CreateConversationRequest(
            conversation=pb.Conversation(title="Both doors", metadata={"k": "v"})
        )
    )
    await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=conv.name, message=pb.Message(role=pb.ROLE_USER, content="same")
        )
    )
    over_grpc = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    over_rest = (await rest.get(f"/api/{conv.name}")).json()
    assert over_rest == json_format.MessageToDict(
        over_grpc, always_print_fields_with_no_presence=True
    )
    assert json_format.ParseDict(over_rest, pb.Conversation()) == over_grpc


async def test_request_id_round_trip(rest: httpx.AsyncClient) -> None:
    reply = await rest.get("/api/conversations", headers={"x-request-id": "trace-abc-123"})
    assert reply.headers["x-request-id"] == "trace-abc-123"
    made = (await rest.get("/api/conversations")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", made)
    again = (await rest.get("/api/conversations")).headers["x-request-id"]
    assert again != made
    # Errors carry it too, and a header that is not a plain token is replaced.
    reply = await rest.get("/nowhere", headers={"x-request-id": "has space"})
    assert reply.status_code == 404 and reply.headers["x-request-id"] != "has space"


async def test_a_malformed_authorization_header_is_401(rest: httpx.AsyncClient) -> None:
    for value in (b"Bearer \xff\xfe", b"Bearer a\tb"):
        reply = await rest.get("/api/conversations", headers={b"authorization": value})
        error = error_of(reply, 401, "UNAUTHENTICATED")
        assert detail(error, "ErrorInfo")["reason"] == "API_KEY_MALFORMED"
