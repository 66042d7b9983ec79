"""ModelService core for the routes: what each configured model is and how it does.

Capabilities and context windows come from a built-in table of known model families,
matched by model id prefix (the longest known prefix wins). Ids are matched the way
providers spell them: an OpenRouter/Together/Groq vendor path ("anthropic/...",
"meta-llama/...") and a leading "meta-" are dropped, case is ignored, and Ollama tags
("llama3.1:8b") and dated snapshots ("gpt-4o-2024-08-06") match their family. A model
the table does not know gets context window 0 and the capabilities every
OpenAI-compatible chat model has (streaming, a system prompt).

The table is a guide, not a contract: figures are the families' published defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from byok.server import paging
from byok.server.errors import NotFound, PermissionDenied
from byok.server.ids import parse_name
from byok.server.models.routing import LOCAL_PROVIDER, Route, RouteTable
from byok.server.models.stats import LiveStats, RouteStats
from byok.server.providers.local import MODEL_FILE, default_model_path


@dataclass(frozen=True)
class Capabilities:
    streaming: bool = True
    system_prompt: bool = True
    tools: bool = False
    vision: bool = False
    json_mode: bool = False


@dataclass(frozen=True)
class KnownModel:
    context_window: int
    capabilities: Capabilities


def _m(
    context: int,
    *,
    tools: bool = False,
    vision: bool = False,
    json: bool = False,
    system: bool = True,
) -> KnownModel:
    return KnownModel(context, Capabilities(True, system, tools, vision, json))


# prefix → model family. Keys are normalized ids (see `normalize_model_id`).
KNOWN_MODELS: dict[str, KnownModel] = {
    # OpenAI
    "gpt-5": _m(400_000, tools=True, vision=True, json=True),
    "gpt-4.1": _m(1_047_576, tools=True, vision=True, json=True),
    "gpt-4.5": _m(128_000, tools=True, vision=True, json=True),
    "gpt-4o": _m(128_000, tools=True, vision=True, json=True),
    "gpt-4o-mini": _m(128_000, tools=True, vision=True, json=True),
    "chatgpt-4o": _m(128_000, vision=True, json=True),
    "gpt-4-turbo": _m(128_000, tools=True, vision=True, json=True),
    "gpt-4": _m(8_192, tools=True),
    "gpt-3.5-turbo": _m(16_385, tools=True, json=True),
    "gpt-oss": _m(131_072, tools=True, json=True),
    "o1": _m(200_000, tools=True, vision=True, json=True),
    "o1-mini": _m(128_000, system=False),
    "o1-preview": _m(128_000, system=False),
    "o3": _m(200_000, tools=True, vision=True, json=True),
    "o3-mini": _m(200_000, tools=True, json=True),
    "o4-mini": _m(200_000, tools=True, vision=True, json=True),
    # Anthropic (OpenRouter: anthropic/claude-...)
    "claude": _m(200_000, tools=True, vision=True),
    "claude-2": _m(100_000),
    "claude-2.1": _m(200_000),
    "claude-instant": _m(100_000),
    # Meta Llama (Groq: llama-3.1-8b-instant, llama3-8b-8192; Ollama: llama3.1:8b)
    "llama-2": _m(4_096),
    "llama2": _m(4_096),
    "llama-3": _m(8_192, json=True),
    "llama3": _m(8_192, json=True),
    "llama-3.1": _m(131_072, tools=True, json=True),
    "llama3.1": _m(131_072, tools=True, json=True),
    "llama-3.2": _m(131_072, tools=True, json=True),
    "llama3.2": _m(131_072, tools=True, json=True),
    "llama-3.2-11b-vision": _m(131_072, vision=True, json=True),
    "llama-3.2-90b-vision": _m(131_072, vision=True, json=True),
    "llama3.2-vision": _m(131_072, vision=True),
    "llama-3.3": _m(131_072, tools=True, json=True),
    "llama3.3": _m(131_072, tools=True, json=True),
    "llama-4": _m(131_072, tools=True, vision=True, json=True),
    "llama4": _m(131_072, tools=True, vision=True, json=True),
    # Qwen
    "qwen2": _m(32_768, tools=True, json=True),
    "qwen-2": _m(32_768, tools=True, json=True),
    "qwen2.5": _m(32_768, tools=True, json=True),
    "qwen-2.5": _m(32_768, tools=True, json=True),
    "qwen2.5-vl": _m(32_768, vision=True, json=True),
    "qwen-2.5-vl": _m(32_768, vision=True, json=True),
    "qwen3": _m(32_768, tools=True, json=True),
    "qwen-qwq": _m(131_072, tools=True, json=True),
    "qwq": _m(131_072, tools=True, json=True),
    # Mistral
    "mistral": _m(32_768, tools=True, json=True),
    "mistral-7b": _m(32_768, json=True),
    "mistral-small": _m(32_768, tools=True, json=True),
    "mistral-medium": _m(131_072, tools=True, vision=True, json=True),
    "mistral-large": _m(131_072, tools=True, json=True),
    "mistral-nemo": _m(131_072, tools=True, json=True),
    "open-mistral-nemo": _m(131_072, tools=True, json=True),
    "ministral": _m(131_072, tools=True, json=True),
    "mixtral-8x7b": _m(32_768, tools=True, json=True),
    "mixtral-8x22b": _m(65_536, tools=True, json=True),
    "mixtral": _m(32_768, tools=True, json=True),
    "codestral": _m(256_000, tools=True, json=True),
    "pixtral": _m(131_072, tools=True, vision=True, json=True),
    # Google Gemma (Gemma 1 and 2 have no system role)
    "gemma": _m(8_192, system=False),
    "gemma-2": _m(8_192, system=False),
    "gemma2": _m(8_192, system=False),
    "gemma-3": _m(131_072, vision=True, json=True),
    "gemma3": _m(131_072, vision=True, json=True),
    # DeepSeek
    "deepseek-chat": _m(65_536, tools=True, json=True),
    "deepseek-v3": _m(131_072, tools=True, json=True),
    "deepseek-reasoner": _m(65_536, json=True),
    "deepseek-r1": _m(131_072),
    "deepseek-r1-distill": _m(131_072, json=True),
    "deepseek-coder": _m(16_384, json=True),
    # Other Groq-hosted families
    "kimi-k2": _m(131_072, tools=True, json=True),
    "compound-beta": _m(131_072, tools=True),
    # The embedded model's family, when served elsewhere
    "smollm2": _m(8_192),
}
_PREFIXES = sorted(KNOWN_MODELS, key=len, reverse=True)
_QUANT = re.compile(r"[.\-_](I?Q\d+(?:_[A-Z0-9]+)*|F16|F32|BF16)\.gguf$", re.IGNORECASE)
UNKNOWN = KnownModel(0, Capabilities())
LOCAL_CAPABILITIES = Capabilities(streaming=True, system_prompt=True)


def normalize_model_id(model_id: str) -> str:
    """The id as the table spells it: lower case, no vendor path, no "meta-" prefix."""
    name = model_id.strip().lower().rsplit("/", 1)[-1]
    return name.removeprefix("meta-")


def known_model(model_id: str) -> KnownModel:
    """The family of `model_id` by longest prefix; a prefix must end at a word boundary
    ("gpt-4" does not claim "gpt-4o" or "gpt-45")."""
    name = normalize_model_id(model_id)
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if not rest or not rest[0].isalnum():
                return KNOWN_MODELS[prefix]
    return UNKNOWN


def quantization_of(path: Path | None) -> str:
    """ "Q4_1" from "SmolLM2-135M-Instruct.Q4_1.gguf"; "" when the name does not say."""
    match = _QUANT.search(path.name if path is not None else MODEL_FILE)
    return match.group(1).upper() if match else ""


def base_url_host(base_url: str | None) -> str:
    """Host and port of a base URL, never its user info or path: "api.openai.com",
    "127.0.0.1:8000", "[::1]:8000"."""
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


@dataclass(frozen=True)
class ModelInfo:
    """One configured route, as ModelService shows it."""

    route: Route
    allowed: bool
    is_default: bool
    base_url_host: str
    local: bool
    capabilities: Capabilities
    context_window: int
    quantization: str
    size_bytes: int
    stats: RouteStats

    @property
    def name(self) -> str:
        return f"models/{self.route.key.lower()}"


class ModelCatalog:
    """ListModels / GetModel over the configured routes."""

    def __init__(
        self,
        routes: RouteTable,
        stats: LiveStats,
        *,
        local_model_path: Path | None = None,
        local_context: int = 2048,
    ) -> None:
        self.routes = routes
        self.stats = stats
        self.local_model_path = local_model_path
        self.local_context = local_context

    def _allowed(self, route: Route) -> bool:
        try:
            self.routes.check_allowed(route)
        except PermissionDenied:
            return False
        return True

    def describe(self, route: Route) -> ModelInfo:
        default = self.routes.default()
        local = route.provider == LOCAL_PROVIDER
        provider = self.routes.config.providers.get(route.provider)
        quantization, size = "", 0
        if local:
            known = KnownModel(self.local_context, LOCAL_CAPABILITIES)
            path = self.local_model_path or default_model_path()
            quantization = quantization_of(path)
            try:
                size = path.stat().st_size if path is not None else 0
            except OSError:
                size = 0
        else:
            known = known_model(route.model_id)
        return ModelInfo(
            route=route,
            allowed=self._allowed(route),
            is_default=default is not None and default.key == route.key,
            base_url_host="" if local else base_url_host(provider.base_url if provider else None),
            local=local,
            capabilities=known.capabilities,
            context_window=known.context_window,
            quantization=quantization,
            size_bytes=size,
            stats=self.stats.snapshot(route.key),
        )

    def list_models(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ModelInfo], str]:
        """Every route ordered by key (lower case), AIP-158 pages."""
        size = paging.page_size(page_size)
        query = ["models"]
        cursor = paging.decode_token(page_token, query)
        after = str(cursor[0]) if cursor else None
        routes = [r for r in self.routes.all() if after is None or r.key.lower() > after]
        page = routes[:size]
        token = paging.encode_token([page[-1].key.lower()], query) if len(routes) > size else ""
        return [self.describe(r) for r in page], token

    def get_model(self, name: str) -> ModelInfo:
        key = parse_name(name, "models")[0]
        for route in self.routes.all():
            if route.key.lower() == key.lower():
                return self.describe(route)
        raise NotFound.resource(name)
