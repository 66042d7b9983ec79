"""Soak: steady chat load against `byok-server serve` for minutes, watching its memory.

Run by hand (not part of the test suite):

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 10] [--sample-seconds 10]
        [--warm-up-minutes 2] [--read-every 1] [--json FILE]

Three processes: a scripted OpenAI-compatible upstream (this file with
`--serve-upstream`: tests/support/upstream.py's ScriptedUpstream, which streams
"echo: <message>" in three chunks, with a usage chunk and [DONE]), `byok-server serve`
(SQLite in a temporary folder, routed to that upstream) and this client.

The client starts `--rate` streamed turns a second, evenly spaced (at most
`--max-in-flight` at once; a turn that would exceed it is counted as skipped): 30 % start
a conversation, 70 % continue one of the 200 most recent, so history is read and the
database grows as in real use. Every `--read-every` seconds (default 1) it also lists
conversations and runs a relevance search. Every `--sample-seconds` it reads the
server's VmRSS (/proc/<pid>/status), the database size and the turn counts.

The report: turns ok / failed / skipped, turn latency p50/p99, RSS first/last/min/max,
the least-squares slope of RSS over time in MB/hour (over all samples, over the samples
after `--warm-up-minutes`, and over the last third: caches and the allocator fill
first), and a verdict: "stable" when the post-warm-up slope is under
`--leak-mb-per-hour` (default 10 MB/h); "plateau" when it is not but the last third is
flat (a bounded cache that filled); else "growing" (a leak, or caches still filling: run
longer to tell). `--read-every 0` drops the reads, to tell their caches apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "sk-soak-0123456789abcdef"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def slope_per_hour(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of (seconds, MB) in MB/hour, and R²."""
    if len(points) < 3:
        return 0.0, 0.0
    xs = [t / 3600 for t, _ in points]
    ys = [mb for _, mb in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy else 0.0
    return slope, r2


# -- the upstream process ----------------------------------------------------------------


def serve_upstream() -> None:
    """Runs the scripted upstream until SIGTERM; prints its port on stdout."""
    sys.path.insert(0, str(REPO))
    from tests.support.upstream import ScriptedUpstream

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with ScriptedUpstream() as upstream:
            print(upstream.port, flush=True)
            await stop.wait()

    asyncio.run(run())


# -- the load ---------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the start of the load
    rss_mb: float
    db_mb: float
    turns_ok: int
    turns_failed: int
    in_flight: int


@dataclass
class Figures:
    turns_ok: int = 0
    turns_failed: int = 0
    turns_skipped: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


class Load:
    def __init__(self, target: str, args: argparse.Namespace, figures: Figures) -> None:
        self.target = target
        self.args = args
        self.figures = figures
        self.conversations: list[str] = []
        self.in_flight = 0
        self.rng = random.Random(args.seed)

    async def turn(self, chat: Any, index: int) -> None:
        from grpc import aio

        from byok.v1 import chat_pb2

        self.in_flight += 1
        started = time.perf_counter()
        conversation = ""
        if self.conversations and self.rng.random() < 0.7:
            conversation = self.rng.choice(self.conversations[-200:])
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(5, 40)))
        request = chat_pb2.ChatRequest(conversation=conversation, content=f"turn {index}: {words}")
        try:
            done = False
            async for event in chat.StreamChat(request, timeout=60):
                kind = event.WhichOneof("event")
                if kind == "started" and not conversation:
                    self.conversations.append(event.started.conversation)
                elif kind == "done":
                    done = True
            if not done:
                raise RuntimeError("stream ended without done")
            self.figures.turns_ok += 1
            self.figures.latencies.append(time.perf_counter() - started)
        except (aio.AioRpcError, RuntimeError) as exc:
            self.figures.turns_failed += 1
            key = (
                f"{exc.code().name}: {(exc.details() or '')[:120]}"
                if isinstance(exc, aio.AioRpcError)
                else str(exc)
            )
            self.figures.errors[key] = self.figures.errors.get(key, 0) + 1
        finally:
            self.in_flight -= 1

    async def reads(self, convs: Any, until: float) -> None:
        from grpc import aio

        from byok.v1 import conversations_pb2 as cpb

        if self.args.read_every <= 0:
            return
        while time.monotonic() < until:
            try:
                await convs.ListConversations(cpb.ListConversationsRequest(page_size=50))
                await convs.SearchMessages(
                    cpb.SearchMessagesRequest(
                        parent="conversations/-", query=self.rng.choice(WORDS), page_size=20
                    )
                )
                self.figures.reads_ok += 2
            except aio.AioRpcError as exc:
                self.figures.reads_failed += 1
                key = f"read {exc.code().name}"
                self.figures.errors[key] = self.figures.errors.get(key, 0) + 1
            await asyncio.sleep(self.args.read_every)

    async def sample(self, pid: int, db: Path, started: float, until: float) -> None:
        while True:
            db_bytes = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.exists())
            sample = Sample(
                round(time.monotonic() - started, 1),
                round(rss_mb(pid), 1),
                round(db_bytes / 2**20, 1),
                self.figures.turns_ok,
                self.figures.turns_failed,
                self.in_flight,
            )
            self.figures.samples.append(sample)
            log(
                f"  t={sample.t:6.0f}s rss={sample.rss_mb:7.1f} MB db={sample.db_mb:6.1f} MB "
                f"ok={sample.turns_ok} failed={sample.turns_failed} in_flight={sample.in_flight}"
            )
            if time.monotonic() >= until:
                return
            await asyncio.sleep(min(self.args.sample_seconds, max(0.0, until - time.monotonic())))

    async def run(self, pid: int, db: Path) -> None:
        import grpc

        from byok.v1 import chat_pb2_grpc, conversations_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            convs = conversations_pb2_grpc.ConversationServiceStub(channel)
            started = time.monotonic()
            until = started + self.args.minutes * 60
            sampler = asyncio.create_task(self.sample(pid, db, started, until))
            reader = asyncio.create_task(self.reads(convs, until))
            tasks: set[asyncio.Task[None]] = set()
            interval = 1 / self.args.rate
            index = 0
            while True:
                due = started + index * interval
                if due >= until:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if self.in_flight >= self.args.max_in_flight:
                    self.figures.turns_skipped += 1
                else:
                    task = asyncio.create_task(self.turn(chat, index))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.wait(tasks, timeout=90)
            await reader
            await sampler


