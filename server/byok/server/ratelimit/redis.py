"""The shared limiter (USE_REDIS=true): the same fixed one-minute windows as the
in-memory one, kept in Redis so every replica spends one budget per user.

Each operation is ONE Lua script run atomically by Redis (INCRBY + PEXPIRE + the
comparison), so concurrent replicas never race between a read and a write. Keys are
`byok:rl:{kind}:{user}:{window}` (kind `req` or `tok`, window = Unix minute) and expire
two minutes after they are made. Replicas name the window from their own clocks:
keep them NTP-synced (skew only matters within a second of a minute boundary).

Redis is asked with short timeouts (0.25 s, no retries), and after a failure it is
left alone for `cooldown` seconds, so a dead Redis never stalls calls. A failure
counts `byok_ratelimit_backend_errors_total`, logs a warning at most every 30 s, and
then follows RATE_LIMIT_FAIL_OPEN: allow (default), or refuse with a `backend_error`
decision that the caller answers UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from byok.server.observability.metrics import Metrics
from byok.server.ratelimit.base import (
    ALLOWED,
    BACKEND_RETRY_AFTER,
    WINDOW_SECONDS,
    Decision,
    window_of,
)

log = logging.getLogger("byok.server.ratelimit")

KEY_PREFIX = "byok:rl"
KEY_TTL_MS = 2 * WINDOW_SECONDS * 1000
WARN_EVERY_SECONDS = 30.0

# KEYS[1] counter; ARGV[1] limit; ARGV[2] ttl ms. Counts one request: 1 allowed, 0 refused.
_TAKE = """
local n = redis.call('INCRBY', KEYS[1], 1)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""
# KEYS[1] counter; ARGV[1] limit. 1 while the budget is not spent, consumes nothing.
_CHECK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
return 1
"""
# KEYS[1] counter; ARGV[1] amount; ARGV[2] ttl ms. Returns the new total.
_ADD = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""

_BACKEND_ERRORS = (RedisError, OSError, TimeoutError)


def redis_location(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without credentials, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class RedisRateLimiter:
    """`requests_per_min` / `tokens_per_min` of 0 turn that budget off."""

    def __init__(
        self,
        requests_per_min: int,
        tokens_per_min: int,
        *,
        url: str,
        fail_open: bool = True,
        metrics: Metrics | None = None,
        timeout: float = 0.25,
        cooldown: float = 1.0,
        prefix: str = KEY_PREFIX,
        clock: Callable[[], float] = time.time,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.fail_open = fail_open
        self.metrics = metrics
        self.timeout = timeout
        self.cooldown = cooldown
        self.prefix = prefix
        self.clock = clock
        self.location = redis_location(url)
        self.client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._take = self.client.register_script(_TAKE)
        self._check = self.client.register_script(_CHECK)
        self._add = self.client.register_script(_ADD)
        self._down_until = 0.0  # monotonic: Redis is not asked before this
        self._warned_at = -WARN_EVERY_SECONDS
        self._failing = False

    def key(self, kind: str, user: str, window: int) -> str:
        return f"{self.prefix}:{kind}:{user}:{window}"

    async def take_request(self, user: str) -> Decision:
        if self.requests_per_min <= 0:
            return ALLOWED
        window, left = window_of(self.clock())
        result = await self._run(
            "take_request",
            lambda: self._take(
                keys=[self.key("req", user, window)], args=[self.requests_per_min, KEY_TTL_MS]
            ),
        )
        if result is None:
            return self._backend_decision()
        if result == 1:
            return ALLOWED
        if self.metrics is not None:
            self.metrics.ratelimit_refused("requests")
        return Decision(False, left, limit=self.requests_per_min)

    async def check_tokens(self, user: str) -> Decision:
        if self.tokens_per_min <= 0:
            return ALLOWED
        window, left = window_of(self.clock())
        result = await self._run(
            "check_tokens",
            lambda: self._check(keys=[self.key("tok", user, window)], args=[self.tokens_per_min]),
        )
        if result is None:
            return self._backend_decision()
        if result == 1:
            return ALLOWED
        if self.metrics is not None:
            self.metrics.ratelimit_refused("tokens")
        return Decision(False, left, limit=self.tokens_per_min)

    async def add_tokens(self, user: str, tokens: int) -> None:
        if self.tokens_per_min <= 0 or tokens <= 0:
            return
        window, _ = window_of(self.clock())
        await self._run(
            "add_tokens",
            lambda: self._add(keys=[self.key("tok", user, window)], args=[tokens, KEY_TTL_MS]),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _backend_decision(self) -> Decision:
        if self.fail_open:
            return Decision(True, 0.0, backend_error=True)
        return Decision(False, BACKEND_RETRY_AFTER, backend_error=True)

    async def _run(self, operation: str, call: Callable[[], Awaitable[Any]]) -> int | None:
        """The script's (integer) result, or None when Redis failed (or is cooling down)."""
        if time.monotonic() < self._down_until:
            self._backend_error(operation, None)
            return None
        try:
            async with asyncio.timeout(2 * self.timeout + 0.05):
                result = int(await call())
        except _BACKEND_ERRORS as exc:
            self._down_until = time.monotonic() + self.cooldown
            self._backend_error(operation, exc)
            return None
        if self._failing:
            self._failing = False
            log.info("rate limiter: Redis at %s answers again", self.location)
        return result

    def _backend_error(self, operation: str, exc: BaseException | None) -> None:
        self._failing = True
        if self.metrics is not None:
            self.metrics.ratelimit_backend_error()
        now = time.monotonic()
        if exc is None or now - self._warned_at < WARN_EVERY_SECONDS:
            return
        self._warned_at = now
        log.warning(
            "rate limiter: Redis at %s failed on %s (%s: %s); %s (RATE_LIMIT_FAIL_OPEN=%s)",
            self.location,
            operation,
            type(exc).__name__,
            exc,
            "allowing calls unlimited" if self.fail_open else "refusing calls with UNAVAILABLE",
            "true" if self.fail_open else "false",
        )
