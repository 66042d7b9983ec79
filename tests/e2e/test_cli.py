"""The `byok` CLI as a user runs it, against a real `byok-server` process.

Data goes in through the Python client; the CLI is a subprocess, so these tests see
exactly what a person (or a script reading --json) sees: stdout, stderr, exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from byok.client import ByokError, Client
from byok.v1 import conversations_pb2
from tests.support.servers import BIN, ServerProcess, free_port

WORD = "quokka"  # appears in one message only, so search results are predictable


@dataclass
class Seeded:
    server: ServerProcess
    lisbon: str  # conversation names
    sourdough: str


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """One server for the whole file, with two conversations made through the client."""
    server = ServerProcess(tmp_path_factory.mktemp("cli") / "data")
    server.start()
    try:
        with Client(server.grpc_target) as client:
            lisbon = client.create_conversation("Trip to Lisbon", conversation_id="lisbon")
            client.create_message(lisbon.name, f"Plan 3 days in Lisbon; I want to see a {WORD}")
            client.create_message(lisbon.name, "Day 1: Alfama and the castle.", "assistant")
            client.create_message(
                lisbon.name,
                "Day 2: Belém for past",
                "assistant",
                model="gpt-4o-mini",
                status=conversations_pb2.MESSAGE_STATUS_INCOMPLETE,
                incomplete_reason="cancelled",
            )
            sourdough = client.create_conversation("Sourdough starter", pinned=True)
            client.create_message(sourdough.name, "How long should a sourdough starter rest?")
        yield Seeded(server, lisbon.name, sourdough.name)
    finally:
        try:
            server.terminate(timeout=15)
        finally:
            server.kill()


def byok(
    *args: str, target: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `byok [--server target] args...` with no BYOK_* variables of the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BYOK_")}
    clean.update(env or {})
    server = ["--server", target] if target else []
    return subprocess.run(
        [str(BIN / "byok"), *server, *args],
        capture_output=True,
        text=True,
        env=clean,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_ls_shows_a_table_and_json(seeded: Seeded) -> None:
    target = seeded.server.grpc_target
    table = ok(byok("conversations", "ls", target=target))
    assert table.splitlines()[0].split()[:2] == ["ID", "TITLE"]
    assert "Trip to Lisbon" in table and "Sourdough starter" in table
    lisbon_row = next(line for line in table.splitlines() if line.startswith("lisbon "))
    assert " 3 " in lisbon_row and "gpt-4o-mini" in lisbon_row

    listed = json.loads(ok(byok("conv", "ls", "--json", target=target)))
    by_name = {c["name"]: c for c in listed}
    assert by_name[seeded.lisbon]["title"] == "Trip to Lisbon"
    assert by_name[seeded.lisbon]["messageCount"] == "3"  # proto3 JSON: int64 is a string
    assert by_name[seeded.sourdough]["pinned"] is True

    # The global --json, and the address from BYOK_GRPC_ADDR instead of --server.
    again = json.loads(
        ok(byok("--json", "conv", "ls", target=None, env={"BYOK_GRPC_ADDR": target}))
    )
    assert {c["name"] for c in again} == set(by_name)

    only_pinned = json.loads(
        ok(byok("conv", "ls", "--filter", "pinned = true", "--json", target=target))
    )
    assert [c["name"] for c in only_pinned] == [seeded.sourdough]


def test_show_prints_the_thread_and_marks_incomplete_replies(seeded: Seeded) -> None:
    out = ok(byok("conv", "show", "lisbon", target=seeded.server.grpc_target))
    lines = out.splitlines()
    assert lines[0] == "Trip to Lisbon"
    assert "conversations/lisbon" in lines[1] and "3 messages" in lines[1]
    assert f"Plan 3 days in Lisbon; I want to see a {WORD}" in lines
    assert lines.index("user") < lines.index("Day 1: Alfama and the castle.")
    incomplete = [line for line in lines if "INCOMPLETE" in line]
    assert incomplete == ["assistant · gpt-4o-mini [INCOMPLETE: cancelled]"]

    shown = json.loads(
        ok(byok("conv", "show", seeded.lisbon, "--json", target=seeded.server.grpc_target))
    )
    roles = [m["role"] for m in shown["messages"]]
    assert roles == ["ROLE_USER", "ROLE_ASSISTANT", "ROLE_ASSISTANT"]
    assert shown["messages"][2]["status"] == "MESSAGE_STATUS_INCOMPLETE"


def test_search_finds_a_word_with_marked_snippets(seeded: Seeded) -> None:
    target = seeded.server.grpc_target
    out = ok(byok("conv", "search", WORD, target=target))
    assert f"Trip to Lisbon  {seeded.lisbon}" in out
    assert f"[{WORD}]" in out  # piped output keeps the marks as sent
    assert "  user · " in out

    hits = json.loads(ok(byok("conv", "search", WORD, "--json", target=target)))
    assert len(hits) == 1
    assert f"[{WORD}]" in hits[0]["snippet"]
    assert hits[0]["conversation"] == seeded.lisbon
    assert hits[0]["message"]["role"] == "ROLE_USER"

    # Scoped to a conversation, ordered by time, limited.
    inside = json.loads(
        ok(
            byok(
                "conv",
                "search",
                "sourdough",
                "--in",
                seeded.sourdough,
                "--order-by",
                "create_time desc",
                "--limit",
                "1",
                "--json",
                target=target,
            )
        )
    )
    assert [h["conversation"] for h in inside] == [seeded.sourdough]
    nothing = byok("conv", "search", "zebra", target=target)
    assert ok(nothing) == "" and "no matches" in nothing.stderr


def test_export_then_import_twice_creates_no_duplicates(seeded: Seeded, tmp_path: Path) -> None:
    target = seeded.server.grpc_target
    with Client(target) as client:
        before = len(list(client.list_conversations(filter="archived = false")))
    path = tmp_path / "export.json"
    exported = byok("conv", "export", "-o", str(path), target=target)
    assert ok(exported) == ""
    document = json.loads(path.read_text())
    count = len(document["conversations"])
    messages = sum(len(c["messages"]) for c in document["conversations"])
    assert count == before >= 2
    assert exported.stderr.strip() == f"exported {count} conversations, {messages} messages"
    assert not list(tmp_path.glob("*.partial"))

    first = ok(byok("conv", "import", str(path), target=target))
    assert first.startswith("created ")
    second = ok(byok("conv", "import", str(path), target=target))
    assert second.strip() == f"created 0, skipped {count}, failed 0"
    with Client(target) as client:
        assert len(list(client.list_conversations(page_size=1))) == before

    one = byok("conv", "export", "lisbon", target=target)  # to stdout
    assert [c["name"] for c in json.loads(ok(one))["conversations"]] == [seeded.lisbon]


def test_a_bad_import_file_shows_the_field_violations(seeded: Seeded, tmp_path: Path) -> None:
    path = tmp_path / "chatgpt.json"
    path.write_text(json.dumps([{"id": "x", "title": "broken"}]))
    target = seeded.server.grpc_target
    result = byok("conv", "import", str(path), "--format", "chatgpt", target=target)
    assert result.returncode == 1, result.stdout + result.stderr
    first, *violations = result.stderr.splitlines()
    assert first.startswith("byok: ") and "mapping" in first
    assert violations and all(v.startswith("  data[0].") for v in violations)


def test_rm_deletes_and_refuses_without_confirmation(seeded: Seeded) -> None:
    target = seeded.server.grpc_target
    with Client(target) as client:
        doomed = client.create_conversation("Delete me")
        short_id = doomed.name.removeprefix("conversations/")

        refused = byok("conv", "rm", short_id, target=target)  # stdin is not a terminal
        assert refused.returncode == 1
        assert refused.stderr.startswith("byok: not deleting")
        client.get_conversation(doomed.name)  # still there

        assert ok(byok("conv", "rm", short_id, "--yes", target=target)) == (
            f"deleted {doomed.name}\n"
        )
        with pytest.raises(ByokError) as gone:
            client.get_conversation(short_id)
        assert gone.value.code == "NOT_FOUND"

    pinned = byok("conv", "rm", seeded.sourdough, "--yes", target=target)
    assert pinned.returncode == 1 and "pinned" in pinned.stderr
    assert len(pinned.stderr.splitlines()) == 1


def test_unknown_conversation_is_one_line_and_exit_1(seeded: Seeded) -> None:
    result = byok("conv", "show", "nope", target=seeded.server.grpc_target)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "byok: conversations/nope not found\n"


def test_invalid_argument_shows_the_servers_message(seeded: Seeded) -> None:
    result = byok("conv", "ls", "--filter", "colour = 1", target=seeded.server.grpc_target)
    assert result.returncode == 1
    assert result.stderr.startswith("byok: filter: unknown field 'colour'")
    assert "Traceback" not in result.stderr


def test_server_down_is_a_hint_not_a_traceback() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = byok("conv", "ls", target=address)
    assert result.returncode == 1
    assert result.stderr == (
        f"byok: cannot reach the byok server at {address} "
        "(is it running? start it with: make run)\n"
    )


def test_client_errors_carry_the_google_rpc_details(seeded: Seeded) -> None:
    with Client(seeded.server.grpc_target) as client:
        with pytest.raises(ByokError) as missing:
            client.get_conversation("nope")
        assert missing.value.code == "NOT_FOUND"
        assert missing.value.reason == "RESOURCE_NOT_FOUND"
        assert missing.value.metadata == {"name": "conversations/nope"}
        assert not missing.value.unreachable

        with pytest.raises(ByokError) as invalid:
            next(client.list_conversations(filter="colour = 1"))
        assert invalid.value.code == "INVALID_ARGUMENT"
        assert [v.field for v in invalid.value.field_violations] == ["filter"]

        # Paging: one conversation per page still yields every one, once.
        names = [c.name for c in client.list_conversations(page_size=1)]
        assert len(names) == len(set(names)) >= 2
        assert [m.content for m in client.list_messages("lisbon", page_size=1)][1:] == [
            "Day 1: Alfama and the castle.",
            "Day 2: Belém for past",
        ]
