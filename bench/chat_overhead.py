"""Chat overhead benchmark: a streamed turn through byok against the same upstream direct.

Run by hand (not part of the test suite):

    .venv/bin/python bench/chat_overhead.py [--turns 200,2000] [--concurrency 1,32]
        [--chunks 20] [--delay-ms 5] [--upstream node|python] [--json FILE] [--profile FILE]

Three processes: a scripted OpenAI-compatible upstream (`bench/upstream.mjs` on
node:http by default, `--upstream python` for this file's `--serve-upstream`, raw ASGI
on uvicorn; either way `chunks` content chunks due every `delay_ms` from the request,
OpenAI's chunk format, a usage chunk, `[DONE]`; node serves it for a fraction of
uvicorn's CPU, which leaves more of the machine to the processes measured), `byok-server
serve` (gRPC, persistence on, SQLite in a temp dir, routed to the upstream) and this
client. The client runs, interleaved, the same turn three ways: the openai SDK
`chat.completions.create(stream=True)` straight to the upstream, a raw httpx SSE client
straight to the upstream, and gRPC StreamChat through byok. At concurrency 1 the three
alternate turn by turn; at higher concurrency they alternate in blocks of `concurrency *
8` turns with `concurrency` turns in flight.

Figures: TTFT (request sent -> first non-empty text delta), total time (-> end of the
stream), the gaps between deltas, byok's added time (byok minus direct, p50/p99), byok
turns/s, and CPU seconds per turn of the byok server, the upstream and the client
(utime+stime from /proc/<pid>/stat; the client from time.process_time()). Each level
also prints the byok server's own view of its turns, means from its /metrics histograms
(storing the user message, upstream TTFT and duration, storing the reply, the RPC).

A follow-up phase (`--follow-up-threads`, c=1) continues conversations: threads of 5
turns, byok loading each thread and sending its stored history, the direct SDK call
sending the same messages itself; it reports the added TTFT of turns 2-5.

A last phase answers "lean SSE parser or the SDK's parsed stream?": client-side loops
against the upstream with no delay: the SDK's parsed stream, the SDK's `post()` with the
body read raw through the provider's lean parser on an httpx client and on the SDK's
aiohttp transport (what byok uses), and plain httpx + the lean parser; requests/s and
client CPU per request.

`--profile FILE` adds a run of the concurrency-32 byok load against a second byok
server running under cProfile and prints where its main thread's time goes.

`--baseline-tree DIR` runs a different comparison instead ("did this change pay?"):

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/chat_overhead.py --baseline-tree /tmp/base [--concurrency 1,32]

Two byok servers on one upstream, one on this checkout's code and one on DIR's (its
`server/` and `gen/python/` first on PYTHONPATH, same venv); byok turns alternate between
them in blocks, and it prints turns/s, server CPU per turn, TTFT and the ratios.

`--metrics-compare` runs a different comparison instead ("metrics always on, and cheap"):

    .venv/bin/python bench/chat_overhead.py --metrics-compare [--concurrency 1,8]
        [--turns 200,384] [--repeats 3] [--json FILE]

Two byok servers on the same upstream, one with default settings (metrics on) and one
with BYOK_METRICS=false (checked: /metrics answers 200 on one, 404 on the other). byok
streamed turns alternate between them, turn by turn at concurrency 1 (on, off, off, on,
...) and in blocks of concurrency * 2 turns above it; `--repeats` times per level. It
prints TTFT p50/p99 for each, the p50 difference in percent per repeat and pooled (with
a 95 % bootstrap interval and the spread of the repeats), byok server CPU per turn for
each, the machine's load, and PASS/MISS against TTFT p50 with metrics <= 3 % above
without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
SELF = Path(__file__).resolve()
API_KEY = "sk-bench-0123456789abcdef"
MODEL = "gpt-4o-mini"
ROUTE = "fast"
KINDS = ("sdk", "httpx", "byok")
LABELS = {"sdk": "openai SDK direct", "httpx": "httpx SSE direct", "byok": "byok (gRPC)"}
TARGETS = {"ttft_p50": 2.0, "ttft_p99": 5.0, "rate": 250.0, "gap_ms": 0.5, "bunched_pp": 2.0}
BARE_GRPC = "bare grpc.aio server (no byok code; prebuilt messages, same shape)"
BLOCK_PER_WORKER = 8  # turns each worker runs in one block at concurrency > 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
_SPEC = re.compile(r"chunks=(\d+)\s+delay_ms=([0-9.]+)")
_HARD = {"deadline": float("inf")}  # --max-seconds: no new turn starts after it


def out_of_time() -> bool:
    return time.monotonic() > _HARD["deadline"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[[Sequence[float], Sequence[float]], float],
    iterations: int = 2000,
    seed: int = 1,
) -> tuple[float, float]:
    """95 % interval of stat(a, b), resampling a and b (each with replacement)."""
    rng = random.Random(seed)
    values = [stat(rng.choices(a, k=len(a)), rng.choices(b, k=len(b))) for _ in range(iterations)]
    return pct(values, 2.5), pct(values, 97.5)


def p50_diff_pct(a: Sequence[float], b: Sequence[float]) -> float:
    """How much a's median is above b's, in percent of b's."""
    return 100 * (statistics.median(a) - statistics.median(b)) / statistics.median(b)


def machine_cpu() -> dict[str, float]:
    """The whole machine now: load average, and CPU seconds since boot from /proc/stat
    (busy = user+nice+system+irq+softirq; steal = taken by the hypervisor)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(x) / CLK_TCK for x in f.readline().split()[1:9]
        )
    busy = user + nice + system + irq + softirq
    return {
        "time": time.monotonic(),
        "loadavg1": os.getloadavg()[0],
        "busy": busy,
        "steal": steal,
        "total": busy + steal + idle + iowait,
    }


def machine_load(
    before: dict[str, float], after: dict[str, float], own_cpu: float
) -> dict[str, Any]:
    """How busy the machine was between two machine_cpu() snapshots, in cores, and how
    much of that was the benchmark's own processes (own_cpu seconds) vs other work."""
    wall = max(after["time"] - before["time"], 1e-9)
    busy = (after["busy"] - before["busy"]) / wall
    own = own_cpu / wall
    return {
        "seconds": wall,
        "cores": os.cpu_count(),
        "loadavg1_before": before["loadavg1"],
        "loadavg1_after": after["loadavg1"],
        "busy_cores": busy,
        "own_cores": own,
        "other_cores": max(busy - own, 0.0),
        "steal_cores": (after["steal"] - before["steal"]) / wall,
    }


def describe_load(m: dict[str, Any]) -> str:
    return (
        f"machine over {m['seconds']:.0f} s: {m['busy_cores']:.2f} of {m['cores']} cores busy "
        f"({m['own_cores']:.2f} this benchmark's processes, {m['other_cores']:.2f} other work), "
        f"steal {m['steal_cores']:.2f} cores ({100 * m['steal_cores'] / m['cores']:.0f}% of "
        f"the vCPUs' time went to other guests); load average {m['loadavg1_before']:.2f} before, "
        f"{m['loadavg1_after']:.2f} after"
        + (
            "; speed probe {:.0f} ms before, {:.0f} ms after".format(*m["speed_probe_ms"])
            if "speed_probe_ms" in m
            else ""
        )
    )


# -- the upstream (its own process) -----------------------------------------------------


async def paced(t0: float, index: int, delay_ms: float) -> None:
    """Waits until chunk `index` is due: `(index + 1) * delay_ms` after `t0` (loop time).

    As a model server emits tokens at its own pace, a process's event-loop lag under
    load delays a chunk but does not push every later chunk back by the same amount
    (sleeping `delay_ms` before each chunk made a 20-chunk reply 10-30 % longer at 32
    in flight, for the direct clients as much as for byok)."""
    if delay_ms:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, t0 + (index + 1) * delay_ms / 1000 - loop.time()))


def serve_upstream(port: int, chunks: int, delay_ms: float) -> None:
    """A minimal OpenAI-compatible streaming upstream: raw ASGI on uvicorn (h11).

    The last user message may say `chunks=N delay_ms=D` to override the defaults, so
    byok (which forwards only the messages) and the direct clients get the same script.
    """
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        n, delay = chunks, delay_ms
        last = next(
            (m for m in reversed(request.get("messages", [])) if m.get("role") == "user"), None
        )
        spec = _SPEC.search(str(last.get("content", ""))) if last else None
        if spec:
            n, delay = int(spec.group(1)), float(spec.group(2))
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        head = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(request.get("model", "")),
            "system_fingerprint": None,
        }

        def event(choices: list[Any], use: Any = None) -> bytes:
            chunk = {**head, "choices": choices}
            if usage:
                chunk["usage"] = use
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        def choice(delta: dict[str, str], finish: str | None = None) -> list[Any]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        more = {"type": "http.response.body", "more_body": True}
        await send({**more, "body": event(choice({"role": "assistant", "content": ""}))})
        t0 = asyncio.get_running_loop().time()
        for i in range(n):
            await paced(t0, i, delay)
            await send({**more, "body": event(choice({"content": f" tok{i}"}))})
        await send({**more, "body": event(choice({}, "stop"))})
        if usage:
            use = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
            await send({**more, "body": event([], use)})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )
    uvicorn.Server(config).run()


# -- byok under cProfile (its own process) ----------------------------------------------


def serve_byok_profiled(out: str) -> None:
    """`byok-server serve` in-process; SIGUSR1 starts cProfile, SIGUSR2 writes `out`.

    Only the main thread (the event loop: gRPC handlers, engine, provider) is profiled;
    SQLite statements run in aiosqlite's threads.
    """
    from byok.server.app import App
    from byok.server.config import load_settings

    profiler = cProfile.Profile()

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    asyncio.run(App(load_settings()).serve_until_signal())


