"""A new annotated service is served with no gateway change.

The test compiles a small proto (with protoc from grpcio-tools), adds it to the
default descriptor pool, serves it on a generic grpc.aio handler and calls it
over REST: nested path fields, kebab collections, `response_body`,
`additional_bindings` with a custom verb and `body: "field"`, query parameters
of every kind (int64, bool, enum by name and number, repeated, nested, Timestamp).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from byok.server.gateway.openapi import build_openapi, descriptor_set_comments
from byok.server.gateway.routes import load_bindings
from tests.gateway.conftest import serve_gateway

protoc = pytest.importorskip(
    "grpc_tools.protoc", reason="grpcio-tools (dev extra) compiles the test proto"
)

REPO = Path(__file__).resolve().parents[2]
THING_PROTO = """
syntax = "proto3";
package byok.gatewaytest.v1;
import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";

// Things, for testing the gateway.
service ThingService {
  // Gets a thing; echoes the request it saw.
  rpc GetThing(GetThingRequest) returns (GetThingResponse) {
    option (google.api.http) = {
      get: "/v9/{thing.name=thing-boxes/*/things/*}"
      response_body: "seen"
      additional_bindings {post: "/v9/{thing.name=thing-boxes/*}:peek" body: "inner"}
    };
  }
  // Not annotated: no route.
  rpc Hidden(GetThingRequest) returns (GetThingResponse);
}

enum Color {
  // Unset.
  COLOR_UNSPECIFIED = 0;
  // Red.
  COLOR_RED = 1;
}

message Inner {
  // A big number.
  int64 big = 1;
  repeated string tags = 2;
}

message ThingRef { string name = 1; }

message GetThingRequest {
  ThingRef thing = 1;
  int64 count = 2;
  bool flag = 3;
  Color color = 4;
  repeated int32 ids = 5;
  Inner inner = 6;
  google.protobuf.Timestamp when = 7;
  double ratio = 8;
}

