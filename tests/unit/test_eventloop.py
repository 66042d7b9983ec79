"""The server's event loop choice and the frozen start-up heap."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

from byok.server.eventloop import loop_factory


def test_auto_and_uvloop_pick_uvloop_and_asyncio_the_default_loop() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    factory = loop_factory("auto")
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(_loop_module()) == "uvloop"


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def test_freezing_leaves_later_objects_collectable() -> None:
    # In a child process: freezing is for the life of a process.
    code = (
        "import gc, byok.server.eventloop as e\n"
        "e.freeze_startup_heap()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.b, b.a = b, a\n"
        "del a, b\n"
        "print(frozen, gc.collect())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen, collected = (int(x) for x in out.stdout.split())
    assert frozen > 1000  # the modules and everything they made at import
    assert collected >= 2  # the cycle made after freezing was found and freed
