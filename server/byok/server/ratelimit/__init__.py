"""Per-user request and token limits per minute (RATE_LIMIT_PER_MIN, TOKEN_LIMIT_PER_MIN),
in memory or shared through Redis (USE_REDIS). See ratelimit/base.py for the rules."""

from __future__ import annotations

from byok.server.observability.metrics import Metrics
from byok.server.ratelimit.base import (
    ALLOWED,
    WINDOW_SECONDS,
    Decision,
    RateLimiter,
    raise_if_refused,
)
from byok.server.ratelimit.memory import MemoryRateLimiter

__all__ = [
    "ALLOWED",
    "WINDOW_SECONDS",
    "Decision",
    "MemoryRateLimiter",
    "RateLimiter",
    "build_limiter",
    "raise_if_refused",
]


def build_limiter(
    requests_per_min: int,
    tokens_per_min: int,
    use_redis: bool,
    redis_url: str,
    fail_open: bool,
    metrics: Metrics | None,
    redis_timeout: float = 0.25,
) -> RateLimiter | None:
    """The configured limiter, or None when both limits are 0 (off)."""
    if requests_per_min <= 0 and tokens_per_min <= 0:
        return None
    if use_redis:
        from byok.server.ratelimit.redis import RedisRateLimiter

        return RedisRateLimiter(
            requests_per_min,
            tokens_per_min,
            url=redis_url,
            fail_open=fail_open,
            metrics=metrics,
            timeout=redis_timeout,
        )
    return MemoryRateLimiter(requests_per_min, tokens_per_min, metrics=metrics)
