"""Shared pieces of the reliability tests.

- `PlannedUpstream`: a ScriptedUpstream whose reply is planned by the user message itself,
  so concurrent turns each get their own, known reply whatever order they arrive in.
- `SocketUpstream`: a raw TCP "upstream" that misbehaves below HTTP (reset, stall).
- `ForkServer`: `byok-server serve` preloaded once, then forked per start, for tests that
  restart the server dozens of times (a cold start costs seconds of imports on 2 cores).
- `check_database`: opens the SQLite file as a fresh process would and checks it is whole.
- `rss_mb`, `emit`: figures, printed to the terminal even without `-s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

import httpx
import pytest

from tests.support.servers import REPO, free_port
from tests.support.upstream import ScriptedUpstream, ThreadedUpstream, _Reply

KEY = "sk-test-0123456789abcdef"
ROLE_USER, ROLE_ASSISTANT = 2, 3  # byok.v1.Role, as stored
COMPLETE, INCOMPLETE = 1, 2  # byok.v1.MessageStatus, as stored

# -- planned replies --------------------------------------------------------------------

_PLAN = re.compile(r"\bturn (\w+) n=(\d+) ms=(\d+)")


def planned(token: str, chunks: int, delay_ms: int) -> str:
    """A user message whose reply is `chunks` chunks `<token>w0 `, `<token>w1 `, ...,
    one every `delay_ms` milliseconds (see PlannedUpstream)."""
    return f"turn {token} n={chunks} ms={delay_ms}"


def plan_of(content: str) -> tuple[tuple[str, ...], float] | None:
    match = _PLAN.search(content)
    if match is None:
        return None
    token, chunks, delay_ms = match.group(1), int(match.group(2)), int(match.group(3))
    return tuple(f"{token}w{i} " for i in range(chunks)), delay_ms / 1000


def expected_reply(content: str) -> str:
    """The full text PlannedUpstream streams for this user message."""
    plan = plan_of(content)
    assert plan is not None, f"not a planned message: {content[:80]!r}"
    return "".join(plan[0])


class PlannedUpstream(ScriptedUpstream):
    """Unscripted requests are answered as their last user message plans (`planned()`);
    others fall back to the echo. Explicit scripts (reply, fail, ...) still come first."""

    @staticmethod
    def _echo(body: Any) -> _Reply:
        messages = body.get("messages") or []
        last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        plan = plan_of(str(last.get("content", ""))) if last else None
        if plan is None:
            return ScriptedUpstream._echo(body)
        return _Reply(plan[0], plan[1])


def threaded(upstream: ScriptedUpstream) -> ThreadedUpstream:
    """This upstream on its own loop in a thread (for tests with a server process)."""
    runner = ThreadedUpstream()
    runner.upstream = upstream
    return runner


def route_env(base_url: str, **extra: str) -> dict[str, str]:
    """Routing for a server whose only provider is the scripted upstream."""
    return {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "DEFAULT_MODEL_ROUTE": "FAST",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": base_url,
        "READ_TIMEOUT_SECONDS": "20",
        "MAX_RETRIES": "1",
        "BYOK_LOG_LEVEL": "WARNING",
        # These tests open more concurrent streams than one user may by default (16).
        "MAX_STREAMS_PER_USER": "1000",
        **extra,
    }


# -- an upstream that misbehaves at the TCP level ---------------------------------------


class SocketUpstream:
    """Answers every request with a 200 event stream (chunked) of `chunks` OpenAI content
    chunks, waits `settle` seconds (so the client has read them), then either resets the
    connection (`then="reset"`: SO_LINGER 0, a TCP RST, not a FIN) or sends nothing more
    (`then="stall"`) until the client goes away."""

    def __init__(self, chunks: Iterable[str], *, then: str, settle: float = 0.5) -> None:
        assert then in {"reset", "stall"}
        self.chunks = list(chunks)
        self.then = then
        self.settle = settle
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> SocketUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for text in self.chunks:
                chunk = {
                    "id": "chatcmpl-socket",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
                event = f"data: {json.dumps(chunk)}\n\n".encode()
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
            await asyncio.sleep(self.settle)
            if self.then == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            await reader.read()  # stall: nothing more until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


# -- a preloaded server for fast restarts ----------------------------------------------


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BYOK_", "MODEL_ROUTE_", "PROVIDER_", "OPENAI_"))
    }
    env.update(extra)
    return env


def _zygote_main() -> None:
    """Runs in the ForkServer process: imports byok-server once, then forks one
    `byok-server serve` per line read from stdin and answers with its pid."""
    from byok.server import cli
    from byok.server.chat import tokens

    tokens.count_tokens("warm up the tokenizer before forking")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _serve_child(cli.main, request)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


def _serve_child(main: Callable[[], None], request: dict[str, Any]) -> NoReturn:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["byok-server", "serve"]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class ForkedServer:
    """One `byok-server serve` forked from a ForkServer."""

    pid: int
    grpc_port: int
    http_port: int
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, then waits until the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {self.pid} survived SIGKILL for 30 s")
            time.sleep(0.01)

    async def wait_ready(self, within: float = 120.0) -> float:
        """Polls /readyz; returns the seconds it took."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() - started < within:
                if not self.alive():
                    raise RuntimeError(f"byok-server exited while starting:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.http_url}/readyz")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.05)
        raise TimeoutError(f"byok-server was not ready within {within:g}s:\n{self.log()}")


