"""The OpenAPI document and the docs page, generated from the same descriptors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from byok.server.gateway.openapi import build_openapi, openapi_path, singular
from byok.server.gateway.routes import load_bindings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rest.md"


def spec() -> dict[str, Any]:
    return build_openapi(load_bindings(), comments={})


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"][name]
    return found


async def test_served_document_and_docs_page(rest: httpx.AsyncClient) -> None:
    reply = await rest.get("/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    doc = reply.json()
    assert doc["openapi"] == "3.1.0"
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert len(operations) == len(load_bindings().bindings)

    page = await rest.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for _, path in operations:
        assert path in html
    assert "byok.v1.Conversation" in html
    # Offline: nothing is loaded from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<script" not in html and "@import" not in html


def test_every_binding_is_an_operation_with_its_path_parameters() -> None:
    doc = spec()
    table = load_bindings()
    ids = set()
    for binding in table.bindings:
        path, params = openapi_path(binding)
        op = doc["paths"][path][binding.http_method.lower()]
        ids.add(op["operationId"])
        names = re.findall(r"\{(\w+)\}", path)
        declared = [p["name"] for p in op["parameters"] if p["in"] == "path"]
        assert names == declared == [p["name"] for p in params]
        assert (
            op["responses"]["4XX"]
            == op["responses"]["5XX"]
            == {"$ref": "#/components/responses/Error"}
        )
        assert op["tags"] == [binding.method.containing_service.name]
    assert len(ids) == len(table.bindings)  # unique operation ids
    search = doc["paths"]["/api/conversations/{conversation}/messages:search"]["get"]
    assert (
        search["parameters"][0]["description"]
        == "Part of `parent` = `conversations/{conversation}`."
    )
    query = {p["name"]: p for p in search["parameters"] if p["in"] == "query"}
    assert set(query) == {"query", "filter", "pageSize", "pageToken", "orderBy"}
    assert query["query"]["required"] is True
    assert query["pageSize"]["schema"]["type"] == "integer"
    profile = doc["paths"]["/api/model-profiles/{model_profile}"]["get"]["parameters"][0]
    assert profile["description"] == "Part of `name` = `modelProfiles/{model_profile}`."


def test_request_bodies_and_responses() -> None:
    doc = spec()
    create = doc["paths"]["/api/conversations"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/byok.v1.Conversation"
    }
    assert {p["name"] for p in create["parameters"]} == {"conversationId", "requestId"}
    link = doc["paths"]["/api/spaces/{space}:linkModelProfile"]["post"]
    body = link["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"modelProfile", "makeDefault"}  # `space` is the path
    assert link["parameters"][0]["name"] == "space"
    delete = doc["paths"]["/api/conversations/{conversation}"]["delete"]
    assert delete["responses"]["200"]["content"]["application/json"]["schema"] == {"type": "object"}
    export = doc["paths"]["/api/conversations:export"]["post"]
    assert set(export["responses"]["200"]["content"]) == {
        "text/event-stream",
        "application/x-ndjson",
    }
    assert export["x-byok-stream-message"] == {
        "$ref": "#/components/schemas/byok.v1.ExportConversationsResponse"
    }
    error = schema(doc, "byok.gateway.Error")["properties"]["error"]
    assert error["required"] == ["code", "message", "status", "details"]
    assert "Retry-After" in doc["components"]["responses"]["Error"]["headers"]


def test_schemas_follow_the_proto3_json_mapping() -> None:
    doc = spec()
    conv = schema(doc, "byok.v1.Conversation")["properties"]
    assert conv["messageCount"]["type"] == ["string", "integer"]  # int64
    assert conv["messageCount"]["readOnly"] is True
    assert conv["createTime"] == {
        "type": "string",
        "format": "date-time",
        "description": "Output only.",
        "readOnly": True,
    }
    assert conv["metadata"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert conv["messages"]["items"] == {"$ref": "#/components/schemas/byok.v1.Message"}
    assert conv["usage"]["$ref"] == "#/components/schemas/byok.v1.TokenUsage"
    message = schema(doc, "byok.v1.Message")
    assert message["properties"]["role"]["$ref"] == "#/components/schemas/byok.v1.Role"
    assert message["required"] == ["role"]
    assert message["properties"]["latency"]["pattern"].endswith("s$")
    assert message["additionalProperties"] is False
    role = schema(doc, "byok.v1.Role")
    assert role["type"] == "string" and "ROLE_USER" in role["enum"]
    imported = schema(doc, "byok.v1.ImportConversationsRequest")["properties"]["data"]
    assert imported["format"] == "byte" and imported["contentEncoding"] == "base64"
    update = doc["paths"]["/api/conversations/{conversation}"]["patch"]
    mask = next(p for p in update["parameters"] if p["name"] == "updateMask")
    assert mask["schema"]["type"] == "string"  # FieldMask
    key = schema(doc, "byok.v1.SetProviderKeyRequest")["properties"]["key"]
    assert key["writeOnly"] is True
    params = schema(doc, "byok.v1.GenerationParams")["properties"]
    assert params["temperature"]["type"] == "number"
    assert params["stop"] == {"type": "array", "items": {"type": "string"}}


def test_singular_names_of_collections() -> None:
    assert singular("conversations") == "conversation"
    assert singular("model-profiles") == "model_profile"
    assert singular("boxes") == "box" and singular("policies") == "policy"


def test_docs_rest_md_lists_every_route() -> None:
    text = DOCS.read_text()
    for binding in load_bindings().bindings:
        path, _ = openapi_path(binding)
        service = binding.method.containing_service.name
        row = f"| `{service}.{binding.method.name}` | `{binding.http_method} {path}` |"
        assert row in text, f"docs/rest.md lacks {row}"
