"""One chat turn, as data: resolve the route, store the user message first, stream the
reply from the provider as it arrives, store the assistant message at the end.

If the caller cancels or the upstream fails after the first token, what was
generated is stored INCOMPLETE with the reason before the error propagates: an
acknowledged user message and a partial reply are never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace
from typing import cast

from byok.server.accounts.provider_keys import ProviderKeys
from byok.server.chat import tokens
from byok.server.conversations.model import Conversation, Message, MessageStatus, Role, Usage
from byok.server.conversations.service import (
    Conversations,
    check_content,
    check_title,
    space_id_of,
)
from byok.server.errors import ByokError, FailedPrecondition, InvalidArgument, Unimplemented
from byok.server.ids import new_id
from byok.server.models import profiles
from byok.server.models.routing import Route, RouteTable
from byok.server.models.stats import LiveStats
from byok.server.observability import Metrics
from byok.server.providers.base import (
    ChatMessage,
    Provider,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from byok.server.ratelimit import RateLimiter, raise_if_refused
from byok.server.storage.workspace import WorkspaceStore

HISTORY_LIMIT = 10_000
# Our count (o200k_base) is an estimate for other models' tokenizers: an upstream is cut
# only once it is clearly past max_tokens, and then at exactly this many more tokens.
MAX_TOKENS_SLACK = 16
_ROLE_NAMES = {
    Role.SYSTEM: "system",
    Role.USER: "user",
    Role.ASSISTANT: "assistant",
    Role.TOOL: "tool",
}


@dataclass(frozen=True)
class GenerationOverrides:
    """Request parameters; None means "not set" (the profile's or provider's default)."""

    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatTurn:
    user_id: str
    content: str
    conversation: str = ""  # a name, or "" for a new conversation
    model_key: str = ""
    model_profile: str = ""
    params: GenerationOverrides = field(default_factory=GenerationOverrides)
    title: str = ""
    space: str = ""


@dataclass(frozen=True)
class Started:
    conversation: Conversation
    conversation_created: bool
    user_message: Message
    route: Route


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    message: Message


ChatEvent = Started | Delta | UsageReport | Done


def check_params(params: GenerationOverrides) -> None:
    if params.temperature is not None and not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument.field("params.temperature", "must be between 0 and 2")
    if params.top_p is not None and not 0.0 <= params.top_p <= 1.0:
        raise InvalidArgument.field("params.top_p", "must be between 0 and 1")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidArgument.field("params.max_tokens", "must be at least 1")
    if len(params.stop) > 4:
        raise InvalidArgument.field("params.stop", "takes at most 4 sequences")


class ChatEngine:
    """Runs turns against the configured routes and providers."""

    def __init__(
        self,
        conversations: Conversations,
        routes: RouteTable,
        providers: Mapping[str, Provider],
        server_keys: Mapping[str, str | None],
        *,
        user_keys: ProviderKeys | None = None,
        workspace: WorkspaceStore | None = None,
        stats: LiveStats | None = None,
        history_token_budget: int = 6000,
        context_limits: Mapping[str, int] | None = None,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.conversations = conversations
        self.routes = routes
        self.providers = providers
        self.server_keys = server_keys
        self.user_keys = user_keys
        self.workspace = workspace
        self.stats = stats
        self.history_token_budget = history_token_budget
        self.context_limits = dict(context_limits or {})
        self.metrics = metrics
        self.limiter = limiter
        # Set when the server stops: turns cut by the grace period say "shutdown".
        self.shutting_down = False

    async def _route(self, turn: ChatTurn, space_id: str) -> tuple[Route, GenerationOverrides]:
        """The turn's route and parameters: a named profile (or, when the turn names
        no route, its space's default profile) under the request's own params."""
        profile = None
        if self.workspace is not None:
            profile = await profiles.resolve_profile(
                self.workspace,
                turn.user_id,
                turn.model_profile,
                space_id,
                model_key=turn.model_key,
                space_required=not turn.conversation,
            )
        elif turn.model_profile:
            raise Unimplemented(
                "model profiles need a workspace store", reason="PROFILES_UNAVAILABLE"
            )
        route = profiles.route_for(self.routes, turn.model_key, profile)
        return route, profiles.merge_params(profile.params if profile else None, turn.params)

    async def _key(self, user_id: str, route: Route) -> str | None:
        """The caller's own key for the provider first, then the server's (None: the
        provider's configured key); openai without either is refused up front."""
        if route.provider == "local":
            return None
        if self.user_keys is not None:
            mine = await self.user_keys.plaintext(user_id, route.provider)
            if mine:
                return mine
        if route.provider == "openai" and not self.server_keys.get(route.provider):
            raise FailedPrecondition(
                f"route {route.key} uses provider 'openai', which needs a key: store yours "
                "with SetProviderKey (byok keys set openai) or set OPENAI_API_KEY on the server",
                reason="PROVIDER_KEY_MISSING",
                metadata={"provider": route.provider, "route": route.key},
            )
        return None

    async def stream(self, turn: ChatTurn) -> AsyncGenerator[ChatEvent, None]:
        if not turn.content.strip():
            raise InvalidArgument.field("content", "is required")
        check_content(turn.content)
        check_title(turn.title)
        check_params(turn.params)
        existing = None
        history: list[Message] = []
        space_id = space_id_of(turn.space)
        if turn.conversation:
            existing, history = await self.conversations.thread(
                turn.user_id, turn.conversation, history_limit=HISTORY_LIMIT
            )
            space_id = existing.space_id
        route, gen = await self._route(turn, space_id)
        provider = self.providers[route.provider]
        api_key = await self._key(turn.user_id, route)
        if self.limiter is not None:
            raise_if_refused(await self.limiter.check_tokens(turn.user_id), "tokens")

        created = existing is None
        # Stored before the upstream is called: an acknowledged message is never lost.
        if existing is None:
            conv, user_message = await self.conversations.start(
                turn.user_id,
                Message(id="", conversation_id="", role=Role.USER, content=turn.content),
                title=turn.title or _title_from(turn.content),
                space=turn.space,
            )
        else:
            conv = existing
            user_message = await self.conversations.append(
                turn.user_id,
                conv.name,
                Message(id="", conversation_id=conv.id, role=Role.USER, content=turn.content),
            )
        system = ChatMessage("system", gen.system_prompt) if gen.system_prompt else None
        upstream = tokens.trim_history(
            system,
            [*_chat_messages(history), ChatMessage("user", turn.content)],
            self._budget(route, gen),
        )
        params = SamplingParams(
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens=gen.max_tokens,
            stop=gen.stop,
        )
        relay = self._relay(turn, conv, route, provider, api_key, upstream, params)
        # The upstream request starts while Started is on its way to the caller: the
        # caller awaits the write of each event before it asks for the next one, and
        # that wait (~0.4 ms at one turn in flight, more under load) need not delay
        # the first token. The user message is already stored.
        first: asyncio.Future[ChatEvent] = asyncio.ensure_future(anext(relay))
        async with contextlib.aclosing(relay):
            try:
                yield Started(conv, created, user_message, route)
            except BaseException:  # the caller went away: stop the request too
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first
                raise
            yield await first
            async for event in relay:
                yield event

    async def _relay(
        self,
        turn: ChatTurn,
        conv: Conversation,
        route: Route,
        provider: Provider,
        api_key: str | None,
        upstream: list[ChatMessage],
        params: SamplingParams,
    ) -> AsyncGenerator[ChatEvent, None]:
        parts: list[str] = []
        started = time.perf_counter()
        first_token: float | None = None
        end: StreamEnd | None = None
        completion_tokens = 0
        measured = (
            self.metrics.llm_turn(route.key, route.model_id, route.provider)
            if self.metrics is not None
            else _Unmeasured()
        )
        with measured:
            try:
                measured.upstream_sent()
                stream = provider.stream(route.model_id, upstream, params, api_key=api_key)
                async with contextlib.aclosing(
                    cast(AsyncGenerator[StreamEvent, None], stream)
                ) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            if first_token is None:
                                first_token = time.perf_counter()
                                measured.first_token()
                            text = event.text
                            if params.max_tokens is not None:
                                # An upstream that ignores max_tokens is cut off here,
                                # inside a delta that carries several chunks if need be.
                                limit = params.max_tokens + MAX_TOKENS_SLACK
                                counted = tokens.count_tokens(text)
                                completion_tokens += counted
                                if completion_tokens >= limit:
                                    over = completion_tokens - limit
                                    if over:
                                        text = tokens.truncate_tokens(text, counted - over)
                                    end = StreamEnd("length")
                            if text:
                                parts.append(text)
                                yield Delta(text)
                            if end is not None:
                                break
                        else:
                            end = event
                measured.upstream_done()
            except BaseException as exc:  # cancelled, closed early, or the upstream failed
                if self.stats is not None and not isinstance(
                    exc, asyncio.CancelledError | GeneratorExit
                ):
                    failed = time.perf_counter()
                    self.stats.record_turn(
                        route.key,
                        failed - started,
                        (first_token or failed) - started,
                        tokens.count_tokens("".join(parts)),
                        error=True,
                    )
                if parts:
                    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                        reason = "shutdown" if self.shutting_down else "cancelled"
                    elif isinstance(exc, ByokError):
                        reason = f"upstream_error: {exc.reason}: {exc.message}"
                    else:
                        reason = f"error: {type(exc).__name__}"
                    stored = await asyncio.shield(
                        self._store_reply(
                            turn,
                            conv,
                            route,
                            upstream,
                            parts,
                            started,
                            first_token,
                            StreamEnd("incomplete"),
                            MessageStatus.INCOMPLETE,
                            reason,
                        )
                    )
                    measured.tokens(stored.usage.prompt_tokens, stored.usage.completion_tokens)
                raise
            reply = await self._store_reply(
                turn,
                conv,
                route,
                upstream,
                parts,
                started,
                first_token,
                end or StreamEnd("stop"),
                MessageStatus.COMPLETE,
                "",
            )
            measured.finish(
                input_tokens=reply.usage.prompt_tokens,
                output_tokens=reply.usage.completion_tokens,
            )
        if self.stats is not None:
            self.stats.record_turn(
                route.key,
                reply.latency_us / 1e6,
                reply.ttft_us / 1e6,
                reply.usage.completion_tokens,
                error=False,
            )
        yield UsageReport(reply.usage.prompt_tokens, reply.usage.completion_tokens)
        yield Done(reply)

    def _budget(self, route: Route, params: GenerationOverrides) -> int:
        """The history budget, within what a provider with a small context can take
        (counts are o200k approximations, hence the margin)."""
        limit = self.context_limits.get(route.provider)
        if limit is None:
            return self.history_token_budget
        room = limit - (params.max_tokens or 512) - 128
        return max(64, min(self.history_token_budget, room))

    async def _store_reply(
        self,
        turn: ChatTurn,
        conv: Conversation,
        route: Route,
        upstream: list[ChatMessage],
        parts: list[str],
        started: float,
        first_token: float | None,
        end: StreamEnd,
        status: MessageStatus,
        reason: str,
    ) -> Message:
        text = "".join(parts)
        now = time.perf_counter()
        prompt_tokens = end.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = tokens.count_messages(upstream)
        completion_tokens = end.completion_tokens
        if completion_tokens is None:
            completion_tokens = tokens.count_tokens(text)
        message = Message(
            id=new_id(),
            conversation_id=conv.id,
            role=Role.ASSISTANT,
            content=text,
            status=status,
            incomplete_reason=reason[:500],
            model=route.model_id,
            route=route.key,
            usage=Usage(prompt_tokens, completion_tokens),
            latency_us=int((now - started) * 1e6),
            ttft_us=int(((first_token or now) - started) * 1e6),
            finish_reason=end.finish_reason,
        )
        stored = await self.conversations.store.append_messages(turn.user_id, conv.id, [message])
        if self.limiter is not None:
            await self.limiter.add_tokens(turn.user_id, prompt_tokens + completion_tokens)
        return stored[0] if stored else replace(message)


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59] + "…"


def _chat_messages(history: list[Message]) -> list[ChatMessage]:
    return [ChatMessage(_ROLE_NAMES[m.role], m.content) for m in history if m.content]


class _Unmeasured:
    """Stands in for a metrics turn when metrics are off (benchmarks only)."""

    def __enter__(self) -> _Unmeasured:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def upstream_sent(self) -> None: ...

    def first_token(self) -> None: ...

    def upstream_done(self) -> None: ...

    def tokens(self, input_tokens: int, output_tokens: int) -> None: ...

    def finish(
        self, *, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> None: ...
