"""Per-user rate limits: in memory, and shared through a real Redis by two replicas.

The Redis tests need Redis at 127.0.0.1:6379 and fail (not skip) without it. Each test
uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from byok.server.errors import ResourceExhausted, Unavailable
from byok.server.observability.metrics import Metrics
from byok.server.ratelimit import (
    Decision,
    MemoryRateLimiter,
    build_limiter,
    raise_if_refused,
)
from byok.server.ratelimit.redis import RedisRateLimiter, redis_location

REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_REDIS = "redis://127.0.0.1:1/0"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
T0 = 1_800_000_000.0 + 20.5  # 20.5 s into a minute: 39.5 s left in the window


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(m: Metrics, kind: str) -> float:
    return m.registry.get_sample_value("byok_ratelimit_refused_total", {"kind": kind}) or 0.0


def backend_errors(m: Metrics) -> float:
    return m.registry.get_sample_value("byok_ratelimit_backend_errors_total") or 0.0


# -- in memory ----------------------------------------------------------------------


async def test_memory_requests_per_user_per_minute() -> None:
    clock, metrics = Clock(), Metrics(process=False)
    limiter = MemoryRateLimiter(3, 0, metrics=metrics, clock=clock)
    assert [(await limiter.take_request("ada")).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    no = await limiter.take_request("ada")
    assert not no.allowed and not no.backend_error
    assert no.retry_after == pytest.approx(39.5) and no.limit == 3
    assert (await limiter.take_request("bob")).allowed  # users are separate
    clock.now += 39.0
    assert (await limiter.take_request("ada")).retry_after == pytest.approx(0.5)
    clock.now += 0.5  # the next minute
    assert (await limiter.take_request("ada")).allowed
    assert refused(metrics, "requests") == 3
    assert (await limiter.check_tokens("ada")).allowed  # the token budget is off


async def test_memory_tokens_budget() -> None:
    clock, metrics = Clock(), Metrics(process=False)
    limiter = MemoryRateLimiter(0, 1000, metrics=metrics, clock=clock)
    assert (await limiter.take_request("ada")).allowed  # the request budget is off
    assert (await limiter.check_tokens("ada")).allowed
    await limiter.add_tokens("ada", 600)
    assert (await limiter.check_tokens("ada")).allowed  # checking consumes nothing
    assert (await limiter.check_tokens("ada")).allowed
    await limiter.add_tokens("ada", 500)  # the turn that crosses the budget completes
    no = await limiter.check_tokens("ada")
    assert not no.allowed and no.retry_after == pytest.approx(39.5) and no.limit == 1000
    assert (await limiter.check_tokens("bob")).allowed
    clock.now += 40
    assert (await limiter.check_tokens("ada")).allowed
    assert refused(metrics, "tokens") == 1


async def test_memory_drops_old_windows() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(5, 100, clock=clock)
    for i in range(1000):
        await limiter.take_request(f"user-{i}")
        await limiter.add_tokens(f"user-{i}", 1)
    clock.now += 60
    await limiter.take_request("ada")
    assert len(limiter._requests) == 1 and len(limiter._tokens) == 0


def test_refusals_become_errors() -> None:
    raise_if_refused(Decision(True), "requests")
    raise_if_refused(Decision(True, backend_error=True), "requests")  # failed open
    with pytest.raises(ResourceExhausted) as exc:
        raise_if_refused(Decision(False, 12.2, limit=60), "requests")
    assert exc.value.reason == "RATE_LIMITED" and exc.value.retry_after == 12.2
    assert "60 requests per minute" in exc.value.message and "13s" in exc.value.message
    assert exc.value.metadata == {"kind": "requests", "limit": "60", "window": "60s"}
    with pytest.raises(ResourceExhausted) as exc:
        raise_if_refused(Decision(False, 3, limit=5000), "tokens")
    assert exc.value.reason == "TOKEN_LIMITED" and "5000 tokens per minute" in exc.value.message
    with pytest.raises(Unavailable) as unavailable:
        raise_if_refused(Decision(False, 1.0, backend_error=True), "requests")
    assert unavailable.value.reason == "RATE_LIMITER_UNAVAILABLE"
    assert unavailable.value.retry_after == 1.0


async def test_build_limiter() -> None:
    assert build_limiter(0, 0, False, "", True, None) is None
    assert build_limiter(0, 0, True, REDIS_URL, True, None) is None
    assert isinstance(build_limiter(10, 0, False, "", True, None), MemoryRateLimiter)
    shared = build_limiter(0, 10, True, REDIS_URL, False, Metrics(process=False))
    assert isinstance(shared, RedisRateLimiter) and not shared.fail_open
    await shared.aclose()


def test_redis_location_hides_credentials() -> None:
    assert redis_location("redis://:hunter2@cache.internal:6380/1") == "cache.internal:6380"
    assert redis_location("rediss://user:pw@cache") == "cache:6379"
    assert redis_location("unix:///run/redis.sock") == "/run/redis.sock"


# -- Redis ----------------------------------------------------------------------------


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    problem = ""
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        problem = str(exc)
    if problem:
        await client.aclose()
        pytest.fail(
            f"these tests need Redis at 127.0.0.1:6379 ({problem}); start it with: {START_REDIS}",
            pytrace=False,
        )
    prefix = f"byoktest:{uuid.uuid4().hex}"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def replicas(
    redis_prefix: str,
) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    made: list[RedisRateLimiter] = []

    def make(requests: int, tokens: int, clock: Clock, metrics: Metrics) -> RedisRateLimiter:
        # A generous Redis timeout: this tests the shared budget, not a slow Redis (a
        # busy 2-core CI machine can exceed the production 0.25 s and fail open).
        limiter = RedisRateLimiter(
            requests,
            tokens,
            url=REDIS_URL,
            metrics=metrics,
            prefix=redis_prefix,
            clock=clock,
            timeout=5.0,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def test_two_replicas_share_one_request_budget_exactly(
    replicas: Callable[..., RedisRateLimiter], redis_prefix: str
) -> None:
    clock, metrics = Clock(), Metrics(process=False)
    a, b = replicas(10, 0, clock, metrics), replicas(10, 0, clock, metrics)
    decisions = await asyncio.gather(
        *(a.take_request("ada") for _ in range(8)), *(b.take_request("ada") for _ in range(8))
    )
    assert sum(d.allowed for d in decisions) == 10
    assert all(d.retry_after == pytest.approx(39.5) for d in decisions if not d.allowed)
    assert not any(d.backend_error for d in decisions)
    assert refused(metrics, "requests") == 6
    # a bigger burst over the same minute still lets nothing else through
    more = await asyncio.gather(*(r.take_request("ada") for r in (a, b) for _ in range(25)))
    assert not any(d.allowed for d in more)
    assert (await b.take_request("bob")).allowed
    clock.now += 40  # the next minute
    decisions = await asyncio.gather(*(r.take_request("ada") for r in (a, b) for _ in range(6)))
    assert sum(d.allowed for d in decisions) == 10

    client = a.client
    window = int(T0 // 60)
    key = f"{redis_prefix}:req:ada:{window}"
    assert int(await client.get(key) or 0) >= 10
    assert 0 < await client.pttl(key) <= 120_000


async def test_two_replicas_share_one_token_budget(
    replicas: Callable[..., RedisRateLimiter], redis_prefix: str
) -> None:
    clock, metrics = Clock(), Metrics(process=False)
    a, b = replicas(0, 1000, clock, metrics), replicas(0, 1000, clock, metrics)
    assert (await a.take_request("ada")).allowed  # the request budget is off
    assert (await a.check_tokens("ada")).allowed
    await asyncio.gather(a.add_tokens("ada", 300), b.add_tokens("ada", 300))
    assert (await b.check_tokens("ada")).allowed  # 600 spent; checks consume nothing
    await b.add_tokens("ada", 450)
    for limiter in (a, b):
        no = await limiter.check_tokens("ada")
        assert not no.allowed and no.retry_after == pytest.approx(39.5) and no.limit == 1000
    assert (await a.check_tokens("bob")).allowed
    assert refused(metrics, "tokens") == 2
    key = f"{redis_prefix}:tok:ada:{int(T0 // 60)}"
    assert int(await a.client.get(key) or 0) == 1050
    assert 0 < await a.client.pttl(key) <= 120_000
    clock.now += 40
    assert (await a.check_tokens("ada")).allowed


async def test_default_keys_are_byok_rl_kind_user_window(redis_prefix: str) -> None:
    user = f"{redis_prefix.replace(':', '-')}-user"  # unique, so the keys are ours
    limiter = RedisRateLimiter(5, 5, url=REDIS_URL)
    try:
        window = int(time.time() // 60)
        await limiter.take_request(user)
        await limiter.add_tokens(user, 3)
        keys = {key.decode() async for key in limiter.client.scan_iter(match=f"byok:rl:*:{user}:*")}
        assert keys <= {
            f"byok:rl:{kind}:{user}:{w}" for kind in ("req", "tok") for w in (window, window + 1)
        }
        assert len(keys) == 2
    finally:
        keys_to_drop = [k async for k in limiter.client.scan_iter(match=f"byok:rl:*:{user}:*")]
        if keys_to_drop:
            await limiter.client.delete(*keys_to_drop)
        await limiter.aclose()


async def test_dead_redis_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="byok.server.ratelimit")
    metrics = Metrics(process=False)
    limiter = RedisRateLimiter(5, 5, url=DEAD_REDIS, metrics=metrics, fail_open=True)
    try:
        started = time.perf_counter()
        decisions = [await limiter.take_request("ada") for _ in range(20)]
        decisions.append(await limiter.check_tokens("ada"))
        await limiter.add_tokens("ada", 10)  # never raises
        elapsed = time.perf_counter() - started
    finally:
        await limiter.aclose()
    assert all(d.allowed and d.backend_error for d in decisions)
    assert elapsed < 2.0  # short timeouts, then the cooldown skips Redis
    assert backend_errors(metrics) == 22
    warnings = [r for r in caplog.records if r.name == "byok.server.ratelimit"]
    assert len(warnings) == 1
    assert "127.0.0.1:1" in warnings[0].getMessage()
    assert "RATE_LIMIT_FAIL_OPEN=true" in warnings[0].getMessage()


async def test_dead_redis_fails_closed_as_unavailable() -> None:
    metrics = Metrics(process=False)
    limiter = RedisRateLimiter(5, 5, url=DEAD_REDIS, metrics=metrics, fail_open=False)
    try:
        for decision in (await limiter.take_request("ada"), await limiter.check_tokens("ada")):
            assert not decision.allowed and decision.backend_error
            assert decision.retry_after > 0
            with pytest.raises(Unavailable):
                raise_if_refused(decision, "requests")
    finally:
        await limiter.aclose()
    assert backend_errors(metrics) == 2
    assert refused(metrics, "requests") == 0  # a backend failure is not a limit refusal


async def test_redis_coming_back_is_used_again(redis_prefix: str) -> None:
    metrics = Metrics(process=False)
    limiter = RedisRateLimiter(
        1, 0, url=REDIS_URL, metrics=metrics, prefix=redis_prefix, cooldown=0.05
    )
    try:
        limiter._down_until = time.monotonic() + 0.05  # as after a failure
        assert (await limiter.take_request("ada")).backend_error
        await asyncio.sleep(0.06)
        first, second = await limiter.take_request("ada"), await limiter.take_request("ada")
        assert first.allowed and not first.backend_error
        assert not second.allowed and not second.backend_error
    finally:
        await limiter.aclose()
