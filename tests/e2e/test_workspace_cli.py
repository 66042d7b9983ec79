"""`byok models|profiles|spaces|keys` as a user runs them, against `byok-server serve`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from byok.server.accounts.provider_keys import new_master_key
from tests.support.servers import BIN, ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "MODEL_ROUTE_LOCAL": "local/smollm2-135m",
        "DEFAULT_MODEL_ROUTE": "LOCAL",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "BYOK_MASTER_KEY": new_master_key(),
    }
    proc = ServerProcess(tmp_path_factory.mktemp("ws") / "data", env)
    proc.start()
    yield proc
    proc.kill()


def byok(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "byok"), "--server", server.grpc_target, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_models_ls_shows_routes_and_the_default(server: ServerProcess) -> None:
    listed = byok(server, "models", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    models = {m["routeKey"]: m for m in json.loads(listed.stdout)}
    assert set(models) == {"FAST", "LOCAL"}
    assert models["LOCAL"].get("isDefault") and models["LOCAL"]["source"]["local"]
    assert models["FAST"]["source"]["baseUrlHost"] == "127.0.0.1:9"
    table = byok(server, "models", "ls")
    assert "FAST" in table.stdout and "gpt-4o-mini" in table.stdout


def test_profiles_and_spaces(server: ServerProcess) -> None:
    made = byok(
        server,
        "profiles",
        "create",
        "--model",
        "local",
        "--id",
        "terse",
        "--name",
        "Terse",
        "--system",
        "Be brief.",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "modelProfiles/terse"
    space = byok(server, "spaces", "create", "Work", "--id", "work", "--json")
    assert space.returncode == 0, space.stderr
    linked = byok(server, "spaces", "link", "work", "terse", "--default")
    assert linked.returncode == 0, linked.stderr
    shown = byok(server, "spaces", "show", "work", "--json")
    assert json.loads(shown.stdout)["defaultModelProfile"] == "modelProfiles/terse"
    refused = byok(server, "profiles", "create", "--model", "nope")
    assert refused.returncode == 1 and "nope" in refused.stderr


def test_keys_set_ls_rm_never_show_the_key(server: ServerProcess, tmp_path: Path) -> None:
    secret = "sk-cli-secret-0123456789ABCD"
    stored = byok(server, "keys", "set", "openai", "--key", secret)
    assert stored.returncode == 0, stored.stderr
    assert secret not in stored.stdout + stored.stderr and "ABCD" in stored.stderr
    listed = byok(server, "keys", "ls", "--json")
    assert [(k["provider"], k["last4"]) for k in json.loads(listed.stdout)] == [("openai", "ABCD")]
    assert secret not in listed.stdout
    assert byok(server, "keys", "rm", "openai").returncode == 0
    assert json.loads(byok(server, "keys", "ls", "--json").stdout) == []
    missing = byok(server, "keys", "rm", "openai")
    assert missing.returncode == 1 and "not found" in missing.stderr
