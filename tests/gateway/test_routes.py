"""Route table: every annotated RPC has a route; templates, verbs, kebab → camel."""

from __future__ import annotations

import pytest

from byok.server.gateway.routes import (
    TemplateError,
    http_rules,
    kebab_to_camel,
    load_bindings,
    parse_template,
    service_descriptors,
)


def test_every_annotated_method_of_every_byok_service_has_a_route() -> None:
    table = load_bindings()
    services = service_descriptors()
    assert {s.name for s in services} >= {
        "ChatService",
        "ConversationService",
        "ModelService",
        "SpaceService",
    }
    annotated = 0
    for service in services:
        for method in service.methods:
            rules = http_rules(method)
            annotated += bool(rules)
            bindings = table.for_method(method)
            assert len(bindings) == len(rules), f"{method.full_name}: {len(rules)} rules"
            for binding in bindings:
                # The route answers a URL built from its own template.
                url = binding.template.text
                for variable in binding.template.variables:
                    pattern = "/".join(p if p not in ("*", "**") else "x1" for p in variable.parts)
                    url = url.replace(
                        "{" + variable.field_name + "=" + "/".join(variable.parts) + "}", pattern
                    )
                    url = url.replace("{" + variable.field_name + "}", pattern)
                match = table.match(binding.http_method, url)
                assert match is not None and match.binding.method is method, url
    assert annotated == len(table.bindings) >= 30


@pytest.mark.parametrize(
    ("method", "url", "rpc", "values"),
    [
        ("GET", "/api/model-profiles/abc", "GetModelProfile", {"name": "modelProfiles/abc"}),
        (
            "PATCH",
            "/api/model-profiles/abc",
            "UpdateModelProfile",
            {"model_profile.name": "modelProfiles/abc"},
        ),
        (
            "DELETE",
            "/api/provider-keys/openai",
            "DeleteProviderKey",
            {"name": "providerKeys/openai"},
        ),
        ("GET", "/api/conversations/x", "GetConversation", {"name": "conversations/x"}),
        (
            "GET",
            "/api/conversations/x/messages/y",
            "GetMessage",
            {"name": "conversations/x/messages/y"},
        ),
        (
            "PATCH",
            "/api/conversations/x/messages/y",
            "UpdateMessage",
            {"message.name": "conversations/x/messages/y"},
        ),
        (
            "GET",
            "/api/conversations/-/messages:search",
            "SearchMessages",
            {"parent": "conversations/-"},
        ),
        ("GET", "/api/conversations/x/messages", "ListMessages", {"parent": "conversations/x"}),
        ("POST", "/api/conversations:export", "ExportConversations", {}),
        ("POST", "/api/conversations:import", "ImportConversations", {}),
        ("POST", "/api/spaces/s1:linkModelProfile", "LinkModelProfile", {"space": "spaces/s1"}),
        ("POST", "/api/spaces/s1:unlinkModelProfile", "UnlinkModelProfile", {"space": "spaces/s1"}),
        ("GET", "/api/conversations/a%20b", "GetConversation", {"name": "conversations/a b"}),
        ("POST", "/api/chat/stream", "StreamChat", {}),
        ("GET", "/api/models", "ListModels", {}),
    ],
)
def test_matcher(method: str, url: str, rpc: str, values: dict[str, str]) -> None:
    match = load_bindings().match(method, url)
    assert match is not None and match.binding.method.name == rpc
    assert match.values == values


@pytest.mark.parametrize(
    "url",
    [
        "/api/conversations/x:export",  # the verb belongs to the collection only
        "/api/conversations/x/messages/y:search",
        "/api/spaces/s1:nope",
        "/api/conversations/",
        "/api/conversations/x/y",
        "/api/model_profiles/abc",
        "/conversations/x",
    ],
)
def test_no_match(url: str) -> None:
    table = load_bindings()
    assert all(table.match(m, url) is None for m in ("GET", "POST", "PATCH", "DELETE"))


def test_allowed_methods_for_405() -> None:
    table = load_bindings()
    assert table.allowed_methods("/api/conversations/x") == ["DELETE", "GET", "PATCH"]
    assert table.allowed_methods("/api/conversations:export") == ["POST"]
    assert table.allowed_methods("/nowhere") == []


def test_kebab_to_camel() -> None:
    assert kebab_to_camel("model-profiles") == "modelProfiles"
    assert kebab_to_camel("conversations") == "conversations"
    assert kebab_to_camel("a-b-c") == "aBC"


def test_template_grammar() -> None:
    t = parse_template("/v1/{name=shelves/*/books/**}:read")
    assert t.verb == "read"
    assert t.match("/v1/shelves/s/books/a/b:read") == {"name": "shelves/s/books/a/b"}
    t = parse_template("/v1/{id}/x/*")
    assert t.match("/v1/7/x/anything") == {"id": "7"}
    assert t.match("/v1/7/x/a/b") is None
    for bad in ("v1/x", "/v1/{name", "/v1/{name=}", "/v1/a}", "/v1/x:", "/v1//x"):
        with pytest.raises(TemplateError):
            parse_template(bad)


def test_literals_win_over_wildcards() -> None:
    from byok.v1 import conversations_pb2

    method = conversations_pb2.DESCRIPTOR.services_by_name["ConversationService"].methods_by_name
    table = load_bindings()
    # GET /api/conversations is ListConversations, not GetConversation with an empty id.
    match = table.match("GET", "/api/conversations")
    assert match is not None and match.binding.method is method["ListConversations"]
