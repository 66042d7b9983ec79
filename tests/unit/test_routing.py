from __future__ import annotations

import pytest

from byok.server.errors import Aborted, NotFound, PermissionDenied
from byok.server.models.routing import (
    OPENAI_DEFAULT_BASE_URL,
    ProviderConfig,
    Route,
    RouteTable,
    parse_routing,
)
from byok.server.providers.base import Timeouts

TWO_ROUTES = {
    "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
    "MODEL_ROUTE_SMART": "groq/meta-llama/llama-3.3-70b",
    "OPENAI_API_KEY": "sk-openai-secret-0001",
    "PROVIDER_GROQ_BASE_URL": "https://api.groq.example/openai/v1/",
    "PROVIDER_GROQ_API_KEY": "gsk_groq_secret_0002",
}


def table(env: dict[str, str]) -> RouteTable:
    return RouteTable(parse_routing(env))


def test_routes_and_providers_from_env() -> None:
    config = parse_routing(TWO_ROUTES)
    assert config.routes == {
        "fast": Route("FAST", "openai", "gpt-4o-mini"),
        "smart": Route("SMART", "groq", "meta-llama/llama-3.3-70b"),  # split on the first /
    }
    assert config.providers == {
        "openai": ProviderConfig("openai", OPENAI_DEFAULT_BASE_URL, "sk-openai-secret-0001"),
        "groq": ProviderConfig(
            "groq", "https://api.groq.example/openai/v1", "gsk_groq_secret_0002"
        ),
    }
    assert config.default_key is None
    assert config.allowed_models == frozenset()
    assert config.timeouts == Timeouts()


def test_openai_base_url_and_keyless_provider() -> None:
    config = parse_routing(
        {
            "MODEL_ROUTE_A": "openai/gpt-4o",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "MODEL_ROUTE_B": "ollama/llama3",
            "PROVIDER_OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1",
        }
    )
    assert config.providers["openai"] == ProviderConfig("openai", "http://127.0.0.1:9/v1", None)
    assert config.providers["ollama"].api_key is None


def test_local_provider_has_no_base_url() -> None:
    config = parse_routing({"MODEL_ROUTE_TINY": "local/smollm2-135m"})
    assert config.providers == {"local": ProviderConfig("local", None, None)}


def test_no_routes_means_one_local_default_route() -> None:
    config = parse_routing({"OPENAI_API_KEY": "sk-unused-00000000"})
    assert config.routes == {"local": Route("LOCAL", "local", "smollm2-135m")}
    assert config.default_key == "LOCAL"
    assert table({}).resolve(None) == Route("LOCAL", "local", "smollm2-135m")
    assert parse_routing({"DEFAULT_MODEL_ROUTE": "local"}).default_key == "LOCAL"


def test_keys_are_case_insensitive_for_lookup() -> None:
    routes = table(TWO_ROUTES)
    assert routes.resolve("fast").key == "FAST"
    assert routes.resolve("Smart").model_id == "meta-llama/llama-3.3-70b"
    assert routes.resolve("models/fast").key == "FAST"  # the resource name works too
    assert table({"model_route_Mixed": "openai/gpt-4o"}).resolve("MIXED").key == "Mixed"


def test_default_route() -> None:
    routes = table({**TWO_ROUTES, "DEFAULT_MODEL_ROUTE": "smart"})
    assert routes.config.default_key == "SMART"
    assert routes.resolve(None).key == "SMART"
    assert routes.resolve("").key == "SMART"
    assert routes.default() == routes.resolve("SMART")


def test_single_route_is_used_without_default() -> None:
    routes = table({"MODEL_ROUTE_ONLY": "openai/gpt-4o"})
    assert routes.config.default_key is None
    assert routes.resolve(None).key == "ONLY"
    assert routes.default() == routes.resolve("only")


def test_several_routes_without_default_are_ambiguous() -> None:
    routes = table(TWO_ROUTES)
    assert routes.default() is None
    with pytest.raises(Aborted) as caught:
        routes.resolve(None)
    err = caught.value
    assert err.code == "ABORTED"
    assert err.reason == "AMBIGUOUS_ROUTE"
    assert err.metadata == {"routes": "FAST,SMART"}
    assert "FAST, SMART" in err.message
    assert "DEFAULT_MODEL_ROUTE" in err.message


def test_unknown_route() -> None:
    with pytest.raises(NotFound) as caught:
        table(TWO_ROUTES).resolve("turbo")
    err = caught.value
    assert err.code == "NOT_FOUND"
    assert err.reason == "UNKNOWN_ROUTE"
    assert "'turbo'" in err.message
    assert "FAST, SMART" in err.message
    assert err.metadata == {"route": "turbo", "routes": "FAST,SMART"}


def test_all_routes_sorted_by_key() -> None:
    routes = table({**TWO_ROUTES, "MODEL_ROUTE_ALPHA": "openai/gpt-4o"})
    assert [r.key for r in routes.all()] == ["ALPHA", "FAST", "SMART"]