class ForkServer:
    """A process that has imported byok-server and forks a `serve` on demand: each start
    then costs the server's own start-up (store, migrations check, listeners), not the
    ~2 CPU-seconds of imports. What runs after the fork is exactly `byok-server serve`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.children: list[ForkedServer] = []
        self._lines: queue.Queue[str] = queue.Queue()

    def __enter__(self) -> ForkServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        code = "from tests.reliability.conftest import _zygote_main; _zygote_main()"
        with (self.log_dir / "forkserver.log").open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=REPO,
                env=_clean_env({}),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        ready = self._line(timeout=240)
        assert ready == "ready", f"the fork server said {ready!r}"
        return self

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.strip())

    def _line(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the fork server did not answer within {timeout:g}s") from None

    def spawn(self, data_dir: Path, env: dict[str, str]) -> ForkedServer:
        assert self.proc is not None and self.proc.stdin is not None
        grpc_port, http_port = free_port(), free_port()
        log_path = self.log_dir / "server.log"
        request = {
            "env": _clean_env(
                {
                    "BYOK_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
                    "BYOK_HTTP_ADDR": f"127.0.0.1:{http_port}",
                    "BYOK_DATA_DIR": str(data_dir),
                    **env,
                }
            ),
            "log": str(log_path),
            "cwd": str(data_dir.parent),
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        child = ForkedServer(int(self._line(timeout=60)), grpc_port, http_port, log_path)
        self.children.append(child)
        return child

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                child.kill()
        if self.proc is not None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# -- the database, as a fresh process sees it -------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    id: str
    conversation_id: str
    role: int
    content: str
    status: int
    incomplete_reason: str
    finish_reason: str


_WORD = re.compile(r"\w+")


def check_database(path: Path) -> list[StoredMessage]:
    """Opens the database file directly and checks it is whole: `PRAGMA integrity_check`,
    FTS5's own integrity-check, the index holds exactly the stored messages, and the
    longest word of every message finds it. Returns the messages in stored order."""
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout = 30000")
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        con.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
        rows = con.execute(
            "SELECT m.seq, m.id, c.id, m.role, m.content, m.status, m.incomplete_reason,"
            " m.finish_reason FROM messages m JOIN conversations c ON c.seq = m.conversation_seq"
            " ORDER BY m.seq"
        ).fetchall()
        messages = [StoredMessage(*row) for row in rows]
        con.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_terms"
            " USING fts5vocab(main, messages_fts, 'instance')"
        )
        indexed = {doc for (doc,) in con.execute("SELECT DISTINCT doc FROM temp.fts_terms")}
        stored = {m.seq for m in messages}
        assert indexed == stored, (
            f"FTS index and messages differ: only indexed {sorted(indexed - stored)[:10]}, "
            f"only stored {sorted(stored - indexed)[:10]}"
        )
        for m in messages:
            words = _WORD.findall(m.content)
            if not words:
                continue
            word = max(words, key=len)
            hit = con.execute(
                "SELECT 1 FROM messages_fts WHERE messages_fts MATCH ? AND rowid = ?",
                (f'content : "{word}"', m.seq),
            ).fetchone()
            assert hit is not None, f"searching {word!r} does not find message {m.id}"
        return messages
    finally:
        con.close()


# -- figures ----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """The resident set size of a process, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def emit(capsys: pytest.CaptureFixture[str], title: str, lines: Iterable[str]) -> None:
    """Prints figures to the terminal, past pytest's capture."""
    with capsys.disabled():
        _print(title, lines)


def emit_from(config: pytest.Config, title: str, lines: Iterable[str]) -> None:
    """`emit` for module-scoped fixtures, which have no capsys."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    disabled = (
        capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    )
    with disabled:
        _print(title, lines)


def _print(title: str, lines: Iterable[str]) -> None:
    print(f"\n[{title}]")
    for line in lines:
        print(f"  {line}")
    sys.stdout.flush()
