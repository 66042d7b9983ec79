"""The server process's event loop, and the one-time tuning of a long-running process.

byok's server is one event loop carrying every stream: gRPC messages, the upstream
HTTP reads and the thread hops to SQLite are all loop callbacks, and at 32 streamed
turns in flight the loop is what saturates first. uvloop runs that machinery in C
(docs/adr/0008-uvloop-and-a-frozen-heap.md): with the frozen heap below, 6 % less
server CPU per turn at c=32 in the same run.
`BYOK_EVENT_LOOP=asyncio` keeps the standard loop (for debugging with asyncio's own
tools, or where uvloop does not build: it has no Windows support).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Callable

EVENT_LOOPS = ("auto", "uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> LoopFactory | None:
    """The loop factory for BYOK_EVENT_LOOP (`None`: asyncio's default loop).

    `auto` is uvloop where it is installed (a dependency wherever it builds), else
    asyncio; `uvloop` insists and raises RuntimeError when it is missing."""
    if choice == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise RuntimeError("BYOK_EVENT_LOOP=uvloop, but uvloop is not installed")
        return None
    import uvloop

    return uvloop.new_event_loop


def freeze_startup_heap() -> None:
    """Moves every object alive after start-up out of the collector's reach.

    What start-up builds (modules, the tokenizer's tables, the SDK's and grpc's objects,
    ~140,000 tracked objects) lives as long as the process; a full collection walked all
    of it, a 57 ms pause of the loop (every stream stalls) that came every several
    seconds under load; with the start-up heap frozen it is ~6 ms. Call once, after start-up and
    before serving; objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()