def serve_grpc_only(port: int) -> None:
    """byok's gRPC server and ChatServicer over a fake engine: no store, no upstream.

    The fake engine yields byok's events (started, `chunks` deltas `delay_ms` apart,
    usage, done) as the content asks, so this process's CPU per turn is what gRPC,
    the servicer and protobuf cost on their own.
    """
    from byok.server.chat.engine import ChatTurn, Delta, Done, Started, UsageReport
    from byok.server.conversations.model import Conversation, Message, Role, Usage
    from byok.server.ids import new_id
    from byok.server.models.routing import Route
    from byok.server.rpc.server import build_grpc_server
    from byok.server.services import binding
    from byok.server.services.chat import ChatServicer
    from byok.v1 import chat_pb2, chat_pb2_grpc

    route = Route("FAST", "openai", MODEL)

    class FakeEngine:
        async def stream(self, turn: ChatTurn) -> AsyncIterator[object]:
            conv = Conversation(id=new_id(), title=turn.content[:60])
            user = Message(id=new_id(), conversation_id=conv.id, role=Role.USER, content="")
            yield Started(conv, True, user, route)
            spec = _SPEC.search(turn.content)
            n, delay = (int(spec.group(1)), float(spec.group(2))) if spec else (20, 5.0)
            t0 = asyncio.get_running_loop().time()
            for i in range(n):
                await paced(t0, i, delay)
                yield Delta(f" tok{i}")
            yield UsageReport(12, n)
            reply = Message(
                id=new_id(),
                conversation_id=conv.id,
                role=Role.ASSISTANT,
                content="",
                usage=Usage(12, n),
                latency_us=100_000,
                ttft_us=5_000,
                finish_reason="stop",
            )
            yield Done(reply)

    async def run() -> None:
        servicer = ChatServicer(FakeEngine())  # type: ignore[arg-type]
        grpc_server = build_grpc_server(
            [binding(chat_pb2, chat_pb2_grpc, "ChatService", servicer)], f"127.0.0.1:{port}"
        )
        await grpc_server.server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await grpc_server.server.stop(1.0)

    asyncio.run(run())


