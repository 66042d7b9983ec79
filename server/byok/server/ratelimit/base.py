"""Per-user rate limits: the interface, the decision, and how a refusal becomes an error.

Two budgets per user, each over fixed one-minute windows aligned to the Unix epoch
(12:00:00-12:00:59, ...), the same on every replica:
- requests: `take_request` counts one call and refuses once the minute's count passes
  RATE_LIMIT_PER_MIN;
- tokens: `check_tokens` refuses a new chat turn once the minute's charged tokens
  reached TOKEN_LIMIT_PER_MIN; `add_tokens` charges a finished turn (prompt +
  completion). The token budget is soft: the turn that crosses it completes.

A fixed window lets a client spend up to twice the limit across one window boundary;
it is exact, O(1) per user, and needs one counter per user and window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from byok.server.errors import ResourceExhausted, Unavailable

WINDOW_SECONDS = 60
Kind = Literal["requests", "tokens"]
# How long a caller is told to wait when the backend failed and the limiter fails closed.
BACKEND_RETRY_AFTER = 1.0


@dataclass(frozen=True)
class Decision:
    """`retry_after`: seconds until the window frees (0 when allowed). `backend_error`:
    the backend (Redis) failed; with `allowed` False the caller answers UNAVAILABLE."""

    allowed: bool
    retry_after: float = 0.0
    backend_error: bool = False
    limit: int = 0


ALLOWED = Decision(True)


class RateLimiter(Protocol):
    async def take_request(self, user: str) -> Decision:
        """Counts one request; refuses past the per-minute limit."""

    async def check_tokens(self, user: str) -> Decision:
        """Refuses when this minute's token budget is already spent (consumes nothing)."""

    async def add_tokens(self, user: str, tokens: int) -> None:
        """Charges a finished turn's tokens to this minute."""

    async def aclose(self) -> None: ...


def window_of(now: float) -> tuple[int, float]:
    """The window number for Unix time `now`, and seconds until it ends."""
    window = int(now // WINDOW_SECONDS)
    return window, (window + 1) * WINDOW_SECONDS - now


def raise_if_refused(decision: Decision, kind: Kind) -> None:
    """Raises the error a refused decision means: RESOURCE_EXHAUSTED with RetryInfo
    (REST 429 + Retry-After) for a spent budget, UNAVAILABLE when the backend failed
    and the limiter fails closed."""
    if decision.allowed:
        return
    if decision.backend_error:
        raise Unavailable(
            "the rate limiter cannot reach its backend and RATE_LIMIT_FAIL_OPEN is false; "
            "try again shortly",
            reason="RATE_LIMITER_UNAVAILABLE",
            retry_after=decision.retry_after or BACKEND_RETRY_AFTER,
        )
    wait = max(1, math.ceil(decision.retry_after))
    if kind == "requests":
        message = f"rate limit reached: {decision.limit} requests per minute; retry in {wait}s"
        reason = "RATE_LIMITED"
    else:
        message = f"token limit reached: {decision.limit} tokens per minute; retry in {wait}s"
        reason = "TOKEN_LIMITED"
    raise ResourceExhausted(
        message,
        reason=reason,
        metadata={"kind": kind, "limit": str(decision.limit), "window": f"{WINDOW_SECONDS}s"},
        retry_after=decision.retry_after,
    )
