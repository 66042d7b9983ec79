"""Live figures per route, measured from this server's own traffic.

The chat engine calls `record_turn` once at the end of every turn (success or
failure); `ModelService` reads `snapshot`. Each route keeps a bounded ring buffer of
its most recent turns, and a snapshot looks at those within the window (the last
`window_seconds`, at most `max_turns` turns), so memory stays constant however busy
the server is. A lock makes it safe from worker threads as well as the event loop;
every operation under it is O(max_turns) at worst.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_MAX_TURNS = 200
MAX_ROUTES = 1024  # a guard: route keys come from configuration, so far fewer in practice


@dataclass(frozen=True)
class _Turn:
    at: float  # monotonic seconds
    latency_s: float
    ttft_s: float
    output_tokens: int
    error: bool


@dataclass(frozen=True)
class RouteStats:
    """A route's figures over the window; medians are None with no successful turn."""

    sample_count: int = 0
    p50_latency_s: float | None = None
    p50_ttft_s: float | None = None
    output_tokens_per_second: float = 0.0
    error_rate: float = 0.0
    window_seconds: float = DEFAULT_WINDOW_SECONDS


class LiveStats:
    def __init__(
        self,
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_turns: int = DEFAULT_MAX_TURNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_seconds <= 0 or max_turns < 1:
            raise ValueError("window_seconds must be positive and max_turns at least 1")
        self.window_seconds = window_seconds
        self.max_turns = max_turns
        self._clock = clock
        self._lock = threading.Lock()
        self._turns: dict[str, deque[_Turn]] = {}

    def record_turn(
        self,
        route_key: str,
        latency_s: float,
        ttft_s: float,
        output_tokens: int,
        error: bool,
    ) -> None:
        """One finished turn of `route_key` (case-insensitive). For a failed turn pass
        what is known (latency until the failure); only successes count for timings."""
        turn = _Turn(
            self._clock(),
            max(0.0, float(latency_s)),
            max(0.0, float(ttft_s)),
            max(0, int(output_tokens)),
            bool(error),
        )
        key = route_key.lower()
        with self._lock:
            turns = self._turns.get(key)
            if turns is None:
                if len(self._turns) >= MAX_ROUTES:
                    return
                turns = self._turns[key] = deque(maxlen=self.max_turns)
            turns.append(turn)

    def snapshot(self, route_key: str) -> RouteStats:
        since = self._clock() - self.window_seconds
        with self._lock:
            recent = [t for t in self._turns.get(route_key.lower(), ()) if t.at >= since]
        if not recent:
            return RouteStats(window_seconds=self.window_seconds)
        ok = [t for t in recent if not t.error]
        errors = len(recent) - len(ok)
        return RouteStats(
            sample_count=len(recent),
            p50_latency_s=statistics.median(t.latency_s for t in ok) if ok else None,
            p50_ttft_s=statistics.median(t.ttft_s for t in ok) if ok else None,
            output_tokens_per_second=_throughput(ok),
            error_rate=errors / len(recent),
            window_seconds=self.window_seconds,
        )


def _throughput(turns: list[_Turn]) -> float:
    """Output tokens over generation time (first token to last) of the successful
    turns, pooled so one tiny reply cannot dominate; the whole latency when the
    generation time is too short to measure."""
    tokens = sum(t.output_tokens for t in turns)
    if not tokens:
        return 0.0
    generating = sum(max(0.0, t.latency_s - t.ttft_s) for t in turns if t.output_tokens)
    if generating < 0.001:
        generating = sum(t.latency_s for t in turns if t.output_tokens)
    return tokens / generating if generating > 0 else 0.0
