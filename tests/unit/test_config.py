from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from byok.server.config import Address, SettingsError, load_settings, parse_address
from tests.support.servers import BIN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", Address("127.0.0.1", 50051)),
        ("localhost:0", Address("localhost", 0)),
        ("[::1]:8080", Address("::1", 8080)),
        (" 0.0.0.0:80 ", Address("0.0.0.0", 80)),
    ],
)
def test_parse_address_accepts_host_port(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["nonsense", ":50051", "host:", "host:70000", "[::1]8080", "h:x"])
def test_parse_address_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_loopback_detection() -> None:
    assert Address("127.0.0.1", 1).is_loopback
    assert Address("::1", 1).is_loopback
    assert Address("localhost", 1).is_loopback
    assert not Address("0.0.0.0", 1).is_loopback


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for var in ("BYOK_GRPC_ADDR", "BYOK_HTTP_ADDR", "BYOK_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    assert str(settings.grpc_addr) == "127.0.0.1:50051"
    assert str(settings.http_addr) == "127.0.0.1:8080"
    assert settings.data_dir.name == "byok"


def test_env_file_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BYOK_GRPC_ADDR", raising=False)
    (tmp_path / ".env").write_text("BYOK_GRPC_ADDR=127.0.0.1:6000\nBYOK_HTTP_ADDR=127.0.0.1:6001\n")
    monkeypatch.setenv("BYOK_HTTP_ADDR", "127.0.0.1:7001")
    settings = load_settings(data_dir=tmp_path / "d")
    assert settings.grpc_addr.port == 6000  # from .env
    assert settings.http_addr.port == 7001  # the environment wins over .env
    assert settings.data_dir == tmp_path / "d"  # a CLI flag wins over both
    assert load_settings(grpc_addr="127.0.0.1:9").grpc_addr.port == 9


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_GRPC_ADDR", "nonsense")
    monkeypatch.setenv("BYOK_SHUTDOWN_GRACE_SECONDS", "-3")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "BYOK_GRPC_ADDR" in message and "nonsense" in message
    assert "BYOK_SHUTDOWN_GRACE_SECONDS" in message
    assert "\n" not in message


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().event_loop == "auto"
    monkeypatch.setenv("BYOK_EVENT_LOOP", " AsyncIO ")
    assert load_settings().event_loop == "asyncio"
    monkeypatch.setenv("BYOK_EVENT_LOOP", "trio")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "BYOK_EVENT_LOOP" in str(info.value)
    assert "'trio' is not auto, uvloop or asyncio" in str(info.value)


def test_bad_setting_stops_the_start_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "byok-server"), "serve"],
        env={"BYOK_GRPC_ADDR": "nonsense", "BYOK_DATA_DIR": str(tmp_path), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("byok-server: invalid setting BYOK_GRPC_ADDR")
    assert "Traceback" not in result.stderr
