"""The model catalog (known families, sources, paging), live stats, and the helpers
that apply a model profile to a chat turn."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from byok.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from byok.server.models.catalog import (
    UNKNOWN,
    ModelCatalog,
    base_url_host,
    known_model,
    normalize_model_id,
    quantization_of,
)
from byok.server.models.profiles import check_params, merge_params, route_for
from byok.server.models.routing import RouteTable, parse_routing
from byok.server.models.stats import LiveStats
from byok.server.storage.workspace import ModelProfile, Params


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- known models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "context", "tools", "vision", "system"),
    [
        ("gpt-4o-mini", 128_000, True, True, True),
        ("gpt-4o-mini-2024-07-18", 128_000, True, True, True),
        ("gpt-4o", 128_000, True, True, True),
        ("gpt-4", 8_192, True, False, True),
        ("gpt-4-0613", 8_192, True, False, True),
        ("gpt-4.1-nano", 1_047_576, True, True, True),
        ("o1-mini", 128_000, False, False, False),
        ("o3-mini", 200_000, True, False, True),
        ("anthropic/claude-3.5-sonnet", 200_000, True, True, True),
        ("anthropic/claude-2.1", 200_000, False, False, True),
        ("meta-llama/llama-3.1-8b-instruct", 131_072, True, False, True),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo", 131_072, True, False, True),
        ("llama-3.1-8b-instant", 131_072, True, False, True),  # Groq
        ("llama3-8b-8192", 8_192, False, False, True),  # Groq, Llama 3
        ("llama3.1:8b", 131_072, True, False, True),  # Ollama
        ("meta-llama/llama-4-scout-17b-16e-instruct", 131_072, True, True, True),
        ("qwen/qwen-2.5-72b-instruct", 32_768, True, False, True),
        ("qwen2.5:7b", 32_768, True, False, True),
        ("qwen3-32b", 32_768, True, False, True),
        ("mistralai/mistral-large-2411", 131_072, True, False, True),
        ("mistral:7b", 32_768, True, False, True),
        ("mixtral-8x7b-32768", 32_768, True, False, True),
        ("gemma2-9b-it", 8_192, False, False, False),
        ("google/gemma-3-27b-it", 131_072, False, True, True),
        ("deepseek-chat", 65_536, True, False, True),
        ("deepseek-r1-distill-llama-70b", 131_072, False, False, True),
    ],
)
def test_known_model_families(
    model_id: str, context: int, tools: bool, vision: bool, system: bool
) -> None:
    known = known_model(model_id)
    assert known.context_window == context
    caps = known.capabilities
    assert (caps.streaming, caps.tools, caps.vision, caps.system_prompt) == (
        True,
        tools,
        vision,
        system,
    )


def test_unknown_models_and_prefix_boundaries() -> None:
    assert known_model("my-finetune") is UNKNOWN
    assert UNKNOWN.context_window == 0 and UNKNOWN.capabilities.streaming
    assert known_model("gpt-4omega") is UNKNOWN  # "gpt-4" and "gpt-4o" stop at a word boundary
    assert known_model("o1x") is UNKNOWN
    assert normalize_model_id(" Meta-Llama/Meta-Llama-3-8B ") == "llama-3-8b"


def test_base_url_host_never_shows_credentials_or_path() -> None:
    assert base_url_host("https://api.openai.com/v1") == "api.openai.com"
    assert base_url_host("http://user:sk-secret@127.0.0.1:8000/v1") == "127.0.0.1:8000"
    assert base_url_host("http://[::1]:11434/v1") == "[::1]:11434"
    assert base_url_host(None) == "" and base_url_host("") == ""


def test_quantization_from_the_file_name() -> None:
    assert quantization_of(None) == "Q4_1"  # the shipped SmolLM2 file
    assert quantization_of(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf")) == "Q4_1"
    assert quantization_of(Path("qwen2.5-0.5b-instruct-q4_k_m.gguf")) == "Q4_K_M"
    assert quantization_of(Path("model.f16.gguf")) == "F16"
    assert quantization_of(Path("weights.bin")) == ""


# -- the catalog -------------------------------------------------------------------------


def table(**env: str) -> RouteTable:
    return RouteTable(parse_routing(env))


def test_catalog_describes_routes_in_key_order_with_pages(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.Q8_0.gguf"
    weights.write_bytes(b"x" * 1234)
    routes = table(
        MODEL_ROUTE_Smart="openai/gpt-4o",
        MODEL_ROUTE_FAST="openai/gpt-4o-mini",
        MODEL_ROUTE_LOCAL="local/smollm2-135m",
        OPENAI_API_KEY="sk-never-shown",
        OPENAI_BASE_URL="http://user:pw@127.0.0.1:9999/v1",
        DEFAULT_MODEL_ROUTE="fast",
        ALLOWED_MODELS="gpt-4o-mini,local/smollm2-135m",
    )
    stats = LiveStats()
    catalog = ModelCatalog(routes, stats, local_model_path=weights, local_context=4096)
    first, token = catalog.list_models(page_size=2)
    assert [m.name for m in first] == ["models/fast", "models/local"] and token
    rest, end = catalog.list_models(page_size=2, page_token=token)
    assert [m.name for m in rest] == ["models/smart"] and end == ""

    fast, local, smart = (*first, *rest)
    assert (fast.is_default, fast.allowed, fast.base_url_host) == (True, True, "127.0.0.1:9999")
    assert (smart.is_default, smart.allowed) == (False, False)
    assert smart.route.key == "Smart" and smart.context_window == 128_000
    assert (local.local, local.base_url_host, local.allowed) == (True, "", True)
    assert (local.quantization, local.size_bytes, local.context_window) == ("Q8_0", 1234, 4096)
    assert (fast.quantization, fast.size_bytes) == ("", 0)

    assert catalog.get_model("models/SMART").route.key == "Smart"
    with pytest.raises(NotFound):
        catalog.get_model("models/nope")
    with pytest.raises(InvalidArgument):
        catalog.get_model("routes/fast")
    with pytest.raises(InvalidArgument):
        catalog.list_models(page_size=-1)
    with pytest.raises(InvalidArgument):
        catalog.list_models(page_token="bogus")


def test_catalog_shows_live_stats_per_route() -> None:
    clock = Clock()
    stats = LiveStats(clock=clock)
    catalog = ModelCatalog(table(MODEL_ROUTE_FAST="openai/gpt-4o-mini"), stats)
    stats.record_turn("FAST", 1.0, 0.2, 40, error=False)
    model = catalog.get_model("models/fast")
    assert model.stats.sample_count == 1 and model.stats.p50_latency_s == 1.0


# -- live stats --------------------------------------------------------------------------


def test_stats_medians_error_rate_and_throughput() -> None:
    clock = Clock()
    stats = LiveStats(clock=clock)
    assert stats.snapshot("fast").sample_count == 0
    for latency, ttft, tokens in [(1.0, 0.1, 10), (2.0, 0.2, 20), (4.0, 0.5, 30)]:
        stats.record_turn("FAST", latency, ttft, tokens, error=False)
    stats.record_turn("fast", 9.0, 9.0, 0, error=True)
    snap = stats.snapshot("Fast")  # keys are case-insensitive
    assert snap.sample_count == 4 and snap.error_rate == 0.25
    assert snap.p50_latency_s == 2.0 and snap.p50_ttft_s == 0.2  # failures do not count
    generating = (1.0 - 0.1) + (2.0 - 0.2) + (4.0 - 0.5)
    assert snap.output_tokens_per_second == pytest.approx(60 / generating)
    assert snap.window_seconds == 300.0
    assert stats.snapshot("other").sample_count == 0


def test_stats_window_by_time_and_by_count() -> None:
    clock = Clock()
    stats = LiveStats(clock=clock, window_seconds=60, max_turns=3)
    stats.record_turn("a", 5.0, 1.0, 5, error=True)
    clock.now += 61  # the first turn falls out of the window
    for latency in (1.0, 2.0, 3.0, 4.0):  # and only the last 3 turns are kept
        stats.record_turn("a", latency, 0.1, 5, error=False)
    snap = stats.snapshot("a")
    assert snap.sample_count == 3 and snap.error_rate == 0.0 and snap.p50_latency_s == 3.0
    clock.now += 61
    assert stats.snapshot("a").sample_count == 0


def test_stats_only_failures_and_instant_replies() -> None:
    stats = LiveStats()
    stats.record_turn("a", 0.5, 0.5, 0, error=True)
    snap = stats.snapshot("a")
    assert (snap.sample_count, snap.error_rate, snap.p50_latency_s) == (1, 1.0, None)
    assert snap.output_tokens_per_second == 0.0
    stats.record_turn("b", 0.5, 0.5, 10, error=False)  # one chunk: no generation time
    assert stats.snapshot("b").output_tokens_per_second == pytest.approx(20.0)
    with pytest.raises(ValueError):
        LiveStats(max_turns=0)


def test_stats_from_many_threads() -> None:
    stats = LiveStats(max_turns=10_000)

    def work() -> None:
        for _ in range(500):
            stats.record_turn("a", 1.0, 0.1, 1, error=False)
            stats.snapshot("a")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.snapshot("a").sample_count == 4000


# -- applying a profile ------------------------------------------------------------------


@dataclass(frozen=True)
class Overrides:  # the shape of the chat engine's GenerationOverrides
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


def test_merge_params_request_wins_field_by_field() -> None:
    profile = Params(system_prompt="Be terse.", temperature=0.2, max_tokens=100, stop=("END",))
    merged = merge_params(profile, Overrides(temperature=0.9, top_p=0.5))
    assert merged == Overrides(
        system_prompt="Be terse.", temperature=0.9, top_p=0.5, max_tokens=100, stop=("END",)
    )
    assert merge_params(profile, Overrides(stop=("x",), temperature=0.0)).stop == ("x",)
    assert merge_params(profile, Overrides(temperature=0.0)).temperature == 0.0  # 0 is set
    assert merge_params(None, Overrides(top_p=0.1)) == Overrides(top_p=0.1)
    assert merge_params(profile, Overrides(system_prompt="")).system_prompt == ""


def test_route_for_a_turn() -> None:
    routes = table(
        MODEL_ROUTE_FAST="openai/gpt-4o-mini",
        MODEL_ROUTE_SMART="openai/gpt-4o",
        DEFAULT_MODEL_ROUTE="FAST",
        ALLOWED_MODELS="gpt-4o-mini",
    )
    smart = ModelProfile(id="p", model_key="SMART")
    fast = ModelProfile(id="f", model_key="fast")
    gone = ModelProfile(id="g", model_key="OLD")
    assert route_for(routes, "", None).key == "FAST"
    assert route_for(routes, "", fast).key == "FAST"
    assert route_for(routes, "fast", smart).key == "FAST"  # the request's route wins
    with pytest.raises(PermissionDenied) as denied:
        route_for(routes, "", smart)
    assert denied.value.reason == "MODEL_NOT_ALLOWED"
    assert denied.value.message.startswith("modelProfiles/p: ")
    assert denied.value.metadata["model_profile"] == "modelProfiles/p"
    with pytest.raises(FailedPrecondition) as missing:
        route_for(routes, "", gone)
    assert missing.value.reason == "MODEL_PROFILE_ROUTE_MISSING"


def test_check_params() -> None:
    tidy = check_params(Params(temperature=0.699999988079071, top_p=1.0, stop=("a",)))
    assert tidy.temperature == 0.7 and tidy.top_p == 1.0
    for bad, field in [
        (Params(temperature=2.5), "model_profile.params.temperature"),
        (Params(temperature=float("nan")), "model_profile.params.temperature"),
        (Params(top_p=-0.1), "model_profile.params.top_p"),
        (Params(max_tokens=0), "model_profile.params.max_tokens"),
        (Params(stop=("a", "b", "c", "d", "e")), "model_profile.params.stop"),
        (Params(stop=("",)), "model_profile.params.stop"),
        (Params(system_prompt="x" * 70_000), "model_profile.params.system_prompt"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            check_params(bad)
        assert err.value.violations[0].field == field
