"""Builds the providers the configured routes need, and closes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from byok.server.errors import FailedPrecondition
from byok.server.models.routing import LOCAL_PROVIDER, RoutingConfig
from byok.server.providers.base import ChatMessage, Provider, SamplingParams, StreamEvent
from byok.server.providers.openai_compat import OpenAICompatProvider

log = logging.getLogger(__name__)


def build_providers(
    config: RoutingConfig, local_factory: Callable[[], Provider] | None
) -> dict[str, Provider]:
    """One provider per provider name a route uses, keyed by that name.

    Remote providers are OpenAI-compatible clients (creating one opens no connection).
    The local provider is made by `local_factory` on its first use, so a server whose
    routes never reach it never loads it; without a factory, using it fails with
    FAILED_PRECONDITION (LOCAL_MODEL_UNAVAILABLE).
    """
    used = {route.provider for route in config.routes.values()}
    providers: dict[str, Provider] = {}
    for name in sorted(used):
        if name == LOCAL_PROVIDER:
            providers[name] = LazyProvider(name, local_factory)
            continue
        settings = config.providers[name]
        assert settings.base_url is not None, f"remote provider {name!r} has no base URL"
        providers[name] = OpenAICompatProvider(
            name, settings.base_url, settings.api_key, config.timeouts
        )
    return providers


async def close_all(providers: Mapping[str, Provider]) -> None:
    """Closes every provider; one failing to close does not keep the others open."""
    results = await asyncio.gather(
        *(provider.aclose() for provider in providers.values()), return_exceptions=True
    )
    for name, result in zip(providers, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("closing provider %s failed: %r", name, result)


class LazyProvider:
    """Creates the real provider with `factory` on first use."""

    def __init__(self, name: str, factory: Callable[[], Provider] | None) -> None:
        self.name = name
        self._factory = factory
        self._provider: Provider | None = None

    def _get(self) -> Provider:
        if self._provider is None:
            if self._factory is None:
                raise FailedPrecondition(
                    f"provider '{self.name}' (the embedded model) is not available in this "
                    "server; install the local-model extra or route to a remote provider",
                    reason="LOCAL_MODEL_UNAVAILABLE",
                    metadata={"provider": self.name},
                )
            self._provider = self._factory()
        return self._provider

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        api_key: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        provider = self._get()
        async for event in provider.stream(model, messages, params, api_key=api_key):
            yield event

    async def aclose(self) -> None:
        if self._provider is not None:
            provider, self._provider = self._provider, None
            await provider.aclose()