def test_allowed_models() -> None:
    routes = table({**TWO_ROUTES, "ALLOWED_MODELS": " gpt-4o-mini , ,other-model"})
    assert routes.config.allowed_models == frozenset({"gpt-4o-mini", "other-model"})
    routes.check_allowed(routes.resolve("fast"))
    with pytest.raises(PermissionDenied) as caught:
        routes.check_allowed(routes.resolve("smart"))
    err = caught.value
    assert err.code == "PERMISSION_DENIED"
    assert err.reason == "MODEL_NOT_ALLOWED"
    assert "'meta-llama/llama-3.3-70b'" in err.message
    assert "gpt-4o-mini, other-model" in err.message
    assert err.metadata["model"] == "meta-llama/llama-3.3-70b"
    assert err.metadata["allowed"] == "gpt-4o-mini,other-model"


def test_empty_allowlist_allows_everything() -> None:
    routes = table({**TWO_ROUTES, "ALLOWED_MODELS": ""})
    for route in routes.all():
        routes.check_allowed(route)


def test_allowlist_entry_may_name_the_provider_too() -> None:
    routes = table({**TWO_ROUTES, "ALLOWED_MODELS": "groq/meta-llama/llama-3.3-70b"})
    routes.check_allowed(routes.resolve("smart"))
    with pytest.raises(PermissionDenied):
        routes.check_allowed(routes.resolve("fast"))


def test_timeouts() -> None:
    config = parse_routing(
        {
            "CONNECT_TIMEOUT_SECONDS": "2.5",
            "READ_TIMEOUT_SECONDS": "30",
            "WRITE_TIMEOUT_SECONDS": "5",
            "TOTAL_TIMEOUT_SECONDS": "120",
            "MAX_RETRIES": "0",
        }
    )
    assert config.timeouts == Timeouts(connect=2.5, read=30, write=5, total=120, max_retries=0)
    assert parse_routing({}).timeouts == Timeouts(10, 60, 10, 600, 2)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MODEL_ROUTE_FAST": "gpt-4o-mini"}, "MODEL_ROUTE_FAST"),
        ({"MODEL_ROUTE_FAST": "openai/"}, "MODEL_ROUTE_FAST"),
        ({"MODEL_ROUTE_FAST": "/gpt-4o"}, "MODEL_ROUTE_FAST"),
        ({"MODEL_ROUTE_FAST": "open-ai/gpt-4o"}, "MODEL_ROUTE_FAST"),
        ({"MODEL_ROUTE_FAST": "openai/gpt 4o"}, "MODEL_ROUTE_FAST"),
        ({"MODEL_ROUTE_": "openai/gpt-4o"}, "MODEL_ROUTE_"),
        ({"MODEL_ROUTE_A-B": "openai/gpt-4o"}, "MODEL_ROUTE_A-B"),
        ({"MODEL_ROUTE_FAST": "openai/a", "model_route_fast": "openai/b"}, "model_route_fast"),
        ({"MODEL_ROUTE_X": "groq/llama"}, "MODEL_ROUTE_X"),
        (
            {"MODEL_ROUTE_X": "groq/llama", "PROVIDER_GROQ_BASE_URL": "ftp://x"},
            "PROVIDER_GROQ_BASE_URL",
        ),
        (
            {"MODEL_ROUTE_X": "openai/gpt-4o", "OPENAI_BASE_URL": "api.openai.com"},
            "OPENAI_BASE_URL",
        ),
        ({"PROVIDER_GROQ_API_KEY": "gsk_x"}, "PROVIDER_GROQ_BASE_URL"),
        ({**TWO_ROUTES, "DEFAULT_MODEL_ROUTE": "turbo"}, "DEFAULT_MODEL_ROUTE"),
        ({"DEFAULT_MODEL_ROUTE": "fast"}, "DEFAULT_MODEL_ROUTE"),
        ({"CONNECT_TIMEOUT_SECONDS": "soon"}, "CONNECT_TIMEOUT_SECONDS"),
        ({"READ_TIMEOUT_SECONDS": "0"}, "READ_TIMEOUT_SECONDS"),
        ({"WRITE_TIMEOUT_SECONDS": "-1"}, "WRITE_TIMEOUT_SECONDS"),
        ({"TOTAL_TIMEOUT_SECONDS": "inf"}, "TOTAL_TIMEOUT_SECONDS"),
        ({"MAX_RETRIES": "-1"}, "MAX_RETRIES"),
        ({"MAX_RETRIES": "2.5"}, "MAX_RETRIES"),
        ({"MAX_RETRIES": "100"}, "MAX_RETRIES"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=f"^{variable}") as caught:
        parse_routing(env)
    assert "Traceback" not in str(caught.value)


def test_undeclared_provider_error_says_what_to_set() -> None:
    with pytest.raises(ValueError) as caught:
        parse_routing({"MODEL_ROUTE_X": "groq/llama"})
    message = str(caught.value)
    assert message.startswith("MODEL_ROUTE_X: provider 'groq' is not declared")
    assert "PROVIDER_GROQ_BASE_URL" in message


def test_unknown_default_lists_configured_routes() -> None:
    with pytest.raises(ValueError) as caught:
        parse_routing({**TWO_ROUTES, "DEFAULT_MODEL_ROUTE": "turbo"})
    assert "FAST, SMART" in str(caught.value)


def test_keys_never_appear_in_repr() -> None:
    config = parse_routing(TWO_ROUTES)
    for text in (repr(config), str(config), repr(config.providers), repr(RouteTable(config))):
        assert "sk-openai-secret-0001" not in text
        assert "gsk_groq_secret_0002" not in text
    assert config.providers["openai"].api_key == "sk-openai-secret-0001"
