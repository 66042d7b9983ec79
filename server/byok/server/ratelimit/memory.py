"""The in-process limiter (the default): one replica's view, fixed one-minute windows.

All state is for the current window only: when the minute changes the counters of
the previous one are dropped, so memory is bounded by the users active this minute.
The event loop runs one operation at a time and none awaits, so there is no race.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from byok.server.observability.metrics import Metrics
from byok.server.ratelimit.base import ALLOWED, Decision, window_of


class MemoryRateLimiter:
    """`requests_per_min` / `tokens_per_min` of 0 turn that budget off. `clock` is Unix
    time (tests pass their own)."""

    def __init__(
        self,
        requests_per_min: int,
        tokens_per_min: int,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.metrics = metrics
        self.clock = clock
        self._window = -1
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def _now(self) -> float:
        """Unix time, after dropping the counters of a window that has ended."""
        now = self.clock()
        window, _ = window_of(now)
        if window != self._window:
            self._window = window
            self._requests.clear()
            self._tokens.clear()
        return now

    async def take_request(self, user: str) -> Decision:
        if self.requests_per_min <= 0:
            return ALLOWED
        now = self._now()
        count = self._requests.get(user, 0)
        if count >= self.requests_per_min:
            if self.metrics is not None:
                self.metrics.ratelimit_refused("requests")
            return Decision(False, window_of(now)[1], limit=self.requests_per_min)
        self._requests[user] = count + 1
        return ALLOWED

    async def check_tokens(self, user: str) -> Decision:
        if self.tokens_per_min <= 0:
            return ALLOWED
        now = self._now()
        if self._tokens.get(user, 0) >= self.tokens_per_min:
            if self.metrics is not None:
                self.metrics.ratelimit_refused("tokens")
            return Decision(False, window_of(now)[1], limit=self.tokens_per_min)
        return ALLOWED

    async def add_tokens(self, user: str, tokens: int) -> None:
        if self.tokens_per_min <= 0 or tokens <= 0:
            return
        self._now()
        self._tokens[user] = self._tokens.get(user, 0) + tokens

    async def aclose(self) -> None:
        self._requests.clear()
        self._tokens.clear()