def serve_grpc_bare(port: int) -> None:
    """A bare grpc.aio server: no interceptor, no byok code; its StreamChat sleeps and
    yields the same messages (started, deltas, usage, done) built in advance. Its CPU per
    turn is grpc.aio's own floor for one streamed turn of this shape."""
    import grpc

    from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2

    started = chat_pb2.StreamChatResponse(
        sequence=1, started=chat_pb2.ChatStarted(conversation="conversations/bare")
    )
    done = chat_pb2.StreamChatResponse(done=chat_pb2.ChatDone(message="bare", finish_reason="stop"))
    usage = chat_pb2.StreamChatResponse(usage=common_pb2.TokenUsage(prompt_tokens=12))

    class Bare(chat_pb2_grpc.ChatServiceServicer):
        async def StreamChat(
            self, request: chat_pb2.ChatRequest, context: object
        ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
            spec = _SPEC.search(request.content)
            n, delay = (int(spec.group(1)), float(spec.group(2))) if spec else (20, 5.0)
            yield started
            t0 = asyncio.get_running_loop().time()
            for i in range(n):
                await paced(t0, i, delay)
                yield chat_pb2.StreamChatResponse(delta=chat_pb2.ChatDelta(text=f" tok{i}"))
            yield usage
            yield done

    async def run() -> None:
        server = grpc.aio.server()
        chat_pb2_grpc.add_ChatServiceServicer_to_server(Bare(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1.0)

    asyncio.run(run())


def wait_port(child: Child, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not listen:\n{child.tail()}")


# -- processes --------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    http_url: str = ""  # byok servers: the REST/probe base URL

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


def start_child(name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Child:
    log_path = cwd / f"{name}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    return Child(name, proc, log_path)


def wait_ready(child: Child, url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not become ready:\n{child.tail()}")


def clean_env() -> dict[str, str]:
    prefixes = ("BYOK_", "MODEL_ROUTE_", "PROVIDER_", "OPENAI_", "DEFAULT_MODEL_ROUTE")
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(prefixes)}


def start_upstream(
    work: Path, chunks: int, delay_ms: float, kind: str = "node"
) -> tuple[Child, str]:
    """The scripted upstream: `node` (bench/upstream.mjs on node:http, the default) or
    `python` (`serve_upstream`, uvicorn), the same script either way."""
    port = free_port()
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise SystemExit("--upstream node needs Node.js on PATH (or use --upstream python)")
        argv = [node, str(SELF.parent / "upstream.mjs"), str(port), str(chunks), str(delay_ms)]
    else:
        argv = [sys.executable, str(SELF), "--serve-upstream", str(port)]
        argv += ["--chunks", str(chunks), "--delay-ms", str(delay_ms)]
    child = start_child("upstream", argv, clean_env(), work)
    wait_ready(child, f"http://127.0.0.1:{port}/health")
    return child, f"http://127.0.0.1:{port}/v1"


def start_byok(
    work: Path,
    name: str,
    base_url: str,
    profile: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Child, str]:
    grpc_port, http_port = free_port(), free_port()
    data = work / f"{name}-data"
    data.mkdir()
    env = clean_env()
    env.update(
        BYOK_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        BYOK_HTTP_ADDR=f"127.0.0.1:{http_port}",
        BYOK_DATA_DIR=str(data),
        MODEL_ROUTE_FAST=f"openai/{MODEL}",
        DEFAULT_MODEL_ROUTE="FAST",
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=base_url,
        # Every turn is the local user's; the default cap (16 open streams a user)
        # would refuse most of the c=32 load.
        MAX_STREAMS_PER_USER="0",
    )
    env.update(extra_env or {})
    if profile:
        argv = [sys.executable, str(SELF), "--serve-byok-profiled", profile]
    else:
        argv = [str(BIN / "byok-server"), "serve"]
    child = start_child(name, argv, env, work)  # cwd = temp dir: no developer .env
    child.http_url = f"http://127.0.0.1:{http_port}"
    wait_ready(child, f"{child.http_url}/readyz")
    return child, f"127.0.0.1:{grpc_port}"


# -- the three clients ------------------------------------------------------------------


@dataclass
class Turn:
    """One streamed turn. `deltas` holds one arrival time per *token* of the script
    (` tok<i>`), so a message that carries several tokens (byok coalesces what one
    upstream read brings) counts each token at the time it arrived; `messages` is how
    many text messages the client received."""

    kind: str
    start: float
    deltas: list[float]
    end: float
    text: str
    server_ttft: float | None = None  # byok's own TTFT (from its Done event), seconds
    conversation: str = ""  # byok turns: the conversation the turn went to
    messages: int = 0

    @property
    def ttft(self) -> float:
        return self.deltas[0] - self.start

    @property
    def total(self) -> float:
        return self.end - self.start

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.deltas, self.deltas[1:], strict=False)]


def arrived(deltas: list[float], text: str, at: float) -> None:
    """Records `at` once for each scripted token in `text`."""
    deltas.extend([at] * max(text.count(" tok"), 1))


def expected_text(chunks: int) -> str:
    return "".join(f" tok{i}" for i in range(chunks))


async def lean_sse(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The provider's lean SSE parser (openai_compat.py), yielding each text delta."""
    buffer = b""
    data: list[bytes] = []
    async for piece in body:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
                continue
            if line or not data:
                continue
            payload = b"\n".join(data)
            data.clear()
            if payload.strip() == b"[DONE]":
                return
            chunk = json.loads(payload)
            choices = chunk.get("choices")
            if choices and isinstance(choices, list) and isinstance(choices[0], dict):
                delta = choices[0].get("delta")
                if isinstance(delta, dict):
                    text = delta.get("content")
                    if text and isinstance(text, str):
                        yield text


@dataclass
class Clients:
    base_url: str
    grpc_target: str
    sdk: Any = None
    sdk_httpx: Any = None  # the SDK on an httpx client, as byok's provider was
    sdk_aiohttp: Any = None  # the SDK on its aiohttp transport, as byok's provider is
    http: Any = None
    channel: Any = None
    stub: Any = None

    async def __aenter__(self) -> Clients:
        import grpc
        import httpx
        import openai

        from byok.v1 import chat_pb2_grpc

        self.sdk = openai.AsyncOpenAI(api_key=API_KEY, base_url=self.base_url, timeout=60)
        self.http = httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        )
        self.sdk_httpx = openai.AsyncOpenAI(
            api_key=API_KEY, base_url=self.base_url, timeout=60, http_client=self.http
        )
        self.sdk_aiohttp = openai.AsyncOpenAI(
            api_key=API_KEY,
            base_url=self.base_url,
            timeout=60,
            http_client=openai.DefaultAioHttpClient(timeout=60),
        )
        self.channel = grpc.aio.insecure_channel(self.grpc_target)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sdk.close()
        await self.sdk_aiohttp.close()
        await self.http.aclose()
        await self.channel.close()

    def messages(self, content: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": content}]

    async def turn_sdk(self, content: str, history: Sequence[dict[str, str]] = ()) -> Turn:
        deltas: list[float] = []
        parts: list[str] = []
        start = time.perf_counter()
        stream = await self.sdk.chat.completions.create(
            model=MODEL,
            messages=[*history, *self.messages(content)],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text = chunk.choices[0].delta.content
                arrived(deltas, text, time.perf_counter())
                parts.append(text)
        return Turn("sdk", start, deltas, time.perf_counter(), "".join(parts), messages=len(parts))

    async def turn_httpx(self, content: str) -> Turn:
        deltas: list[float] = []
        parts: list[str] = []
        body = {
            "model": MODEL,
            "messages": self.messages(content),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        async with self.http.stream(
            "POST",
            f"{self.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            response.raise_for_status()
            async for text in lean_sse(response.aiter_bytes()):
                arrived(deltas, text, time.perf_counter())
                parts.append(text)
        return Turn(
            "httpx", start, deltas, time.perf_counter(), "".join(parts), messages=len(parts)
        )

    async def turn_byok(self, content: str, conversation: str = "") -> Turn:
        from byok.v1 import chat_pb2

        deltas: list[float] = []
        parts: list[str] = []
        server_ttft = None
        start = time.perf_counter()
        call = self.stub.StreamChat(
            chat_pb2.ChatRequest(content=content, model_key=ROUTE, conversation=conversation),
            timeout=60,
        )
        async for event in call:
            if event.HasField("delta"):
                arrived(deltas, event.delta.text, time.perf_counter())
                parts.append(event.delta.text)
            elif event.HasField("started"):
                conversation = event.started.conversation
            elif event.HasField("done"):
                server_ttft = event.done.time_to_first_token.ToNanoseconds() / 1e9
        end = time.perf_counter()
        return Turn(
            "byok", start, deltas, end, "".join(parts), server_ttft, conversation, len(parts)
        )

    # the parser comparison: no timing per delta, only the loop

    async def loop_sdk_parsed(self, content: str) -> int:
        stream = await self.sdk_httpx.chat.completions.create(
            model=MODEL,
            messages=self.messages(content),
            stream=True,
            stream_options={"include_usage": True},
        )
        n = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        return n

    async def _loop_sdk_lean(self, sdk: Any, response_type: Any, content: str) -> int:
        """What byok's provider does: the SDK's `post()` for the request, the body read
        raw through the lean parser."""
        response = await sdk.post(
            "/chat/completions",
            cast_to=response_type,
            body={
                "model": MODEL,
                "messages": self.messages(content),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            stream=True,
            stream_cls=None,
        )
        n = 0
        try:
            body = response.aiter_bytes()
            async for _text in lean_sse(body):
                n += 1
            async for _rest in body:  # to the end, so the connection is reused
                pass
        finally:
            await response.aclose()
        return n

    async def loop_sdk_lean(self, content: str) -> int:
        import httpx

        return await self._loop_sdk_lean(self.sdk_httpx, httpx.Response, content)

    async def loop_sdk_aiohttp_lean(self, content: str) -> int:
        import httpx2

        return await self._loop_sdk_lean(self.sdk_aiohttp, httpx2.Response, content)

    async def loop_httpx_lean(self, content: str) -> int:
        n = 0
        body = {
            "model": MODEL,
            "messages": self.messages(content),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self.http.stream(
            "POST",
            f"{self.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            async for _text in lean_sse(response.aiter_bytes()):
                n += 1
        return n

    def turn(self, kind: str) -> Callable[[str], Awaitable[Turn]]:
        return {"sdk": self.turn_sdk, "httpx": self.turn_httpx, "byok": self.turn_byok}[kind]


# -- measurement ------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds spent by each process while one kind of turn ran."""

    server: float = 0.0
    upstream: float = 0.0
    client: float = 0.0
    wall: float = 0.0
    turns: int = 0


@dataclass
class Level:
    concurrency: int
    turns: dict[str, list[Turn]] = field(default_factory=lambda: {k: [] for k in KINDS})
    cpu: dict[str, Cpu] = field(default_factory=lambda: {k: Cpu() for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    stopped_early: bool = False
    load: dict[str, Any] = field(default_factory=dict)  # machine_load() over the measured turns
    server_phases: dict[str, float] = field(default_factory=dict)  # mean ms, from /metrics


# Where a byok turn's time goes, as the server's own histograms see it (means over the
# level's byok turns, from the difference of /metrics before and after the level).
PHASES = (
    (
        "store the thread + user message",
        "byok_db_query_duration_seconds",
        'operation="create_conversation_with_messages"',
    ),
    ("upstream request -> first token", "byok_llm_time_to_first_token_seconds", ""),
    ("upstream request -> last byte", "byok_llm_duration_seconds", ""),
    ("store the reply", "byok_db_query_duration_seconds", 'operation="append_messages"'),
    ("byok's time around the upstream call", "byok_gateway_overhead_seconds", ""),
    ("StreamChat as the server sees it", "grpc_server_handling_seconds", "StreamChat"),
)


def histogram_totals(http_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) per PHASES entry, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{http_url}/metrics", timeout=10).text
    totals = dict.fromkeys((label for label, _, _ in PHASES), (0.0, 0.0))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, part = sample.name.rpartition("_")[::2]
            if part not in ("sum", "count"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            for label, metric, selector in PHASES:
                if name == metric and selector in labels:
                    total, count = totals[label]
                    if part == "sum":
                        totals[label] = (total + sample.value, count)
                    else:
                        totals[label] = (total, count + sample.value)
    return totals


def phase_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    means = {}
    for label in after:
        total = after[label][0] - before[label][0]
        count = after[label][1] - before[label][1]
        if count > 0:
            means[label] = ms(total / count)
    return means


class Meter:
    def __init__(self, server: Child, upstream: Child):
        self.server = server
        self.upstream = upstream

    def read(self) -> tuple[float, float, float, float]:
        return (
            self.server.cpu(),
            self.upstream.cpu(),
            time.process_time(),
            time.perf_counter(),
        )

    @staticmethod
    def add(cpu: Cpu, before: tuple[float, ...], after: tuple[float, ...], turns: int) -> None:
        cpu.server += after[0] - before[0]
        cpu.upstream += after[1] - before[1]
        cpu.client += after[2] - before[2]
        cpu.wall += after[3] - before[3]
        cpu.turns += turns


def content_for(index: int, chunks: int, delay_ms: float) -> str:
    return f"Benchmark turn {index}: chunks={chunks} delay_ms={delay_ms:g}"


async def run_block(
    clients: Clients, kind: str, n: int, concurrency: int, chunks: int, delay_ms: float
) -> tuple[list[Turn], int]:
    """n turns of one kind with `concurrency` in flight; returns the turns and errors."""
    turn = clients.turn(kind)
    results: list[Turn] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < n and not out_of_time():
            index = next_index
            next_index += 1
            try:
                t = await turn(content_for(index, chunks, delay_ms))
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    log(f"  {kind} turn failed: {type(exc).__name__}: {exc}")
                continue
            if t.text != expected_text(chunks):
                errors += 1
                if errors <= 3:
                    log(f"  {kind} turn got {t.text[:80]!r}, not the {chunks} scripted tokens")
                continue
            results.append(t)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return results, errors


async def measure_level(
    clients: Clients,
    meter: Meter,
    concurrency: int,
    turns: int,
    chunks: int,
    delay_ms: float,
    deadline: float,
) -> Level:
    level = Level(concurrency)
    block = 1 if concurrency == 1 else concurrency * BLOCK_PER_WORKER
    warm = 20 if concurrency == 1 else 1
    log(f"concurrency {concurrency}: warm-up")
    for _ in range(warm):
        for kind in KINDS:
            await run_block(clients, kind, block, concurrency, chunks, delay_ms)
    log(f"concurrency {concurrency}: {turns} turns of each kind, blocks of {block}")
    rounds = 0
    probe_before = speed_probe()
    machine_before = machine_cpu()
    histograms_before = await asyncio.to_thread(histogram_totals, meter.server.http_url)
    while len(level.turns["byok"]) < turns:
        if time.monotonic() > deadline:
            level.stopped_early = True
            log(f"  time budget reached after {rounds} rounds")
            break
        n = min(block, turns - len(level.turns["byok"]))
        order = KINDS if rounds % 2 == 0 else KINDS[::-1]  # no kind always goes first
        for kind in order:
            before = meter.read()
            done, errors = await run_block(clients, kind, n, concurrency, chunks, delay_ms)
            meter.add(level.cpu[kind], before, meter.read(), len(done))
            level.turns[kind].extend(done)
            level.errors[kind] += errors
        rounds += 1
        if concurrency > 1 or rounds % 50 == 0:
            log(f"  {len(level.turns['byok'])}/{turns}")
    own = sum(c.server + c.upstream + c.client for c in level.cpu.values())
    level.load = machine_load(machine_before, machine_cpu(), own)
    level.load["speed_probe_ms"] = [probe_before, speed_probe()]
    histograms_after = await asyncio.to_thread(histogram_totals, meter.server.http_url)
    level.server_phases = phase_means(histograms_before, histograms_after)
    return level


async def measure_follow_ups(
    clients: Clients, threads: int, per_thread: int, chunks: int, delay_ms: float
) -> dict[str, Any]:
    """Follow-up turns at c=1: threads of `per_thread` turns. byok continues its
    conversation (the server loads the thread and sends the stored history); the direct
    SDK call sends the same messages itself. Turns alternate, the order flipping each
    turn; the first turn of each thread (a new conversation) is left out of the figures."""
    sdk: list[Turn] = []
    byok: list[Turn] = []
    for t in range(threads):
        if out_of_time():
            break
        history: list[dict[str, str]] = []
        conversation = ""
        for j in range(per_thread):
            content = content_for(t * per_thread + j, chunks, delay_ms)
            if (t + j) % 2 == 0:
                d = await clients.turn_sdk(content, history)
                v = await clients.turn_byok(content, conversation)
            else:
                v = await clients.turn_byok(content, conversation)
                d = await clients.turn_sdk(content, history)
            if d.text != v.text:
                raise RuntimeError("byok and the direct call got different replies")
            conversation = v.conversation
            history += [
                {"role": "user", "content": content},
                {"role": "assistant", "content": d.text},
            ]
            if j:
                sdk.append(d)
                byok.append(v)
    ttft = {k: [ms(x.ttft) for x in turns] for k, turns in (("sdk", sdk), ("byok", byok))}
    paired = [ms(v.ttft - d.ttft) for d, v in zip(sdk, byok, strict=True)]
    return {
        "turns": len(byok),
        "per_thread": per_thread,
        **{f"{k}_ttft_p50": pct(v, 50) for k, v in ttft.items()},
        **{f"{k}_ttft_p99": pct(v, 99) for k, v in ttft.items()},
        "added_ttft_p50": pct(ttft["byok"], 50) - pct(ttft["sdk"], 50),
        "added_ttft_p99": pct(ttft["byok"], 99) - pct(ttft["sdk"], 99),
        "paired_added_ttft_p50": pct(paired, 50),
    }


def print_follow_ups(r: dict[str, Any]) -> None:
    print(
        f"\n## follow-up turns, c=1 ({r['turns']} turns, threads of {r['per_thread']}; "
        "the direct call sends the same history itself)"
    )
    print(
        f"TTFT p50 / p99 (ms): openai SDK direct {r['sdk_ttft_p50']:.2f} / "
        f"{r['sdk_ttft_p99']:.2f}, byok {r['byok_ttft_p50']:.2f} / {r['byok_ttft_p99']:.2f}; "
        f"added {r['added_ttft_p50']:+.2f} / {r['added_ttft_p99']:+.2f} "
        f"(paired p50 {r['paired_added_ttft_p50']:+.2f})"
    )


@dataclass
class ParserResult:
    name: str
    requests: int
    wall: float
    client_cpu: float
    upstream_cpu: float


async def measure_parsers(
    clients: Clients, upstream: Child, requests: int, concurrency: int, chunks: int
) -> list[ParserResult]:
    loops = {
        "SDK parsed stream (create(stream=True))": clients.loop_sdk_parsed,
        "SDK post() on httpx + lean parser": clients.loop_sdk_lean,
        "SDK post() on aiohttp + lean parser (byok)": clients.loop_sdk_aiohttp_lean,
        "httpx + lean parser (no SDK)": clients.loop_httpx_lean,
    }
    content = content_for(0, chunks, 0)
    results = {name: ParserResult(name, 0, 0.0, 0.0, 0.0) for name in loops}

    async def run(loop: Callable[[str], Awaitable[int]], n: int) -> int:
        remaining = n
        done = 0

        async def worker() -> None:
            nonlocal remaining, done
            while remaining > 0 and not out_of_time():
                remaining -= 1
                got = await loop(content)
                if got != chunks:
                    raise RuntimeError(f"parser loop got {got} deltas, expected {chunks}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    for loop in loops.values():  # warm-up
        await run(loop, concurrency * 10)
    block = max(concurrency * 25, 50)
    for i in range(max(1, requests // block)):
        if i and out_of_time():
            break
        items = list(loops.items())
        for name, loop in items if i % 2 == 0 else items[::-1]:
            r = results[name]
            u0, c0, w0 = upstream.cpu(), time.process_time(), time.perf_counter()
            r.requests += await run(loop, block)
            r.wall += time.perf_counter() - w0
            r.client_cpu += time.process_time() - c0
            r.upstream_cpu += upstream.cpu() - u0
    return list(results.values())


# -- profile ----------------------------------------------------------------------------


def _group(filename: str, func: str) -> str:
    """Where a profiled function lives: a package, a byok module, or a C built-in."""
    if filename == "~":
        if func.startswith("<method 'run' of '_contextvars.Context'"):
            return "loop callbacks' own time (C/Cython: grpc aio, h11 not)"
        if "epoll" in func:
            return "epoll (waiting, and waking up)"
        return "C built-ins: " + re.sub(r"<(built-in )?(method )?'?([\w.]+)'?.*", r"\3", func)
    path = filename.replace(os.sep, "/")
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        return package.removesuffix(".py")
    if "/byok/" in path:
        parts = path.split("/byok/", 1)[1].removesuffix(".py").split("/")
        return "byok." + ".".join(parts[:3])
    if "/python3" in path:
        rest = path.split("/python3", 1)[1].split("/", 2)[-1]
        return "stdlib " + rest.split("/", 1)[0].removesuffix(".py")
    return path


def profile_report(path: str, turns: int, top: int = 25) -> dict[str, Any]:
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        name = _group(filename, func)
        groups[name] = groups.get(name, 0.0) + tt
        total += tt

    def label(f: str, line: int, func: str) -> str:
        return func if f == "~" else f"{_group(f, func)}:{Path(f).name}:{line}({func})"

    by_own = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
    return {
        "turns": turns,
        "main_thread_ms_per_turn": total * 1000 / turns,
        "groups_ms_per_turn": {
            k: v * 1000 / turns for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "top_own_time": [
            {
                "function": label(*key),
                "own_ms_per_turn": tt * 1000 / turns,
                "calls_per_turn": nc / turns,
            }
            for key, (_cc, nc, tt, _ct, _callers) in by_own
        ],
        "top_cumulative": [
            {"function": label(*key), "cum_ms_per_turn": ct * 1000 / turns}
            for key, (_cc, _nc, _tt, ct, _callers) in by_cum
            if any(k in key[0] for k in ("/byok/", "openai/", "aiosqlite", "httpx"))
        ][:top],
    }


def wait_for_file(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)


async def profile_run(
    work: Path, base_url: str, out: str, turns: int, concurrency: int, chunks: int, delay: float
) -> dict[str, Any]:
    server, target = start_byok(work, "byok-profiled", base_url, profile=out)
    try:
        async with Clients(base_url, target) as clients:
            await run_block(clients, "byok", concurrency * 4, concurrency, chunks, delay)
            server.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
            c0, w0 = server.cpu(), time.perf_counter()
            done, _errors = await run_block(clients, "byok", turns, concurrency, chunks, delay)
            cpu, wall = server.cpu() - c0, time.perf_counter() - w0
            server.proc.send_signal(signal.SIGUSR2)
            await asyncio.to_thread(wait_for_file, out, 60.0)
            await asyncio.sleep(1.0)  # dump_stats finishing
    finally:
        server.stop(timeout=60)
    n = max(len(done), 1)
    report = profile_report(out, n)
    report.update(rate=len(done) / wall, server_cpu_ms_per_turn=cpu * 1000 / n)
    return report


# -- components, in-process -------------------------------------------------------------


async def grpc_only(
    work: Path, base_url: str, turns: int, concurrency: int, chunks: int, delay_ms: float
) -> dict[str, dict[str, float]]:
    """gRPC + servicer + protobuf alone (fake engine): CPU per turn, and TTFT at c=1; then
    a bare grpc.aio server (grpc's own floor) and the Python client's CPU per turn."""
    port = free_port()
    argv = [sys.executable, str(SELF), "--serve-grpc-only", str(port)]
    child = start_child("grpc-only", argv, clean_env(), work)
    result: dict[str, dict[str, float]] = {}
    try:
        await asyncio.to_thread(wait_port, child, port)
        async with Clients(base_url, f"127.0.0.1:{port}") as clients:
            for _ in range(20):
                await clients.turn_byok(content_for(0, chunks, delay_ms))
            ttft = []
            for i in range(max(turns // 5, 50)):
                t = await clients.turn_byok(content_for(i, chunks, delay_ms))
                ttft.append(ms(t.ttft))
            result[f"gRPC alone, c=1: TTFT (wall ms; includes the {delay_ms:g} ms delay)"] = {
                "p50_ms": pct(ttft, 50),
                "p99_ms": pct(ttft, 99),
            }
            await run_block(clients, "byok", concurrency * 2, concurrency, chunks, delay_ms)
            c0, w0 = child.cpu(), time.perf_counter()
            done, _ = await run_block(clients, "byok", turns, concurrency, chunks, delay_ms)
            wall = time.perf_counter() - w0
            result["gRPC server + ChatServicer + protobuf alone (fake engine)"] = {
                "cpu_ms_per_turn": ms(child.cpu() - c0) / max(len(done), 1),
                "turns_per_s": len(done) / wall,
                "upstream_cpu_ms_per_turn": 0.0,
            }
    finally:
        child.stop()
    port = free_port()
    argv = [sys.executable, str(SELF), "--serve-grpc-bare", str(port)]
    child = start_child("grpc-bare", argv, clean_env(), work)
    try:
        await asyncio.to_thread(wait_port, child, port)
        async with Clients(base_url, f"127.0.0.1:{port}") as clients:
            await run_block(clients, "byok", concurrency * 2, concurrency, chunks, delay_ms)
            c0, p0, w0 = child.cpu(), time.process_time(), time.perf_counter()
            done, _ = await run_block(clients, "byok", turns, concurrency, chunks, delay_ms)
            wall = time.perf_counter() - w0
            n = max(len(done), 1)
            result[BARE_GRPC] = {
                "cpu_ms_per_turn": ms(child.cpu() - c0) / n,
                "turns_per_s": len(done) / wall,
                "upstream_cpu_ms_per_turn": 0.0,
            }
            result["the Python gRPC client of those turns (this process)"] = {
                "cpu_ms_per_turn": ms(time.process_time() - p0) / n,
                "turns_per_s": len(done) / wall,
                "upstream_cpu_ms_per_turn": 0.0,
            }
    finally:
        child.stop()
    return result


async def breakdown(
    work: Path,
    base_url: str,
    upstream: Child,
    turns: int,
    concurrency: int,
    chunks: int,
    delay_ms: float,
) -> dict[str, dict[str, float]]:
    """CPU per turn of byok's parts run in this process (no gRPC): the store writes of a
    turn, the provider's stream, and the whole engine turn (store + provider + engine)."""
    from byok.server.chat import tokens
    from byok.server.chat.engine import ChatEngine, ChatTurn
    from byok.server.config import load_routing
    from byok.server.conversations.model import Message, Role, Usage
    from byok.server.conversations.service import Conversations
    from byok.server.ids import new_id
    from byok.server.models.routing import RouteTable
    from byok.server.providers.base import ChatMessage, SamplingParams
    from byok.server.providers.registry import build_providers, close_all
    from byok.server.storage.base import DEFAULT_USER_ID as USER
    from byok.server.storage.sqlite import SqliteStore

    routing = load_routing(
        {
            "MODEL_ROUTE_FAST": f"openai/{MODEL}",
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": base_url,
        }
    )
    store = await SqliteStore.open(work / "breakdown-data" / "byok.db")
    providers = build_providers(routing, None)
    provider = providers["openai"]
    conversations = Conversations(store)
    engine = ChatEngine(
        conversations,
        RouteTable(routing),
        providers,
        {name: p.api_key for name, p in routing.providers.items()},
    )
    await asyncio.to_thread(tokens.load_encoding)

    async def store_turn(i: int) -> None:
        content = content_for(i, chunks, delay_ms)
        conv = await conversations.create(USER, title=content[:60])
        await conversations.append(
            USER,
            conv.name,
            Message(id="", conversation_id=conv.id, role=Role.USER, content=content),
        )
        reply = Message(
            id=new_id(),
            conversation_id=conv.id,
            role=Role.ASSISTANT,
            content="".join(f" tok{k}" for k in range(chunks)),
            model=MODEL,
            route="FAST",
            usage=Usage(12, chunks),
            latency_us=100_000,
            ttft_us=5_000,
            finish_reason="stop",
        )
        await store.append_messages(USER, conv.id, [reply])

    async def provider_turn(i: int) -> None:
        messages = [ChatMessage("user", content_for(i, chunks, delay_ms))]
        async for _event in provider.stream(MODEL, messages, SamplingParams()):
            pass

    async def engine_turn(i: int) -> None:
        turn = ChatTurn(user_id=USER, content=content_for(i, chunks, delay_ms), model_key=ROUTE)
        async for _event in engine.stream(turn):
            pass

    parts = {
        "store: 3 write transactions (create, user message, reply)": store_turn,
        "provider: SDK request + stream + lean parse": provider_turn,
        "engine turn in-process (store + provider + engine, no gRPC)": engine_turn,
    }
    result: dict[str, dict[str, float]] = {}
    try:
        # What a turn waits for before the upstream is called: create + store the user
        # message, one turn at a time (the concurrency-1 TTFT path).
        waits = []
        for i in range(turns // 4 + 20):
            t0 = time.perf_counter()
            content = content_for(i, chunks, delay_ms)
            conv = await conversations.create(USER, title=content[:60])
            await conversations.append(
                USER,
                conv.name,
                Message(id="", conversation_id=conv.id, role=Role.USER, content=content),
            )
            waits.append(ms(time.perf_counter() - t0))
        waits = waits[20:]
        result["before the upstream call, c=1: create + user message (wall ms)"] = {
            "p50_ms": pct(waits, 50),
            "p99_ms": pct(waits, 99),
        }
        for name, part in parts.items():
            for warm in (True, False):
                n = concurrency * 2 if warm else turns
                counter = iter(range(n))
                done = [0]

                async def worker(
                    part: Callable[[int], Awaitable[None]] = part,
                    counter: Any = counter,
                    done: list[int] = done,
                ) -> None:
                    for i in counter:
                        if out_of_time():
                            break
                        await part(i)
                        done[0] += 1

                u0, c0, w0 = upstream.cpu(), time.process_time(), time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                if not warm and done[0]:
                    wall = time.perf_counter() - w0
                    result[name] = {
                        "cpu_ms_per_turn": ms(time.process_time() - c0) / done[0],
                        "upstream_cpu_ms_per_turn": ms(upstream.cpu() - u0) / done[0],
                        "turns_per_s": done[0] / wall,
                        "turns": done[0],
                    }
    finally:
        await close_all(providers)
        await store.close()
    return result


# -- report -----------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000


def summarize(level: Level, delay_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "concurrency": level.concurrency,
        "stopped_early": level.stopped_early,
        "load": level.load,
        "server_phases_ms": level.server_phases,
    }
    for kind in KINDS:
        turns = level.turns[kind]
        ttft = [ms(t.ttft) for t in turns]
        total = [ms(t.total) for t in turns]
        gaps = [ms(g) for t in turns for g in t.gaps()]
        cpu = level.cpu[kind]
        n = max(cpu.turns, 1)
        out[kind] = {
            "n": len(turns),
            "errors": level.errors[kind],
            "ttft_p50": pct(ttft, 50),
            "ttft_p99": pct(ttft, 99),
            "total_p50": pct(total, 50),
            "total_p99": pct(total, 99),
            "gap_p50": pct(gaps, 50),
            "gap_p99": pct(gaps, 99),
            "bunched_pct": 100 * sum(g < delay_ms / 5 for g in gaps) / max(len(gaps), 1),
            "turns_per_s": cpu.turns / cpu.wall if cpu.wall else 0.0,
            "server_cpu_ms_per_turn": ms(cpu.server) / n,
            "upstream_cpu_ms_per_turn": ms(cpu.upstream) / n,
            "client_cpu_ms_per_turn": ms(cpu.client) / n,
            "server_cpu_share": cpu.server / cpu.wall if cpu.wall else 0.0,
            "messages_per_turn": statistics.fmean(t.messages for t in turns) if turns else 0.0,
        }
        if kind == "byok":
            server_ttft = [ms(t.server_ttft) for t in turns if t.server_ttft is not None]
            out[kind]["server_ttft_p50"] = pct(server_ttft, 50)
            out[kind]["client_minus_server_ttft_p50"] = pct(ttft, 50) - pct(server_ttft, 50)
    for base in ("sdk", "httpx"):
        out[f"added_vs_{base}"] = {
            key: out["byok"][key] - out[base][key]
            for key in ("ttft_p50", "ttft_p99", "total_p50", "total_p99", "gap_p50")
        }
    # Held back? The added delay of the k-th delta (median arrival, byok minus direct)
    # stays flat if every token is passed on as it arrives; batching would make it grow.
    for base in ("sdk", "httpx"):
        per_delta = []
        for k in range(min((len(t.deltas) for t in level.turns["byok"]), default=0)):
            via = [ms(t.deltas[k] - t.start) for t in level.turns["byok"]]
            direct = [ms(t.deltas[k] - t.start) for t in level.turns[base] if len(t.deltas) > k]
            per_delta.append(pct(via, 50) - pct(direct, 50))
        out[f"added_vs_{base}"]["per_delta"] = per_delta
        out[f"added_vs_{base}"]["drift"] = (per_delta[-1] - per_delta[0]) if per_delta else 0.0
    if level.concurrency == 1:  # paired: each byok turn against the direct turn next to it
        pairs = zip(level.turns["sdk"], level.turns["byok"], strict=False)
        paired = [ms(b.ttft - d.ttft) for d, b in pairs]
        out["paired_added_ttft_vs_sdk"] = {"p50": pct(paired, 50), "p99": pct(paired, 99)}
    return out


def print_level(s: dict[str, Any]) -> None:
    c = s["concurrency"]
    print(f"\n## concurrency {c}" + (" (stopped early: time budget)" if s["stopped_early"] else ""))
    print(
        f"{'path':<22}{'n':>6}{'TTFT p50':>10}{'p99':>8}{'total p50':>11}{'p99':>8}"
        f"{'gap p50':>9}{'bunched':>9}{'turns/s':>9}{'srv CPU':>9}{'up CPU':>8}{'cli CPU':>9}"
    )
    for kind in KINDS:
        r = s[kind]
        print(
            f"{LABELS[kind]:<22}{r['n']:>6}{r['ttft_p50']:>10.2f}{r['ttft_p99']:>8.2f}"
            f"{r['total_p50']:>11.2f}{r['total_p99']:>8.2f}{r['gap_p50']:>9.2f}"
            f"{r['bunched_pct']:>8.1f}%{r['turns_per_s']:>9.1f}"
            f"{r['server_cpu_ms_per_turn']:>9.2f}{r['upstream_cpu_ms_per_turn']:>8.2f}"
            f"{r['client_cpu_ms_per_turn']:>9.2f}"
        )
    for base in ("sdk", "httpx"):
        a = s[f"added_vs_{base}"]
        print(
            f"{'added vs ' + base:<28}{a['ttft_p50']:>10.2f}{a['ttft_p99']:>8.2f}"
            f"{a['total_p50']:>11.2f}{a['total_p99']:>8.2f}{a['gap_p50']:>9.2f}"
        )
    b = s["byok"]
    print(
        f"(ms; CPU = ms per turn; byok's own TTFT p50 {b['server_ttft_p50']:.2f} ms, so "
        f"{b['client_minus_server_ttft_p50']:.2f} ms of byok's TTFT is before the upstream call "
        f"and delivery; byok server busy {100 * b['server_cpu_share']:.0f}% of a core; "
        f"{b['messages_per_turn']:.1f} text messages per byok turn: one per upstream read, "
        "several chunks in one when they arrived together)"
    )
    for base in ("sdk", "httpx"):
        per = s[f"added_vs_{base}"]["per_delta"]
        if per:
            print(
                f"added delay of each delta vs {base}: first {per[0]:.2f}, last {per[-1]:.2f}, "
                f"min {min(per):.2f}, max {max(per):.2f} ms (flat = nothing held back)"
            )
    if "paired_added_ttft_vs_sdk" in s:
        p = s["paired_added_ttft_vs_sdk"]
        print(f"paired added TTFT vs SDK: p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms")
    if s.get("server_phases_ms"):
        print("byok server's own view of its turns (means from /metrics, ms):")
        for label, value in s["server_phases_ms"].items():
            print(f"  {value:8.2f}  {label}")
    if s["load"]:
        print(describe_load(s["load"]))
    errors = {k: s[k]["errors"] for k in KINDS if s[k]["errors"]}
    if errors:
        print(f"errors: {errors}")


def verdicts(
    summaries: list[dict[str, Any]], components: dict[str, dict[str, float]] | None = None
) -> list[tuple[str, bool | None, str]]:
    """PASS/MISS per target. The c=32 line also names what this machine allows: the rate of
    a bare grpc.aio server with no byok code (when the components were measured), since
    the same code gives different rates on different 2-core machines."""
    rows: list[tuple[str, bool | None, str]] = []
    by_c = {s["concurrency"]: s for s in summaries}
    if 1 in by_c:
        a = by_c[1]["added_vs_sdk"]
        for key, label in (("ttft_p50", "p50"), ("ttft_p99", "p99")):
            limit = TARGETS[key]
            rows.append(
                (
                    f"added TTFT {label} at c=1 <= {limit:g} ms",
                    a[key] <= limit,
                    f"{a[key]:.2f} ms",
                )
            )
    if 32 in by_c:
        r = by_c[32]["byok"]["turns_per_s"]
        ceiling = by_c[32]["sdk"]["turns_per_s"]
        httpx_rate = by_c[32]["httpx"]["turns_per_s"]
        cpu_ms = max(by_c[32]["byok"]["server_cpu_ms_per_turn"], 1e-6)
        bare = (components or {}).get(BARE_GRPC, {}).get("turns_per_s")
        floor = f"; a bare grpc.aio server, no byok code: {bare:.0f}/s" if bare else ""
        rows.append(
            (
                f"streamed turns/s at c=32 >= {TARGETS['rate']:g}",
                r >= TARGETS["rate"],
                f"{r:.0f}/s (same blocks direct: SDK {ceiling:.0f}/s, httpx {httpx_rate:.0f}/s; "
                f"byok server {cpu_ms:.1f} ms CPU/turn = {1000 / cpu_ms:.0f} turns/s per core"
                f"{floor})",
            )
        )
    for s in summaries:
        a = s["added_vs_sdk"]
        bunched = s["byok"]["bunched_pct"] - s["sdk"]["bunched_pct"]
        ok = abs(a["gap_p50"]) <= TARGETS["gap_ms"] and bunched <= TARGETS["bunched_pp"]
        rows.append(
            (
                f"gaps match at c={s['concurrency']} (|median gap diff| <= {TARGETS['gap_ms']:g}"
                f" ms, gaps < delay/5 at most +{TARGETS['bunched_pp']:g} pp)",
                # only c=1 is a verdict: at c=32 the direct clients bunch chunks themselves
                ok if s["concurrency"] == 1 else None,
                f"{a['gap_p50']:+.2f} ms, bunched {bunched:+.1f} pp, added delay drift "
                f"first->last delta {a['drift']:+.2f} ms",
            )
        )
    return rows


def speed_probe(rounds: int = 7) -> float:
    """ms for a fixed pure-Python loop, the median of `rounds`: how fast this machine runs
    the interpreter right now. Rates at c=32 are bound by one core's Python speed, so runs
    on different machines (or on one VM whose host is busy) compare through this. The
    median, not the best: a shared host slows the CPU itself, not only its availability."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        times.append(time.perf_counter() - start)
    return ms(statistics.median(times))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# -- metrics on vs off (--metrics-compare) ----------------------------------------------

METRICS_TARGET_PCT = 3.0  # TTFT p50 with metrics on at most this much above metrics off
SIDES = ("on", "off")
COMPARE_BLOCK_PER_WORKER = 2
SIDE_LABELS = {"on": "metrics on (default)", "off": "BYOK_METRICS=false"}


async def compare_repeat(
    pair: dict[str, Clients],
    servers: dict[str, Child],
    concurrency: int,
    turns: int,
    chunks: int,
    delay_ms: float,
    deadline: float,
) -> dict[str, Any]:
    """`turns` turns a side, the two servers alternating turn by turn (c=1) or in blocks
    of concurrency * 2 turns (short blocks: other work on the machine changes by the
    second), the order flipped every round (on, off, off, on, ...)."""
    block = 1 if concurrency == 1 else concurrency * COMPARE_BLOCK_PER_WORKER
    ttft: dict[str, list[float]] = {s: [] for s in SIDES}
    cpu = dict.fromkeys(SIDES, 0.0)
    wall = dict.fromkeys(SIDES, 0.0)
    errors = dict.fromkeys(SIDES, 0)
    paired: list[float] = []  # c=1: each on turn minus the off turn next to it
    rounds = 0
    stopped_early = False
    while len(ttft["on"]) < turns:
        if time.monotonic() > deadline or out_of_time():
            stopped_early = True
            break
        n = min(block, turns - len(ttft["on"]))
        got: dict[str, list[Turn]] = {}
        for side in SIDES if rounds % 2 == 0 else SIDES[::-1]:
            c0, w0 = servers[side].cpu(), time.perf_counter()
            got[side], err = await run_block(pair[side], "byok", n, concurrency, chunks, delay_ms)
            wall[side] += time.perf_counter() - w0
            cpu[side] += servers[side].cpu() - c0
            errors[side] += err
            ttft[side].extend(ms(t.ttft) for t in got[side])
        if concurrency == 1 and got["on"] and got["off"]:
            paired.append(ms(got["on"][0].ttft - got["off"][0].ttft))
        rounds += 1
    out: dict[str, Any] = {"stopped_early": stopped_early, "paired_on_minus_off": paired}
    for side in SIDES:
        n = max(len(ttft[side]), 1)
        out[side] = {
            "n": len(ttft[side]),
            "errors": errors[side],
            "ttft_ms": ttft[side],
            "ttft_p50": pct(ttft[side], 50),
            "ttft_p99": pct(ttft[side], 99),
            "server_cpu_ms_per_turn": ms(cpu[side]) / n,
            "turns_per_s": len(ttft[side]) / wall[side] if wall[side] else 0.0,
        }
    if ttft["on"] and ttft["off"]:
        out["diff_p50_pct"] = p50_diff_pct(ttft["on"], ttft["off"])
        out["diff_p99_pct"] = 100 * (out["on"]["ttft_p99"] / out["off"]["ttft_p99"] - 1)
    return out


def compare_summary(concurrency: int, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = {s: [x for r in repeats for x in r[s]["ttft_ms"]] for s in SIDES}
    out: dict[str, Any] = {"concurrency": concurrency, "repeats": repeats}
    if not (pooled["on"] and pooled["off"]):
        return out
    turns = {s: sum(r[s]["n"] for r in repeats) for s in SIDES}
    cpu = {
        s: sum(r[s]["server_cpu_ms_per_turn"] * r[s]["n"] for r in repeats) / max(turns[s], 1)
        for s in SIDES
    }
    diffs = [r["diff_p50_pct"] for r in repeats if "diff_p50_pct" in r]
    out["pooled"] = {
        **{
            s: {
                "n": turns[s],
                "ttft_p50": pct(pooled[s], 50),
                "ttft_p99": pct(pooled[s], 99),
                "server_cpu_ms_per_turn": cpu[s],
            }
            for s in SIDES
        },
        "diff_p50_pct": p50_diff_pct(pooled["on"], pooled["off"]),
        "diff_p50_pct_ci95": bootstrap(pooled["on"], pooled["off"], p50_diff_pct),
        "diff_p99_pct": 100 * (pct(pooled["on"], 99) / pct(pooled["off"], 99) - 1),
        "diff_p50_pct_repeats": diffs,
        "cpu_diff_ms_per_turn": cpu["on"] - cpu["off"],
        "cpu_diff_pct": 100 * (cpu["on"] / cpu["off"] - 1) if cpu["off"] else float("nan"),
    }
    paired = [x for r in repeats for x in r["paired_on_minus_off"]]
    if paired:
        out["pooled"]["paired_on_minus_off_p50_ms"] = pct(paired, 50)
    return out


def print_compare(s: dict[str, Any]) -> None:
    reps = s["repeats"]
    print(f"\n## metrics on vs off, concurrency {s['concurrency']}, {len(reps)} repeats")
    print(
        f"{'':<10}{'n on':>6}{'TTFT p50 on':>13}{'off':>8}{'diff':>9}"
        f"{'p99 on':>9}{'off':>8}{'diff':>9}{'CPU on':>9}{'off':>7}{'turns/s':>9}"
    )

    def row(name: str, r: dict[str, Any], d50: float, d99: float) -> None:
        on, off = r["on"], r["off"]
        rate = f"{on['turns_per_s']:>9.1f}" if "turns_per_s" in on else ""
        print(
            f"{name:<10}{on['n']:>6}{on['ttft_p50']:>13.2f}{off['ttft_p50']:>8.2f}{d50:>+8.1f}%"
            f"{on['ttft_p99']:>9.2f}{off['ttft_p99']:>8.2f}{d99:>+8.1f}%"
            f"{on['server_cpu_ms_per_turn']:>9.2f}{off['server_cpu_ms_per_turn']:>7.2f}{rate}"
        )

    for i, r in enumerate(reps, 1):
        if "diff_p50_pct" in r:
            row(f"repeat {i}", r, r["diff_p50_pct"], r["diff_p99_pct"])
    p = s.get("pooled")
    if not p:
        print("no turns")
        return
    row("pooled", p, p["diff_p50_pct"], p["diff_p99_pct"])
    lo, hi = p["diff_p50_pct_ci95"]
    reps_d = p["diff_p50_pct_repeats"]
    print(
        f"(ms; CPU = byok server ms per turn.) TTFT p50 difference {p['diff_p50_pct']:+.1f} %, "
        f"95 % bootstrap interval {lo:+.1f} .. {hi:+.1f} %; repeats {min(reps_d):+.1f} .. "
        f"{max(reps_d):+.1f} %. Server CPU {p['cpu_diff_ms_per_turn']:+.2f} ms/turn "
        f"({p['cpu_diff_pct']:+.1f} %) with metrics on."
    )
    if "paired_on_minus_off_p50_ms" in p:
        print(
            f"paired (each on turn minus the off turn next to it): p50 "
            f"{p['paired_on_minus_off_p50_ms']:+.2f} ms"
        )


async def metrics_compare(args: argparse.Namespace) -> dict[str, Any]:
    """Two byok servers on one upstream, metrics on and off, TTFT interleaved."""
    import httpx

    plan = plan_levels(args, lambda c: 200 if c == 1 else c * 48)
    _HARD["deadline"] = time.monotonic() + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="byok-metrics-bench-"))
    children: list[Child] = []
    result: dict[str, Any] = {
        "mode": "metrics-compare",
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": {"chunks": args.chunks, "delay_ms": args.delay_ms, "repeats": args.repeats},
    }
    try:
        upstream, base_url = start_upstream(work, args.chunks, args.delay_ms, args.upstream)
        children.append(upstream)
        on, on_target = start_byok(work, "byok-metrics-on", base_url)
        children.append(on)
        off, off_target = start_byok(
            work, "byok-metrics-off", base_url, extra_env={"BYOK_METRICS": "false"}
        )
        children.append(off)
        servers = {"on": on, "off": off}
        # The switch really is what differs: /metrics exists on one server only.
        async with httpx.AsyncClient() as http:
            pages = {
                s: (await http.get(f"{c.http_url}/metrics")).status_code for s, c in servers.items()
            }
        result["metrics_page_status"] = pages
        if pages != {"on": 200, "off": 404}:
            raise RuntimeError(f"expected /metrics 200 on, 404 off; got {pages}")
        log(f"servers: metrics on pid {on.pid}, off pid {off.pid}; work in {work}")
        cpu0 = {c.name: c.cpu() for c in children}
        client0 = time.process_time()
        m0 = machine_cpu()
        levels = []
        async with (
            Clients(base_url, on_target) as c_on,
            Clients(base_url, off_target) as c_off,
        ):
            pair = {"on": c_on, "off": c_off}
            for i, (c, turns) in enumerate(plan):
                warm = 20 if c == 1 else c * BLOCK_PER_WORKER
                log(f"concurrency {c}: warm-up {warm} turns a side")
                for side in SIDES:
                    await run_block(pair[side], "byok", warm, c, args.chunks, args.delay_ms)
                repeats = []
                for r in range(args.repeats):
                    left = (len(plan) - i - 1) * args.repeats + args.repeats - r
                    deadline = time.monotonic() + (_HARD["deadline"] - time.monotonic()) / left
                    log(f"concurrency {c}: repeat {r + 1}/{args.repeats}, {turns} turns a side")
                    repeats.append(
                        await compare_repeat(
                            pair, servers, c, turns, args.chunks, args.delay_ms, deadline
                        )
                    )
                s = compare_summary(c, repeats)
                levels.append(s)
                print_compare(s)
        own = sum(c.cpu() - cpu0[c.name] for c in children) + time.process_time() - client0
        result["load"] = machine_load(m0, machine_cpu(), own)
        result["levels"] = levels
        rows = []
        for s in levels:
            p = s.get("pooled")
            if not p:
                continue
            lo, hi = p["diff_p50_pct_ci95"]
            rows.append(
                (
                    f"TTFT p50 with metrics on <= off + {METRICS_TARGET_PCT:g} % at "
                    f"c={s['concurrency']}",
                    p["diff_p50_pct"] <= METRICS_TARGET_PCT,
                    f"{p['diff_p50_pct']:+.1f} % (95 % interval {lo:+.1f} .. {hi:+.1f} %; "
                    f"{p['on']['ttft_p50']:.2f} vs {p['off']['ttft_p50']:.2f} ms)",
                )
            )
        result["targets"] = [{"target": t, "pass": ok, "measured": m} for t, ok, m in rows]
        print("\n## targets")
        for t, ok, m in rows:
            print(f"{'PASS' if ok else 'MISS'}  {t}: {m}")
        print(f"\n{describe_load(result['load'])}")
    finally:
        for child in reversed(children):
            child.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


# -- this tree against another checkout ---------------------------------------------


async def tree_compare(args: argparse.Namespace) -> dict[str, Any]:
    """Two byok servers on one upstream: this checkout's code and the code of the
    checkout at `--baseline-tree` (its `server/` and `gen/python/` first on PYTHONPATH,
    same venv), byok turns alternating between them in blocks of `concurrency * 8`
    (turn by turn at c=1), the order flipped every round."""
    base: Path = args.baseline_tree
    _HARD["deadline"] = time.monotonic() + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="byok-tree-bench-"))
    children: list[Child] = []
    sides = ("this", "baseline")
    result: dict[str, Any] = {"mode": "tree-compare", "baseline_tree": str(base), "levels": []}
    try:
        upstream, base_url = start_upstream(work, args.chunks, args.delay_ms, args.upstream)
        children.append(upstream)
        path = os.pathsep.join(str(base / d) for d in ("server", "gen/python", "clients/python"))
        servers: dict[str, Child] = {}
        targets: dict[str, str] = {}
        for side, env in (("this", {}), ("baseline", {"PYTHONPATH": path})):
            servers[side], targets[side] = start_byok(work, f"byok-{side}", base_url, extra_env=env)
            children.append(servers[side])
        async with (
            Clients(base_url, targets["this"]) as c_this,
            Clients(base_url, targets["baseline"]) as c_base,
        ):
            clients = {"this": c_this, "baseline": c_base}
            for c, turns in plan_levels(args, default_turns):
                block = 1 if c == 1 else c * BLOCK_PER_WORKER
                for side in sides:  # warm-up
                    await run_block(clients[side], "byok", block * 2, c, args.chunks, args.delay_ms)
                got: dict[str, list[Turn]] = {side: [] for side in sides}
                cpu = dict.fromkeys(sides, 0.0)
                wall = dict.fromkeys(sides, 0.0)
                rounds = 0
                while len(got["this"]) < turns and not out_of_time():
                    for side in sides if rounds % 2 == 0 else sides[::-1]:
                        c0, w0 = servers[side].cpu(), time.perf_counter()
                        done, _ = await run_block(
                            clients[side], "byok", block, c, args.chunks, args.delay_ms
                        )
                        wall[side] += time.perf_counter() - w0
                        cpu[side] += servers[side].cpu() - c0
                        got[side].extend(done)
                    rounds += 1
                level: dict[str, Any] = {"concurrency": c}
                for side in sides:
                    n = max(len(got[side]), 1)
                    level[side] = {
                        "n": len(got[side]),
                        "turns_per_s": len(got[side]) / wall[side] if wall[side] else 0.0,
                        "server_cpu_ms_per_turn": ms(cpu[side]) / n,
                        "ttft_p50": pct([ms(t.ttft) for t in got[side]], 50),
                        "ttft_p99": pct([ms(t.ttft) for t in got[side]], 99),
                        "total_p50": pct([ms(t.total) for t in got[side]], 50),
                    }
                result["levels"].append(level)
                print(f"\n## c={c}: this tree vs {base}")
                print(
                    f"{'':10}{'n':>6}{'turns/s':>9}{'CPU ms':>8}{'TTFT p50':>10}{'p99':>8}"
                    f"{'total p50':>11}"
                )
                for side in sides:
                    r = level[side]
                    print(
                        f"{side:<10}{r['n']:>6}{r['turns_per_s']:>9.1f}"
                        f"{r['server_cpu_ms_per_turn']:>8.2f}{r['ttft_p50']:>10.2f}"
                        f"{r['ttft_p99']:>8.2f}{r['total_p50']:>11.1f}"
                    )
                this, old = level["this"], level["baseline"]
                print(
                    f"this / baseline: turns/s x{this['turns_per_s'] / old['turns_per_s']:.2f}, "
                    "server CPU per turn "
                    f"x{this['server_cpu_ms_per_turn'] / old['server_cpu_ms_per_turn']:.2f}, "
                    f"TTFT p50 x{this['ttft_p50'] / old['ttft_p50']:.2f}"
                )
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


# -- main -------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def plan_levels(args: argparse.Namespace, default: Callable[[int], int]) -> list[tuple[int, int]]:
    """(concurrency, turns) per level: `--turns` gives one number for all levels or one
    per level; a level it does not cover gets `default(concurrency)`."""
    concurrencies = int_list(args.concurrency)
    given = int_list(args.turns) if args.turns else []
    if len(given) == 1:
        given = given * len(concurrencies)
    return [(c, given[i] if i < len(given) else default(c)) for i, c in enumerate(concurrencies)]


def default_turns(c: int) -> int:
    return 200 if c == 1 else 2000


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    plan = plan_levels(args, default_turns)
    deadline_all = time.monotonic() + args.max_seconds
    _HARD["deadline"] = deadline_all
    work = Path(tempfile.mkdtemp(prefix="byok-chat-bench-"))
    upstream = server = None
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg(),
            "speed_probe_ms_before": speed_probe(),
        },
        "config": {"chunks": args.chunks, "delay_ms": args.delay_ms},
    }
    try:
        upstream, base_url = start_upstream(work, args.chunks, args.delay_ms, args.upstream)
        server, target = start_byok(work, "byok", base_url)
        await asyncio.sleep(1.0)
        c0 = server.cpu()
        await asyncio.sleep(2.0)
        idle = (server.cpu() - c0) / 2.0
        result["server_idle_cpu_share"] = idle
        log(f"byok server pid {server.pid}, idle CPU {100 * idle:.1f}% of a core; work in {work}")
        meter = Meter(server, upstream)
        summaries = []
        async with Clients(base_url, target) as clients:
            # The first turn of a fresh server (lazy loads, connection set-up), then one
            # more: byok's first turn is not in the warm-up-free figures below.
            first = [
                await clients.turn_byok(content_for(i, args.chunks, args.delay_ms)) for i in (0, 1)
            ]
            direct = await clients.turn_httpx(content_for(0, args.chunks, args.delay_ms))
            result["first_turns_ttft_ms"] = {
                "byok_first": ms(first[0].ttft),
                "byok_second": ms(first[1].ttft),
                "httpx_direct_first": ms(direct.ttft),
            }
            print(
                f"first turn of a fresh byok server: TTFT {ms(first[0].ttft):.0f} ms "
                f"(second {ms(first[1].ttft):.1f} ms; first direct httpx turn "
                f"{ms(direct.ttft):.1f} ms)"
            )
            for i, (c, turns) in enumerate(plan):
                left = len(plan) - i
                budget = (deadline_all - time.monotonic()) / (left + 0.5)
                level = await measure_level(
                    clients, meter, c, turns, args.chunks, args.delay_ms, time.monotonic() + budget
                )
                s = summarize(level, args.delay_ms)
                summaries.append(s)
                print_level(s)
            result["levels"] = summaries
            if args.follow_up_threads and not out_of_time():
                log(f"follow-up turns: {args.follow_up_threads} threads of 5 turns at c=1")
                follow = await measure_follow_ups(
                    clients, args.follow_up_threads, 5, args.chunks, args.delay_ms
                )
                result["follow_ups"] = follow
                print_follow_ups(follow)
            if args.parser_requests:
                log(f"parser comparison: {args.parser_requests} requests each, no delay")
                parsers = await measure_parsers(
                    clients, upstream, args.parser_requests, args.parser_concurrency, args.chunks
                )
                print_parsers(result, parsers, args)
        server.stop()  # the measured server is done; the rest runs without it
        c = max(c for c, _ in plan)
        if args.breakdown_turns and not out_of_time():
            log(f"components in-process: {args.breakdown_turns} turns each at c={c}")
            parts = await breakdown(
                work, base_url, upstream, args.breakdown_turns, c, args.chunks, args.delay_ms
            )
            parts.update(
                await grpc_only(work, base_url, args.breakdown_turns, c, args.chunks, args.delay_ms)
            )
            result["components"] = parts
            print_components(parts, summaries, c)
        rows = verdicts(summaries, result.get("components"))
        result["targets"] = [{"target": t, "pass": ok, "measured": m} for t, ok, m in rows]
        print("\n## targets")
        for t, ok, m in rows:
            print(f"{'INFO' if ok is None else 'PASS' if ok else 'MISS'}  {t}: {m}")
        if args.profile and not out_of_time():
            log(f"profile: {args.profile_turns} byok turns at c={c} under cProfile")
            report = await profile_run(
                work, base_url, args.profile, args.profile_turns, c, args.chunks, args.delay_ms
            )
            result["profile"] = report
            print_profile(report, c)
        result["machine"]["loadavg_after"] = os.getloadavg()
        result["machine"]["speed_probe_ms_after"] = speed_probe()
        m = result["machine"]
        print(
            f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; the client, "
            f"the byok server and the upstream share them. Load average before "
            f"{m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f}. Speed probe "
            f"(a 1M-step Python loop, median of 7; lower is faster): "
            f"{m['speed_probe_ms_before']:.0f} ms before, {m['speed_probe_ms_after']:.0f} ms after"
        )
    finally:
        for child in (server, upstream):
            if child is not None:
                child.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def print_parsers(result: dict[str, Any], parsers: list[ParserResult], args: Any) -> None:
    print(
        f"\n## parsing the stream, client-side loops, {args.chunks} chunks, no delay, "
        f"concurrency {args.parser_concurrency}"
    )
    print(f"{'loop':<42}{'req/s':>8}{'client CPU ms/req':>19}{'upstream CPU ms/req':>21}")
    result["parsers"] = []
    for p in parsers:
        if not p.requests:
            continue
        row = {
            "name": p.name,
            "requests": p.requests,
            "requests_per_s": p.requests / p.wall,
            "client_cpu_ms_per_request": ms(p.client_cpu) / p.requests,
            "upstream_cpu_ms_per_request": ms(p.upstream_cpu) / p.requests,
        }
        result["parsers"].append(row)
        print(
            f"{p.name:<42}{row['requests_per_s']:>8.0f}"
            f"{row['client_cpu_ms_per_request']:>19.3f}"
            f"{row['upstream_cpu_ms_per_request']:>21.3f}"
        )


def print_components(
    parts: dict[str, dict[str, float]], summaries: list[dict[str, Any]], c: int
) -> None:
    print(f"\n## where byok's CPU goes, c={c} (parts run in-process, ms CPU per turn)")
    for name, r in parts.items():
        if "p50_ms" in r:
            print(f"  {name}: p50 {r['p50_ms']:.2f}, p99 {r['p99_ms']:.2f}")
            continue
        print(f"  {r['cpu_ms_per_turn']:7.2f}  {name} ({r['turns_per_s']:.0f} turns/s)")
    level = next((s for s in summaries if s["concurrency"] == c), None)
    engine = next((r for n, r in parts.items() if n.startswith("engine")), None)
    if level and engine:
        server = level["byok"]["server_cpu_ms_per_turn"]
        print(
            f"  {server:7.2f}  byok-server process, same concurrency (measured above)\n"
            f"  {server - engine['cpu_ms_per_turn']:7.2f}  = the rest: gRPC server, servicer, "
            "protobuf (server minus engine turn)"
        )


def print_profile(report: dict[str, Any], c: int) -> None:
    print(
        f"\n## byok server under cProfile, c={c}, {report['turns']} turns "
        f"({report['rate']:.0f}/s; {report['server_cpu_ms_per_turn']:.2f} ms CPU/turn with the "
        f"profiler on); main thread {report['main_thread_ms_per_turn']:.2f} ms/turn by package:"
    )
    for name, value in list(report["groups_ms_per_turn"].items())[:18]:
        print(f"  {value:7.3f}  {name}")
    print("  top functions by own time (ms/turn, calls/turn):")
    for row in report["top_own_time"][:20]:
        print(f"  {row['own_ms_per_turn']:7.3f} {row['calls_per_turn']:7.1f}  {row['function']}")
    print("  byok / openai / httpx / aiosqlite functions by cumulative time (ms/turn):")
    for row in report["top_cumulative"][:25]:
        print(f"  {row['cum_ms_per_turn']:7.3f}  {row['function']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--turns",
        default="",
        help="turns of each kind per concurrency (default 200 at c=1, "
        "2000 otherwise); one number or one per --concurrency entry",
    )
    parser.add_argument(
        "--concurrency", help="comma-separated levels (default 1,32; 1,8 with --metrics-compare)"
    )
    parser.add_argument(
        "--upstream",
        choices=("node", "python"),
        default="node",
        help="the scripted upstream: bench/upstream.mjs on node:http (default) or uvicorn",
    )
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per reply")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="one chunk due every DELAY_MS")
    parser.add_argument(
        "--follow-up-threads",
        type=int,
        default=50,
        help="threads of 5 turns continuing a conversation, at c=1 (0: skip)",
    )
    parser.add_argument("--parser-requests", type=int, default=1500, help="0: skip")
    parser.add_argument("--parser-concurrency", type=int, default=4)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="time budget for the whole run; phases stop early (fewer samples) when it is spent",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--profile", metavar="FILE", help="also profile byok (cProfile stats)")
    parser.add_argument("--profile-turns", type=int, default=1000)
    parser.add_argument(
        "--breakdown-turns", type=int, default=1000, help="turns per in-process part (0: skip)"
    )
    parser.add_argument(
        "--metrics-compare",
        action="store_true",
        help="instead: TTFT of a byok server with metrics on vs one with BYOK_METRICS=false",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="--metrics-compare: comparisons per level"
    )
    parser.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="instead: byok turns of this checkout against the checkout in DIR "
        "(e.g. git worktree add /tmp/base <commit>), interleaved",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-byok-profiled", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-grpc-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-grpc-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.chunks, args.delay_ms)
        return
    if args.serve_grpc_only:
        serve_grpc_only(args.serve_grpc_only)
        return
    if args.serve_grpc_bare:
        serve_grpc_bare(args.serve_grpc_bare)
        return
    if args.serve_byok_profiled:
        serve_byok_profiled(args.serve_byok_profiled)
        return
    if args.concurrency is None:
        args.concurrency = "1,8" if args.metrics_compare else "1,32"
    if args.baseline_tree:
        args.baseline_tree = Path(args.baseline_tree).resolve()
        if not (args.baseline_tree / "server" / "byok" / "server").is_dir():
            raise SystemExit(f"--baseline-tree {args.baseline_tree}: no server/byok/server there")
        result = asyncio.run(tree_compare(args))
    else:
        result = asyncio.run(metrics_compare(args) if args.metrics_compare else bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
