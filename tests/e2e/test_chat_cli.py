"""`byok chat` as a user runs it, against `byok-server serve` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import BIN, ServerProcess
from tests.support.upstream import ThreadedUpstream


def byok(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "byok"), "--server", server.grpc_target, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No routes and no keys: the embedded model answers."""
    server = ServerProcess(tmp_path_factory.mktemp("chat") / "data")
    server.start()
    yield server
    server.kill()


def test_chat_with_the_local_model_then_follow_up(local_server: ServerProcess) -> None:
    first = byok(local_server, "chat", "Say hello.", "--max-tokens", "8")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "no reply text"
    name = first.stderr.strip().splitlines()[-1]
    assert name.startswith("conversations/")

    again = byok(local_server, "chat", "-c", name, "And again.", "--max-tokens", "4")
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines()[-1] == name
    shown = byok(local_server, "conversations", "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count('"ROLE_USER"') == 2 and shown.stdout.count('"ROLE_ASSISTANT"') == 2


def test_chat_errors_are_one_line(local_server: ServerProcess) -> None:
    bad = byok(local_server, "chat", "hi", "--model", "nope")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("byok: unknown route") or "nope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr


def test_chat_streams_live_into_a_pipe(tmp_path: Path) -> None:
    with ThreadedUpstream() as upstream:
        upstream.reply(["first ", "second ", "third"], delay=0.6)
        routes = {
            "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
            "OPENAI_API_KEY": "sk-test-pipe-000000",
            "OPENAI_BASE_URL": upstream.base_url,
        }
        server = ServerProcess(tmp_path / "data", routes)
        server.start()
        try:
            proc = subprocess.Popen(
                [str(BIN / "byok"), "--server", server.grpc_target, "chat", "count"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None
            first = proc.stdout.read(6)  # returns as soon as the first delta is flushed
            seen_at = time.monotonic()
            assert first == b"first "
            assert proc.poll() is None, "the first delta only came when the process ended"
            rest, err = proc.communicate(timeout=30)
            assert time.monotonic() - seen_at > 0.8  # the rest came later, as streamed
            assert rest.decode().strip() == "second third"
            assert err.decode().strip().startswith("conversations/")
        finally:
            server.kill()