WORDS = [
    "lisbon",
    "rust",
    "borrow",
    "checker",
    "memory",
    "leak",
    "garden",
    "tomato",
    "async",
    "sqlite",
    "index",
    "search",
    "python",
    "grpc",
    "stream",
    "token",
    "budget",
    "coffee",
    "bicycle",
    "river",
    "mountain",
    "violin",
    "theorem",
]


# -- the run ----------------------------------------------------------------------------


def report(figures: Figures, args: argparse.Namespace) -> dict[str, Any]:
    points = [(s.t, s.rss_mb) for s in figures.samples]
    after = [(t, mb) for t, mb in points if t >= args.warm_up_minutes * 60]
    tail = points[len(points) * 2 // 3 :]
    slope_all, r2_all = slope_per_hour(points)
    slope_after, r2_after = slope_per_hour(after)
    slope_tail, _ = slope_per_hour(tail)
    lat = sorted(figures.latencies)
    p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    rss = [mb for _, mb in points]
    limit = args.leak_mb_per_hour
    if len(after) < 3:
        verdict = "too short: no samples after the warm-up"
    elif slope_after < limit:
        verdict = f"stable: {slope_after:+.1f} MB/h after warm-up (threshold {limit:g})"
    elif slope_tail < limit:
        verdict = (
            f"plateau: grew {slope_after:+.1f} MB/h after warm-up, then flat in the last third "
            f"({slope_tail:+.1f} MB/h, threshold {limit:g}) at {rss[-1]:.0f} MB: a bounded "
            "cache filling, not a leak (run longer to confirm)"
        )
    else:
        verdict = (
            f"growing: {slope_after:+.1f} MB/h after warm-up, {slope_tail:+.1f} MB/h in the "
            f"last third (threshold {limit:g}): a leak, or caches still filling: run longer"
        )
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "turns_ok": figures.turns_ok,
        "turns_failed": figures.turns_failed,
        "turns_skipped": figures.turns_skipped,
        "reads_ok": figures.reads_ok,
        "reads_failed": figures.reads_failed,
        "errors": figures.errors,
        "latency_ms_p50": round(p50, 1),
        "latency_ms_p99": round(p99, 1),
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_min": min(rss) if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "db_mb_last": figures.samples[-1].db_mb if figures.samples else None,
        "slope_mb_per_hour_all": round(slope_all, 2),
        "r2_all": round(r2_all, 3),
        "slope_mb_per_hour_after_warm_up": round(slope_after, 2),
        "r2_after_warm_up": round(r2_after, 3),
        "slope_mb_per_hour_last_third": round(slope_tail, 2),
        "samples": len(points),
        "load_average": os.getloadavg(),
        "verdict": verdict,
    }
    print(f"soak: {args.minutes:g} min at {args.rate:g} turns/s")
    print(
        f"  turns ok {figures.turns_ok}, failed {figures.turns_failed}, skipped "
        f"{figures.turns_skipped}; reads ok {figures.reads_ok}, failed {figures.reads_failed}"
    )
    if figures.errors:
        print(f"  errors: {figures.errors}")
    print(f"  turn latency p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    if rss:
        print(
            f"  server RSS first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, min {min(rss):.1f}, "
            f"max {max(rss):.1f}; database {summary['db_mb_last']} MB"
        )
    print(
        f"  RSS slope: {slope_all:+.1f} MB/h over all {len(points)} samples (R² {r2_all:.2f}), "
        f"{slope_after:+.1f} MB/h after {args.warm_up_minutes:g} min warm-up "
        f"({len(after)} samples, R² {r2_after:.2f}), {slope_tail:+.1f} MB/h over the last "
        f"third ({len(tail)} samples)"
    )
    print(f"  load average {os.getloadavg()[0]:.1f}")
    print(f"  verdict: {verdict}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="turns started a second")
    parser.add_argument("--max-in-flight", type=int, default=200)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warm-up-minutes", type=float, default=2.0)
    parser.add_argument(
        "--read-every",
        type=float,
        default=1.0,
        help="seconds between list+search rounds (0: no reads)",
    )
    parser.add_argument("--leak-mb-per-hour", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures and samples here")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return 0

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="byok-soak-")))
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream"],
            stdout=subprocess.PIPE,
            stderr=(tmp / "upstream.log").open("w"),
            text=True,
        )
        stack.callback(_stop, upstream)
        assert upstream.stdout is not None
        upstream_port = int(upstream.stdout.readline())
        grpc_port, http_port = free_port(), free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BYOK_", "MODEL_ROUTE_", "PROVIDER_", "OPENAI_"))
        }
        env.update(
            BYOK_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
            BYOK_HTTP_ADDR=f"127.0.0.1:{http_port}",
            BYOK_DATA_DIR=str(tmp / "data"),
            BYOK_LOG_LEVEL="WARNING",
            MAX_STREAMS_PER_USER=str(args.max_in_flight + 50),  # one user runs all turns
            MODEL_ROUTE_FAST="openai/gpt-4o-mini",
            DEFAULT_MODEL_ROUTE="FAST",
            OPENAI_API_KEY=API_KEY,
            OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        )
        server = subprocess.Popen(
            [str(BIN / "byok-server"), "serve"],
            env=env,
            cwd=tmp,
            stdout=(tmp / "server.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, server)
        _wait_ready(http_port, server, tmp / "server.log")
        log(f"byok-server pid {server.pid} ready; upstream on {upstream_port}; data in {tmp}")
        figures = Figures()
        load = Load(f"127.0.0.1:{grpc_port}", args, figures)
        asyncio.run(load.run(server.pid, tmp / "data" / "byok.db"))
        if server.poll() is not None:
            log(f"byok-server exited with {server.returncode}:\n{(tmp / 'server.log').read_text()}")
        summary = report(figures, args)
        if args.json:
            summary["samples_raw"] = [asdict(s) for s in figures.samples]
            args.json.write_text(json.dumps(summary, indent=2))
        return 0 if figures.turns_failed == 0 and server.poll() is None else 1


def _wait_ready(port: int, server: subprocess.Popen[Any], log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"byok-server exited:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"byok-server not ready in 120 s:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
