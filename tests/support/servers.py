"""Real byok servers for tests: in-process on port 0, or as a `byok-server` process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from byok.server.app import App
from byok.server.config import load_routing, load_settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class RunningServer:
    app: App
    grpc_target: str
    http_url: str


@contextlib.asynccontextmanager
async def running_app(
    data_dir: Path, *, routes: dict[str, str] | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """Starts the real App on ephemeral loopback ports with its own data folder.

    `routes` is the routing environment (MODEL_ROUTE_*, OPENAI_*, ...); the machine's
    own environment is never used, so a developer's real keys cannot leak into tests.
    """
    if TEST_BACKEND == "postgres" and "database_url" not in overrides:
        overrides["database_url"] = await postgres_for(data_dir)
    settings = load_settings(
        grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0", data_dir=data_dir, **overrides
    )
    app = App(settings, load_routing(routes or {}))
    await app.start()
    try:
        yield RunningServer(app, f"127.0.0.1:{app.grpc_port}", f"http://127.0.0.1:{app.http_port}")
    finally:
        await app.stop(grace=1.0)


# `make test` runs the service tests once per backend: BYOK_TEST_BACKEND=postgres makes
# every in-process server use its own fresh PostgreSQL database.
TEST_BACKEND = os.environ.get("BYOK_TEST_BACKEND", "sqlite")
POSTGRES_ADMIN = os.environ.get(
    "BYOK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_name(data_dir: Path) -> str:
    return "byok_t_" + hashlib.sha1(str(data_dir).encode(), usedforsecurity=False).hexdigest()[:16]


async def postgres_for(data_dir: Path) -> str:
    """The test database that stands for `data_dir` on the machine's PostgreSQL: made on
    first use, so a server restarted on the same data folder finds its data again.
    `drop_test_databases()` removes them when the run ends."""
    import asyncpg

    name = _postgres_name(data_dir)
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
    except OSError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN} ({exc}); start it with: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from exc
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"


async def drop_test_databases() -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        names = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'byok\\_t\\_%'"
        )
        for row in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """`byok-server serve` in a child process, as a user runs it."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    scheme: str = "http"
    ca: Path | None = None  # trust this certificate for the readiness probe (TLS)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BYOK_", "MODEL_ROUTE_", "PROVIDER_", "OPENAI_"))
        }
        env.update(
            BYOK_GRPC_ADDR=self.grpc_target,
            BYOK_HTTP_ADDR=f"127.0.0.1:{self.http_port}",
            BYOK_DATA_DIR=str(self.data_dir),
            **self.env,
        )
        self.log_path = self.data_dir.parent / f"server-{self.grpc_port}.log"
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [str(BIN / "byok-server"), "serve"],
            env=env,
            cwd=self.data_dir.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"byok-server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                verify: ssl.SSLContext | bool = (
                    ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
                )
                ready = httpx.get(f"{self.http_url}/readyz", timeout=1.0, verify=verify)
                if ready.status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"byok-server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def server_process(data_dir: Path, **env: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, env)
    server.start()
    try:
        yield server
    finally:
        server.kill()
