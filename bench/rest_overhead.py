"""REST overhead benchmark: the same unary RPC over the REST/JSON gateway and over gRPC.

Run by hand (not part of the test suite):

    .venv/bin/python bench/rest_overhead.py [--requests 3000] [--block 10]
        [--concurrency 16] [--load-rounds 6] [--load-seconds 2] [--json FILE]

Two processes: `byok-server serve` (default settings, SQLite in a temp dir, no upstream
needed) and this client. At start the client creates one conversation with 5 messages
(user/assistant, ~2.5 KB of text) over gRPC, then reads it back with GetConversation
(FULL view, the default) three ways, interleaved:

- **gRPC**: the generated `ConversationServiceStub` on one `grpc.aio` channel.
- **REST, raw socket**: `GET /api/conversations/{id}` as HTTP/1.1 keep-alive requests
  written on an asyncio stream, the response read by Content-Length (no HTTP library:
  the lean client, so the client does not dominate) and `json.loads`-ed.
- **REST, httpx**: the same GET with a keep-alive `httpx.AsyncClient` and `.json()`
  (what most Python callers would use; reported, not judged).
- **GET /healthz** with the raw client: a Starlette route with no gateway, gRPC or store,
  the floor of the HTTP stack (for scale).

Both REST clients decode the body, as the gRPC stub decodes its protobuf, so each path
ends with a usable object. aiohttp is not used: it is not installed.

Phase 1, one request in flight: blocks of `--block` requests of one kind, the kinds in
turn (order reversed every round), until `--requests` of each; latency of every request
(`time.perf_counter` around the call), and CPU of the server (utime+stime from
/proc/<pid>/stat) and of the client (`time.process_time()`) around each block, per
request. Target: REST (raw client) p50 <= 1.5 x gRPC p50 + 1 ms.

Phase 2, `--concurrency` requests in flight: each kind for `--load-seconds` in turn,
`--load-rounds` rounds; requests/s, latency p50/p99 and CPU per request. gRPC
multiplexes the requests on its one channel (HTTP/2); the REST clients use one
keep-alive connection per worker.

Then the gateway's own steps for this GET are timed alone in this process (route match,
request and response transcoding, a unary gRPC call as a client: CPU per request), to
split REST's extra server CPU (`--component-iterations 0` skips this). Every phase
stops early once `--max-seconds` is spent. The machine's load (load average, and how
busy all cores were, this benchmark's processes vs other work, from /proc/stat) is
printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from chat_overhead import (
    Child,
    bootstrap,
    clean_env,
    cpu_model,
    describe_load,
    free_port,
    log,
    machine_cpu,
    machine_load,
    ms,
    pct,
    profile_report,
    start_child,
    wait_for_file,
    wait_ready,
)

from byok.v1 import conversations_pb2, conversations_pb2_grpc

BIN = Path(sys.executable).parent
CHAT_OVERHEAD = Path(__file__).resolve().parent / "chat_overhead.py"  # its cProfile server
KINDS = ("grpc", "raw", "httpx", "healthz")
LABELS = {
    "grpc": "gRPC (aio stub)",
    "raw": "REST, raw socket client",
    "httpx": "REST, httpx client",
    "healthz": "GET /healthz, raw client",
}
RATIO, PLUS_MS = 1.5, 1.0  # target: REST p50 <= RATIO * gRPC p50 + PLUS_MS
MESSAGES = (
    ("ROLE_USER", "How do I rotate the API key of a provider without downtime? " * 3),
    ("ROLE_ASSISTANT", "Add the new key first, move traffic to it, then revoke the old. " * 12),
    ("ROLE_USER", "And if two replicas read the key at different times? " * 3),
    ("ROLE_ASSISTANT", "Both keys stay valid during the overlap, so either replica works. " * 12),
    ("ROLE_USER", "Thanks. Summarise that in one line. " * 2),
)


def target_limit(grpc_p50: float) -> float:
    return RATIO * grpc_p50 + PLUS_MS


# -- the server -------------------------------------------------------------------------


def start_server(work: Path, profile: str | None = None) -> tuple[Child, str]:
    """`byok-server serve` as a user runs it (or, with `profile`, the same App under
    chat_overhead.py's SIGUSR1/SIGUSR2 cProfile switch); returns it and its gRPC target."""
    grpc_port, http_port = free_port(), free_port()
    name = "byok-profiled" if profile else "byok"
    data = work / f"{name}-data"
    data.mkdir()
    env = clean_env()
    env.update(
        BYOK_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        BYOK_HTTP_ADDR=f"127.0.0.1:{http_port}",
        BYOK_DATA_DIR=str(data),
    )
    argv = [str(BIN / "byok-server"), "serve"]
    if profile:
        argv = [sys.executable, str(CHAT_OVERHEAD), "--serve-byok-profiled", profile]
    child = start_child(name, argv, env, work)
    child.http_url = f"http://127.0.0.1:{http_port}"
    wait_ready(child, f"{child.http_url}/readyz")
    return child, f"127.0.0.1:{grpc_port}"


# -- the clients ------------------------------------------------------------------------


class RawHttp:
    """HTTP/1.1 keep-alive GETs on one asyncio stream, with no HTTP library."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = -1  # the first connect is not one

    async def connect(self) -> RawHttp:
        self.reconnects += 1
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def get(self, path: str) -> tuple[int, bytes]:
        """As any keep-alive client does, a connection the server has closed (uvicorn
        closes one idle for 5 s) is replaced, and a GET that met a closed connection
        is sent again once on a new one; `reconnects` counts the new connections."""
        if self.reader is None or self.reader.at_eof():
            await self.close()
            await self.connect()
        try:
            return await self._get(path)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            await self.connect()
            return await self._get(path)

    async def _get(self, path: str) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: application/json\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if length >= 0:
            return status, await self.reader.readexactly(length)
        if not chunked:
            raise RuntimeError("response with neither Content-Length nor chunked encoding")
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await self.reader.readexactly(size + 2))[:-2]
            if size == 0:
                return status, body


@dataclass
class Clients:
    grpc_target: str
    http_url: str
    name: str
    concurrency: int
    channel: Any = None
    stub: Any = None
    http: Any = None
    raw: list[RawHttp] = field(default_factory=list)
    raw_free: asyncio.Queue[RawHttp] | None = None

    async def __aenter__(self) -> Clients:
        self.channel = grpc.aio.insecure_channel(self.grpc_target)
        self.stub = conversations_pb2_grpc.ConversationServiceStub(self.channel)
        self.http = httpx.AsyncClient(
            base_url=self.http_url,
            timeout=30,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        host, port = self.http_url.removeprefix("http://").rsplit(":", 1)
        self.raw_free = asyncio.Queue()
        for _ in range(self.concurrency):
            conn = await RawHttp(host, int(port)).connect()
            self.raw.append(conn)
            self.raw_free.put_nowait(conn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.raw:
            await conn.close()
        await self.http.aclose()
        await self.channel.close()

    async def get_grpc(self) -> int:
        conv = await self.stub.GetConversation(
            conversations_pb2.GetConversationRequest(name=self.name), timeout=30
        )
        return len(conv.messages)

    async def get_raw(self) -> int:
        assert self.raw_free is not None
        conn = await self.raw_free.get()  # one request at a time per connection
        try:
            status, body = await conn.get(f"/api/{self.name}")
        finally:
            self.raw_free.put_nowait(conn)
        if status != 200:
            raise RuntimeError(f"raw GET: HTTP {status}: {body[:200]!r}")
        return len(json.loads(body)["messages"])

    async def get_httpx(self) -> int:
        response = await self.http.get(f"/api/{self.name}")
        if response.status_code != 200:
            raise RuntimeError(f"httpx GET: HTTP {response.status_code}: {response.text[:200]}")
        return len(response.json()["messages"])

    async def get_healthz(self) -> int:
        """The HTTP stack's floor: a Starlette route, no gateway, no gRPC, no store."""
        assert self.raw_free is not None
        conn = await self.raw_free.get()
        try:
            status, body = await conn.get("/healthz")
        finally:
            self.raw_free.put_nowait(conn)
        if status != 200 or json.loads(body) != {"status": "ok"}:
            raise RuntimeError(f"/healthz: HTTP {status}: {body[:200]!r}")
        return len(MESSAGES)  # what run_block checks

    def call(self, kind: str) -> Callable[[], Awaitable[int]]:
        return {
            "grpc": self.get_grpc,
            "raw": self.get_raw,
            "httpx": self.get_httpx,
            "healthz": self.get_healthz,
        }[kind]


async def make_conversation(target: str) -> tuple[str, int]:
    """One conversation with MESSAGES; returns its name and its REST body size."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = conversations_pb2_grpc.ConversationServiceStub(channel)
        conv = await stub.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                conversation=conversations_pb2.Conversation(title="REST overhead benchmark")
            )
        )
        for role, text in MESSAGES:
            await stub.CreateMessage(
                conversations_pb2.CreateMessageRequest(
                    parent=conv.name,
                    message=conversations_pb2.Message(
                        role=conversations_pb2.Role.Value(role), content=text.strip()
                    ),
                )
            )
        full = await stub.GetConversation(conversations_pb2.GetConversationRequest(name=conv.name))
    return conv.name, full.ByteSize()


# -- measurement ------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # ms
    server_cpu: float = 0.0  # seconds
    client_cpu: float = 0.0
    wall: float = 0.0
    requests: int = 0
    errors: int = 0


async def run_block(
    clients: Clients,
    kind: str,
    server: Child,
    tally: Tally,
    concurrency: int,
    *,
    n: int = 0,
    seconds: float = 0.0,
) -> None:
    """`n` requests (or as many as fit in `seconds`) with `concurrency` in flight."""
    call = clients.call(kind)
    want = len(MESSAGES)
    started = 0
    end = time.perf_counter() + seconds

    def more() -> bool:
        return started < n if n else time.perf_counter() < end

    async def worker() -> None:
        nonlocal started
        while more():
            started += 1
            t0 = time.perf_counter()
            try:
                got = await call()
            except Exception as exc:
                tally.errors += 1
                if tally.errors <= 3:
                    log(f"  {kind} request failed: {type(exc).__name__}: {exc}")
                continue
            tally.latencies.append(ms(time.perf_counter() - t0))
            if got != want:
                tally.errors += 1
                log(f"  {kind}: {got} messages, expected {want}")

    s0, c0, w0 = server.cpu(), time.process_time(), time.perf_counter()
    before = len(tally.latencies)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.wall += time.perf_counter() - w0
    tally.client_cpu += time.process_time() - c0
    tally.server_cpu += server.cpu() - s0
    tally.requests += len(tally.latencies) - before


async def serial_phase(
    clients: Clients, server: Child, requests: int, block: int, deadline: float
) -> tuple[dict[str, Tally], bool]:
    tallies = {k: Tally() for k in KINDS}
    for kind in KINDS:  # warm-up, not counted
        await run_block(clients, kind, server, Tally(), 1, n=200)
    rounds = 0
    while tallies["grpc"].requests < requests:
        if time.monotonic() > deadline:
            log(f"  time budget reached after {tallies['grpc'].requests} requests of each")
            return tallies, True
        n = min(block, requests - tallies["grpc"].requests)
        for kind in KINDS if rounds % 2 == 0 else KINDS[::-1]:
            await run_block(clients, kind, server, tallies[kind], 1, n=n)
        rounds += 1
        if rounds % max(1, 500 // block) == 0:
            log(f"  {tallies['grpc'].requests}/{requests}")
    return tallies, False


async def load_phase(
    clients: Clients, server: Child, concurrency: int, rounds: int, seconds: float, deadline: float
) -> tuple[dict[str, Tally], bool]:
    tallies = {k: Tally() for k in KINDS}
    for kind in KINDS:  # warm-up, not counted
        await run_block(clients, kind, server, Tally(), concurrency, seconds=0.5)
    for r in range(rounds):
        if time.monotonic() > deadline:
            log(f"  time budget reached after {r} rounds")
            return tallies, True
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            await run_block(clients, kind, server, tallies[kind], concurrency, seconds=seconds)
    return tallies, False


# -- the gateway's own steps, in this process -------------------------------------------


async def components(target: str, name: str, iterations: int) -> dict[str, float]:
    """CPU microseconds per request of the gateway's steps for this GET, run alone in
    this process: route match, request transcoding, response transcoding (proto3 JSON),
    and a unary gRPC call as a client (what the gateway also does, in the server)."""
    from byok.server.gateway.routes import load_bindings
    from byok.server.gateway.transcode import Transcoder

    routes = load_bindings()
    path = f"/api/{name}"
    found = routes.match("GET", path)
    assert found is not None
    transcoder = Transcoder(found.binding)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = conversations_pb2_grpc.ConversationServiceStub(channel)
        request = conversations_pb2.GetConversationRequest(name=name)
        conv = await stub.GetConversation(request)

        def cpu_us(step: Callable[[], object]) -> float:
            for _ in range(50):
                step()
            c0 = time.process_time()
            for _ in range(iterations):
                step()
            return (time.process_time() - c0) * 1e6 / iterations

        out = {
            "route match": cpu_us(lambda: routes.match("GET", path)),
            "request: path -> GetConversationRequest": cpu_us(
                lambda: transcoder.build_request(found.values, b"", b"")
            ),
            "response: Conversation -> JSON bytes": cpu_us(lambda: transcoder.response_json(conv)),
        }
        for _ in range(50):
            await stub.GetConversation(request)
        c0 = time.process_time()
        for _ in range(iterations):
            await stub.GetConversation(request)
        out["gRPC client side of one unary call (grpc.aio, decode)"] = (
            (time.process_time() - c0) * 1e6 / iterations
        )
    return out


def print_components(parts: dict[str, float], serial: dict[str, Any]) -> None:
    extra = serial["raw"]["server_cpu_added_ms"] * 1000
    print("\n## the gateway's steps, each alone in the client process (CPU us per request)")
    for step, us in parts.items():
        print(f"  {us:8.0f}  {step}")
    known = sum(parts.values())
    print(
        f"  {extra:8.0f}  REST minus gRPC, byok server CPU per request (measured above)\n"
        f"  {extra - known:8.0f}  = the rest: uvicorn + h11, Starlette, the HTTP metrics "
        "middleware, and the loop's extra wake-ups for a second hop"
    )
    floor = serial["healthz"]["server_cpu_ms_per_request"] * 1000
    print(f"  {floor:8.0f}  (for scale: GET /healthz, server CPU per request, measured above)")


async def profile_run(work: Path, out: str, requests: int, concurrency: int) -> dict[str, Any]:
    """`requests` REST GETs (raw client) against a second server under cProfile."""
    server, target = start_server(work, profile=out)
    try:
        name, _size = await make_conversation(target)
        async with Clients(target, server.http_url, name, concurrency) as clients:
            await run_block(clients, "raw", server, Tally(), concurrency, n=concurrency * 20)
            server.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
            tally = Tally()
            await run_block(clients, "raw", server, tally, concurrency, n=requests)
            server.proc.send_signal(signal.SIGUSR2)
            await asyncio.to_thread(wait_for_file, out, 60.0)
            await asyncio.sleep(1.0)  # dump_stats finishing
    finally:
        server.stop(timeout=60)
    report = profile_report(out, max(tally.requests, 1))
    report.update(
        rate=tally.requests / tally.wall,
        server_cpu_ms_per_request=ms(tally.server_cpu) / max(tally.requests, 1),
    )
    return report


def print_profile(report: dict[str, Any], concurrency: int) -> None:
    print(
        f"\n## byok server under cProfile, REST GETs, {concurrency} in flight, "
        f"{report['turns']} requests ({report['rate']:.0f}/s, "
        f"{report['server_cpu_ms_per_request']:.2f} ms CPU/request with the profiler on); "
        f"main thread {report['main_thread_ms_per_turn']:.3f} ms/request by package:"
    )
    for group, value in list(report["groups_ms_per_turn"].items())[:15]:
        print(f"  {value:7.3f}  {group}")
    print("  top functions by own time (ms/request, calls/request):")
    for row in report["top_own_time"][:15]:
        print(f"  {row['own_ms_per_turn']:7.3f} {row['calls_per_turn']:7.1f}  {row['function']}")


# -- report -----------------------------------------------------------------------------


def summarize(tallies: dict[str, Tally]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, t in tallies.items():
        n = max(t.requests, 1)
        out[kind] = {
            "n": t.requests,
            "errors": t.errors,
            "p50_ms": pct(t.latencies, 50),
            "p90_ms": pct(t.latencies, 90),
            "p99_ms": pct(t.latencies, 99),
            "requests_per_s": t.requests / t.wall if t.wall else 0.0,
            "server_cpu_ms_per_request": ms(t.server_cpu) / n,
            "client_cpu_ms_per_request": ms(t.client_cpu) / n,
            "server_cpu_share": t.server_cpu / t.wall if t.wall else 0.0,
        }
    g = out["grpc"]
    for kind in KINDS[1:]:
        r = out[kind]
        r["p50_ratio"] = r["p50_ms"] / g["p50_ms"]
        r["p99_ratio"] = r["p99_ms"] / g["p99_ms"]
        r["p50_added_ms"] = r["p50_ms"] - g["p50_ms"]
        r["rate_ratio"] = r["requests_per_s"] / g["requests_per_s"] if g["requests_per_s"] else 0
        r["server_cpu_added_ms"] = r["server_cpu_ms_per_request"] - g["server_cpu_ms_per_request"]
    return out


def print_table(title: str, s: dict[str, Any]) -> None:
    print(f"\n## {title}")
    print(
        f"{'path':<26}{'n':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'p50 x':>7}{'req/s':>8}"
        f"{'srv CPU':>9}{'cli CPU':>9}{'srv busy':>10}"
    )
    for kind in KINDS:
        r = s[kind]
        ratio = f"{r['p50_ratio']:>7.2f}" if "p50_ratio" in r else f"{'1':>7}"
        print(
            f"{LABELS[kind]:<26}{r['n']:>7}{r['p50_ms']:>8.2f}{r['p90_ms']:>8.2f}"
            f"{r['p99_ms']:>8.2f}{ratio}{r['requests_per_s']:>8.0f}"
            f"{r['server_cpu_ms_per_request']:>9.3f}{r['client_cpu_ms_per_request']:>9.3f}"
            f"{100 * r['server_cpu_share']:>9.0f}%"
        )
    errors = {k: s[k]["errors"] for k in KINDS if s[k]["errors"]}
    print(
        "(ms; CPU = ms per request; p50 x = p50 / gRPC p50; srv busy = byok server CPU"
        " / wall)" + (f"; errors {errors}" if errors else "")
    )


def p50_margin(rest: Sequence[float], grpc_ms: Sequence[float]) -> float:
    """REST p50 minus the target's limit (negative: within the target)."""
    return pct(rest, 50) - target_limit(pct(grpc_ms, 50))


# -- main -------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    deadline_all = time.monotonic() + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="byok-rest-bench-"))
    server = None
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": {
            "requests": args.requests,
            "block": args.block,
            "concurrency": args.concurrency,
            "load_rounds": args.load_rounds,
            "load_seconds": args.load_seconds,
            "messages": len(MESSAGES),
        },
    }
    try:
        server, target = start_server(work)
        name, size = await make_conversation(target)
        result["conversation"] = {"name": name, "protobuf_bytes": size}
        log(f"byok server pid {server.pid}; {name} ({size} protobuf bytes); work in {work}")
        cpu0, client0, m0 = server.cpu(), time.process_time(), machine_cpu()
        async with Clients(target, server.http_url, name, args.concurrency) as clients:
            status, body = await clients.raw[0].get(f"/api/{name}")
            result["conversation"]["json_bytes"] = len(body)
            if status != 200:
                raise RuntimeError(f"GET /api/{name}: HTTP {status}")
            log(f"one request in flight: {args.requests} of each kind, blocks of {args.block}")
            budget = (deadline_all - time.monotonic()) * 0.6
            tallies, early = await serial_phase(
                clients, server, args.requests, args.block, time.monotonic() + budget
            )
            serial = summarize(tallies)
            serial["stopped_early"] = early
            rest, grpc_ms = tallies["raw"].latencies, tallies["grpc"].latencies
            serial["raw"]["p50_margin_ci95_ms"] = bootstrap(rest, grpc_ms, p50_margin)
            print(
                f"conversation: {len(MESSAGES)} messages, {size} bytes as protobuf, "
                f"{len(body)} as JSON"
            )
            print_table("one request in flight", serial)
            log(
                f"{args.concurrency} in flight: {args.load_rounds} rounds of "
                f"{args.load_seconds:g} s per kind"
            )
            tallies, early = await load_phase(
                clients,
                server,
                args.concurrency,
                args.load_rounds,
                args.load_seconds,
                deadline_all,
            )
            load = summarize(tallies)
            load["stopped_early"] = early
            print_table(f"{args.concurrency} requests in flight", load)
            result["raw_client_reconnects"] = sum(c.reconnects for c in clients.raw)
            print(
                f"(raw client: {result['raw_client_reconnects']} new connections, replacing "
                "ones the server closed when idle)"
            )
        # the machine during the two measured phases (the parts below add other processes)
        own = server.cpu() - cpu0 + time.process_time() - client0
        result["load"] = machine_load(m0, machine_cpu(), own)
        if args.component_iterations and time.monotonic() < deadline_all:
            parts = await components(target, name, args.component_iterations)
            result["components_cpu_us"] = parts
            print_components(parts, serial)
        if args.profile and time.monotonic() < deadline_all:
            log(f"profile: {args.profile_requests} REST GETs under cProfile")
            report = await profile_run(work, args.profile, args.profile_requests, args.concurrency)
            result["profile"] = report
            print_profile(report, args.concurrency)
        result["serial"], result["concurrent"] = serial, load
        g, r, h = serial["grpc"], serial["raw"], serial["httpx"]
        limit = target_limit(g["p50_ms"])
        lo, hi = r["p50_margin_ci95_ms"]
        rows: list[tuple[str, bool | None, str]] = [
            (
                f"REST p50 <= {RATIO:g} x gRPC p50 + {PLUS_MS:g} ms (raw client, 1 in flight)",
                r["p50_ms"] <= limit,
                f"{r['p50_ms']:.2f} ms vs limit {limit:.2f} ms (gRPC {g['p50_ms']:.2f} ms; "
                f"ratio {r['p50_ratio']:.2f}, +{r['p50_added_ms']:.2f} ms; margin 95 % "
                f"interval {lo:+.2f} .. {hi:+.2f} ms)",
            ),
            (
                "same with httpx as the client (not judged: client cost)",
                None,
                f"{h['p50_ms']:.2f} ms vs limit {limit:.2f} ms (ratio {h['p50_ratio']:.2f})",
            ),
            (
                f"req/s at {args.concurrency} in flight, REST / gRPC",
                None,
                f"raw {load['raw']['requests_per_s']:.0f}/s vs gRPC "
                f"{load['grpc']['requests_per_s']:.0f}/s = {load['raw']['rate_ratio']:.2f}; "
                f"httpx {load['httpx']['requests_per_s']:.0f}/s",
            ),
        ]
        result["targets"] = [{"target": t, "pass": ok, "measured": m} for t, ok, m in rows]
        print("\n## targets")
        for t, ok, m in rows:
            print(f"{'INFO' if ok is None else 'PASS' if ok else 'MISS'}  {t}: {m}")
        m = result["machine"]
        print(
            f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; the client and the "
            f"server share them. {describe_load(result['load'])}"
        )
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per kind, 1 in flight")
    parser.add_argument("--block", type=int, default=10, help="requests per kind in a row")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight, phase 2")
    parser.add_argument("--load-rounds", type=int, default=6, help="phase 2 rounds")
    parser.add_argument("--load-seconds", type=float, default=2.0, help="per kind per round")
    parser.add_argument(
        "--component-iterations", type=int, default=2000, help="gateway steps alone (0: skip)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="time budget; phases stop early"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--profile", metavar="FILE", help="also profile REST GETs (cProfile)")
    parser.add_argument("--profile-requests", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (log, db)")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