message GetThingResponse {
  GetThingRequest seen = 1;
  string note = 2;
}
"""


def compile_proto(tmp: Path, name: str, text: str) -> bytes:
    (tmp / name).write_text(text)
    out = tmp / "set.binpb"
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{tmp}", f"-I{REPO / 'third_party'}", f"-I{well_known}"]
    args += ["--include_source_info", f"--descriptor_set_out={out}", name]
    assert protoc.main(args) == 0
    return out.read_bytes()


@pytest.fixture(scope="module")
def thing_service(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServiceDescriptor, bytes]:
    pool = descriptor_pool.Default()
    data = compile_proto(tmp_path_factory.mktemp("proto"), "gatewaytest_thing.proto", THING_PROTO)
    try:
        file = pool.FindFileByName("gatewaytest_thing.proto")
    except KeyError:
        [proto] = descriptor_pb2.FileDescriptorSet.FromString(data).file
        file = pool.AddSerializedFile(proto.SerializeToString())
    return file.services_by_name["ThingService"], data


def cls(service: ServiceDescriptor, name: str) -> Any:
    return message_factory.GetMessageClass(service.file.message_types_by_name[name])


@pytest.fixture
async def thing_rest(
    thing_service: tuple[ServiceDescriptor, bytes],
) -> AsyncIterator[httpx.AsyncClient]:
    service, _ = thing_service
    request_cls, response_cls = cls(service, "GetThingRequest"), cls(service, "GetThingResponse")

    async def get_thing(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return response_cls(seen=request, note="ok")

    handler = grpc.method_handlers_generic_handler(
        service.full_name,
        {
            "GetThing": grpc.unary_unary_rpc_method_handler(
                get_thing,
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            serve_gateway(f"127.0.0.1:{port}", routes=load_bindings([service])) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            yield client
    finally:
        await server.stop(0)


def test_routes_come_from_the_annotations(thing_service: tuple[ServiceDescriptor, bytes]) -> None:
    service, _ = thing_service
    table = load_bindings([service])
    assert [b.label for b in table.bindings] == [
        "GET /v9/{thing.name=thing-boxes/*/things/*}",
        "POST /v9/{thing.name=thing-boxes/*}:peek",
    ]
    assert {b.method.name for b in table.bindings} == {"GetThing"}  # Hidden has none
    match = table.match("POST", "/v9/thing-boxes/b1:peek")
    assert match is not None and match.values == {"thing.name": "thingBoxes/b1"}


async def test_query_parameters_of_every_kind(thing_rest: httpx.AsyncClient) -> None:
    reply = await thing_rest.get(
        "/v9/thing-boxes/b1/things/t%20one",
        params=[
            ("count", "9007199254740993"),
            ("flag", "true"),
            ("color", "COLOR_RED"),
            ("ids", "1"),
            ("ids", "2"),
            ("inner.big", "-5"),
            ("inner.tags", "a"),
            ("inner.tags", "b"),
            ("when", "2026-01-02T03:04:05Z"),
            ("ratio", "0.25"),
        ],
    )
    assert reply.status_code == 200, reply.text
    # response_body: the body is the `seen` field alone.
    assert reply.json() == {
        "thing": {"name": "thingBoxes/b1/things/t one"},
        "count": "9007199254740993",
        "flag": True,
        "color": "COLOR_RED",
        "ids": [1, 2],
        "inner": {"big": "-5", "tags": ["a", "b"]},
        "when": "2026-01-02T03:04:05Z",
        "ratio": 0.25,
    }
    # Original names and enum numbers work as well.
    reply = await thing_rest.get("/v9/thing-boxes/b/things/t", params={"color": "1", "flag": "0"})
    assert reply.json()["color"] == "COLOR_RED" and reply.json()["flag"] is False


async def test_additional_binding_with_field_body(thing_rest: httpx.AsyncClient) -> None:
    reply = await thing_rest.post("/v9/thing-boxes/b2:peek", json={"big": 7, "tags": ["x"]})
    assert reply.status_code == 200, reply.text
    # This binding has no response_body: the whole response.
    assert reply.json()["note"] == "ok"
    seen = reply.json()["seen"]
    assert seen["thing"] == {"name": "thingBoxes/b2"}
    assert seen["inner"] == {"big": "7", "tags": ["x"]}
    # The body field cannot also come from the query.
    reply = await thing_rest.post("/v9/thing-boxes/b2:peek?inner.big=1", json={})
    assert reply.status_code == 400


async def test_bad_query_values_are_400(thing_rest: httpx.AsyncClient) -> None:
    for params in (
        {"flag": "yes"},
        {"color": "COLOR_BLUE"},
        {"count": "many"},
        {"thing.name": "x"},  # bound by the path
        {"inner": "x"},  # a message
        {"count": ["1", "2"]},  # not repeated
        {"unknown": "1"},
    ):
        reply = await thing_rest.get("/v9/thing-boxes/b/things/t", params=params)
        assert reply.status_code == 400, (params, reply.text)
        assert reply.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_comments_from_a_descriptor_set_become_descriptions(
    thing_service: tuple[ServiceDescriptor, bytes],
) -> None:
    service, data = thing_service
    comments = descriptor_set_comments(data)
    assert comments["byok.gatewaytest.v1.ThingService.GetThing"].startswith("Gets a thing")
    spec = build_openapi(load_bindings([service]), comments=comments)
    op = spec["paths"]["/v9/thing-boxes/{thing_box}/things/{thing}"]["get"]
    assert op["summary"] == "Gets a thing; echoes the request it saw"
    inner = spec["components"]["schemas"]["byok.gatewaytest.v1.Inner"]
    assert inner["properties"]["big"]["description"] == "A big number."
    color = spec["components"]["schemas"]["byok.gatewaytest.v1.Color"]
    assert "`COLOR_RED`: Red." in color["description"]
    assert spec["tags"] == [
        {"name": "ThingService", "description": "Things, for testing the gateway."}
    ]


def test_comments_of_the_byok_protos(tmp_path: Path) -> None:
    """With source info (protoc --include_source_info), every RPC is described."""
    (tmp_path / "byok").symlink_to(REPO / "proto" / "byok")
    protos = sorted(str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto"))
    out = tmp_path / "set.binpb"
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{REPO / 'third_party'}", f"-I{well_known}"]
    assert (
        protoc.main([*args, "--include_source_info", f"--descriptor_set_out={out}", *protos]) == 0
    )
    comments = descriptor_set_comments(out.read_bytes())
    table = load_bindings()
    spec = build_openapi(table, comments=comments)
    operations = [op for item in spec["paths"].values() for op in item.values()]
    assert len(operations) == len(table.bindings)
    for op in operations:  # a summary from the comment, not the bare method name
        assert op["summary"] != op["operationId"].split("_", 1)[1], op["operationId"]
    create = spec["paths"]["/api/conversations"]["post"]
    assert create["summary"].startswith("Creates a conversation")
