"""Model routes: which provider and model answer a request that names a route key.

`parse_routing` reads the route variables from a mapping (the composition root passes
the environment merged with `.env`; nothing here reads `os.environ`) and raises
`ValueError("<VARIABLE>: ...")` naming the variable on bad input. Variable names are
matched case-insensitively, like the rest of byok's settings.

    MODEL_ROUTE_<KEY>=<provider>/<model-id>   the model id may contain further slashes
    OPENAI_API_KEY, OPENAI_BASE_URL           provider `openai`
    PROVIDER_<P>_BASE_URL, PROVIDER_<P>_API_KEY   any other OpenAI-compatible provider
    DEFAULT_MODEL_ROUTE=<KEY>                 the route for requests that name none
    ALLOWED_MODELS=<model-id>,...             empty = every model is allowed
    CONNECT_/READ_/WRITE_/TOTAL_TIMEOUT_SECONDS, MAX_RETRIES

Provider `local` is the embedded model. With no MODEL_ROUTE_* at all there is one
route, LOCAL = local/smollm2-135m, and it is the default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from byok.server.errors import Aborted, NotFound, PermissionDenied
from byok.server.providers.base import Timeouts

ROUTE_PREFIX = "MODEL_ROUTE_"
LOCAL_PROVIDER = "local"
OPENAI_PROVIDER = "openai"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
FALLBACK_ROUTE = ("LOCAL", LOCAL_PROVIDER, "smollm2-135m")

_KEY = re.compile(r"[A-Za-z0-9_]+")
_PROVIDER = re.compile(r"[a-z0-9_]+")
_TIMEOUT_VARIABLES = {
    "connect": "CONNECT_TIMEOUT_SECONDS",
    "read": "READ_TIMEOUT_SECONDS",
    "write": "WRITE_TIMEOUT_SECONDS",
    "total": "TOTAL_TIMEOUT_SECONDS",
}
MAX_TIMEOUT_SECONDS = 86_400.0
MAX_RETRIES_LIMIT = 20


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    base_url: str | None  # None for the embedded `local` provider
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Route:
    key: str  # as configured, e.g. "FAST"
    provider: str
    model_id: str

    @property
    def target(self) -> str:
        """`<provider>/<model-id>`, as written in MODEL_ROUTE_<KEY>."""
        return f"{self.provider}/{self.model_id}"


@dataclass(frozen=True)
class RoutingConfig:
    routes: dict[str, Route]  # keyed by the lower-case key
    providers: dict[str, ProviderConfig]  # every provider a route uses
    default_key: str | None
    allowed_models: frozenset[str]
    timeouts: Timeouts = field(default_factory=Timeouts)


def parse_routing(env: Mapping[str, str]) -> RoutingConfig:
    """Builds the routing configuration; raises ValueError naming the bad variable."""
    upper = {name.upper(): value for name, value in env.items()}

    routes: dict[str, Route] = {}
    variables: dict[str, str] = {}  # lower-case key -> the variable that declared it
    for name in sorted(env):
        if not name.upper().startswith(ROUTE_PREFIX):
            continue
        key = name[len(ROUTE_PREFIX) :]
        variable = name
        if not _KEY.fullmatch(key):
            raise ValueError(f"{variable}: the route key must be letters, digits and '_'")
        if key.lower() in variables:
            raise ValueError(
                f"{variable}: route {key!r} is also declared by {variables[key.lower()]}"
            )
        provider, model_id = _parse_target(variable, env[name])
        routes[key.lower()] = Route(key, provider, model_id)
        variables[key.lower()] = variable

    if not routes:
        key, provider, model_id = FALLBACK_ROUTE
        routes[key.lower()] = Route(key, provider, model_id)

    providers: dict[str, ProviderConfig] = {}
    for route in sorted(routes.values(), key=lambda r: r.key.lower()):
        if route.provider not in providers:
            providers[route.provider] = _provider_config(
                route.provider, upper, variables.get(route.key.lower(), "")
            )
    _check_orphan_keys(upper)

    default_key = _default_key(upper, routes, explicit=bool(variables))
    return RoutingConfig(
        routes=routes,
        providers=providers,
        default_key=default_key,
        allowed_models=_allowed_models(upper),
        timeouts=_timeouts(upper),
    )


def _parse_target(variable: str, value: str) -> tuple[str, str]:
    text = value.strip()
    provider, slash, model_id = text.partition("/")
    provider = provider.strip().lower()
    model_id = model_id.strip()
    if not slash or not provider or not model_id:
        raise ValueError(
            f"{variable}: {value!r} is not <provider>/<model-id>, e.g. openai/gpt-4o-mini"
        )
    if not _PROVIDER.fullmatch(provider):
        raise ValueError(
            f"{variable}: provider {provider!r} must be letters, digits and '_' "
            "(it names PROVIDER_<P>_BASE_URL)"
        )
    if any(ch.isspace() for ch in model_id):
        raise ValueError(f"{variable}: model id {model_id!r} contains whitespace")
    return provider, model_id


def _provider_config(name: str, env: Mapping[str, str], route_variable: str) -> ProviderConfig:
    if name == LOCAL_PROVIDER:
        return ProviderConfig(name, None, None)
    if name == OPENAI_PROVIDER:
        openai_url = _base_url("OPENAI_BASE_URL", env) or OPENAI_DEFAULT_BASE_URL
        return ProviderConfig(name, openai_url, _secret(env.get("OPENAI_API_KEY")))
    url_variable = f"PROVIDER_{name.upper()}_BASE_URL"
    base_url = _base_url(url_variable, env)
    if base_url is None:
        raise ValueError(
            f"{route_variable}: provider {name!r} is not declared; set {url_variable} "
            f"(and PROVIDER_{name.upper()}_API_KEY if it needs a key)"
        )
    return ProviderConfig(name, base_url, _secret(env.get(f"PROVIDER_{name.upper()}_API_KEY")))


def _base_url(variable: str, env: Mapping[str, str]) -> str | None:
    value = env.get(variable, "").strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError(f"{variable}: {value!r} is not an http(s) URL")
    return value.rstrip("/")


def _secret(value: str | None) -> str | None:
    return (value or "").strip() or None


def _check_orphan_keys(env: Mapping[str, str]) -> None:
    """A PROVIDER_<P>_API_KEY without its base URL is almost surely a typo."""
    for name, value in env.items():
        if name.startswith("PROVIDER_") and name.endswith("_API_KEY") and value.strip():
            provider = name[len("PROVIDER_") : -len("_API_KEY")]
            url_variable = f"PROVIDER_{provider}_BASE_URL"
            if provider and not env.get(url_variable, "").strip():
                raise ValueError(f"{url_variable}: required when {name} is set")


def _default_key(
    env: Mapping[str, str], routes: Mapping[str, Route], *, explicit: bool
) -> str | None:
    value = env.get("DEFAULT_MODEL_ROUTE", "").strip()
    if value:
        route = routes.get(value.lower())
        if route is None:
            known = ", ".join(sorted(r.key for r in routes.values()))
            raise ValueError(
                f"DEFAULT_MODEL_ROUTE: {value!r} is not a configured route (configured: {known})"
            )
        return route.key
    if not explicit:
        return FALLBACK_ROUTE[0]
    return None


def _allowed_models(env: Mapping[str, str]) -> frozenset[str]:
    items = (item.strip() for item in env.get("ALLOWED_MODELS", "").split(","))
    return frozenset(item for item in items if item)


def _timeouts(env: Mapping[str, str]) -> Timeouts:
    defaults = Timeouts()
    values: dict[str, float] = {}
    for attribute, variable in _TIMEOUT_VARIABLES.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"{variable}: {text!r} is not a number of seconds") from None
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_SECONDS):
            raise ValueError(
                f"{variable}: {text!r} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g}"
            )
        values[attribute] = seconds
    retries = defaults.max_retries
    text = env.get("MAX_RETRIES", "").strip()
    if text:
        if not text.isdigit() or int(text) > MAX_RETRIES_LIMIT:
            raise ValueError(f"MAX_RETRIES: {text!r} is not a whole number from 0 to 20")
        retries = int(text)
    return Timeouts(
        connect=values.get("connect", defaults.connect),
        read=values.get("read", defaults.read),
        write=values.get("write", defaults.write),
        total=values.get("total", defaults.total),
        max_retries=retries,
    )


class RouteTable:
    """Resolves a request's route key and enforces the model allowlist."""

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self._routes = dict(config.routes)
        self._sorted = sorted(self._routes.values(), key=lambda r: r.key.lower())
        self._default = (
            self._routes[config.default_key.lower()] if config.default_key is not None else None
        )

    def _keys(self) -> list[str]:
        return [route.key for route in self._sorted]

    def resolve(self, model_key: str | None) -> Route:
        """The route for `model_key` (case-insensitive; "models/<key>" also works);
        None or empty picks the default route, or the only route."""
        key = (model_key or "").strip().removeprefix("models/")
        if not key:
            route = self.default()
            if route is None:
                keys = self._keys()
                raise Aborted(
                    "no model route named and no DEFAULT_MODEL_ROUTE set; "
                    f"name one of: {', '.join(keys)}",
                    reason="AMBIGUOUS_ROUTE",
                    metadata={"routes": ",".join(keys)},
                )
            return route
        route = self._routes.get(key.lower())
        if route is None:
            keys = self._keys()
            raise NotFound(
                f"model route {key!r} is not configured; configured routes: {', '.join(keys)}",
                reason="UNKNOWN_ROUTE",
                metadata={"route": key, "routes": ",".join(keys)},
            )
        return route

    def check_allowed(self, route: Route) -> None:
        """Raises PermissionDenied unless ALLOWED_MODELS admits the route's model.

        An entry matches the model id, or `<provider>/<model-id>`."""
        allowed = self.config.allowed_models
        if not allowed or route.model_id in allowed or route.target in allowed:
            return
        listed = ", ".join(sorted(allowed))
        raise PermissionDenied(
            f"model {route.model_id!r} (route {route.key}) is not in ALLOWED_MODELS ({listed})",
            reason="MODEL_NOT_ALLOWED",
            metadata={
                "model": route.model_id,
                "route": route.key,
                "allowed": ",".join(sorted(allowed)),
            },
        )

    def default(self) -> Route | None:
        """DEFAULT_MODEL_ROUTE's route, else the only route if there is exactly one."""
        if self._default is not None:
            return self._default
        return self._sorted[0] if len(self._sorted) == 1 else None

    def all(self) -> list[Route]:
        """Every route, ordered by key."""
        return list(self._sorted)
