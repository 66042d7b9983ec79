"""Structured logs: JSON lines, context fields, the access line, redaction, uvicorn."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from byok.server.observability import logs
from byok.server.observability.logs import (
    accept_request_id,
    configure_logging,
    content_for_log,
    current_log_user,
    current_request_id,
    log_rpc,
    new_request_id,
    redact,
    request_id_from_metadata,
)

OPENAI_KEY = "sk-proj-Abc123def456ghi789JKL"
BYOK_KEY = "byok_" + "Q2xhdWRlIHNheXMgaGkhIFRoaXMgaXMgYSB0ZXN0a2V5"


class Capture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    uv = {n: (logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in
          logs.UVICORN_LOGGERS}  # fmt: skip
    chatty = {n: logging.getLogger(n).level for n in logs.CHATTY_LOGGERS}
    yield
    for name, old_level in chatty.items():
        logging.getLogger(name).setLevel(old_level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, (propagate, old) in uv.items():
        logger = logging.getLogger(name)
        logger.propagate = propagate
        logger.handlers[:] = old
    logs.set_log_content(False)


@pytest.fixture
def json_logs(restore_logging: None) -> Capture:
    capture = Capture()
    configure_logging("INFO", "json", stream=capture.stream)
    return capture


def in_call(fn: Any, request_id: str | None, user: str | None) -> None:
    def run() -> None:
        current_request_id.set(request_id)
        current_log_user.set(user)
        fn()

    contextvars.copy_context().run(run)


def test_the_upstream_clients_request_lines_only_at_debug(restore_logging: None) -> None:
    for level, shown in (("INFO", False), ("DEBUG", True)):
        capture = Capture()
        configure_logging(level, "json", stream=capture.stream)
        logging.getLogger("httpx2").info('HTTP Request: POST http://127.0.0.1/v1 "200 OK"')
        logging.getLogger("httpx2").warning("something worth a warning")
        messages = [r["message"] for r in capture.records()]
        assert ('HTTP Request: POST http://127.0.0.1/v1 "200 OK"' in messages) is shown, level
        assert "something worth a warning" in messages


def test_json_line_has_the_fields(json_logs: Capture) -> None:
    log = logging.getLogger("byok.test")
    in_call(lambda: log.info("hello %s", "world", extra={"route": "FAST"}), "rid-1", "ada")
    log.warning("outside a call\nsecond line")
    first, second = json_logs.records()
    assert first["message"] == "hello world"
    assert first["level"] == "INFO" and first["logger"] == "byok.test"
    assert first["request_id"] == "rid-1" and first["user"] == "ada"
    assert first["route"] == "FAST"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["request_id"] is None and second["user"] is None
    assert second["message"] == "outside a call\nsecond line"
    assert len(json_logs.lines()) == 2  # one object per line, newlines escaped


def test_times_are_utc_with_milliseconds_across_seconds() -> None:
    def at(created: float) -> str:
        record = logging.LogRecord("byok.test", logging.INFO, "", 0, "x", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        return logs._iso_time(record)

    assert at(1_780_000_000.5) == "2026-05-28T20:26:40.500Z"
    assert at(1_780_000_000.999) == "2026-05-28T20:26:40.999Z"
    assert at(1_780_000_001.0) == "2026-05-28T20:26:41.000Z"
    assert at(1_780_000_000.25) == "2026-05-28T20:26:40.250Z"  # a late record, same second


def test_fields_json_cannot_hold_still_make_one_line(json_logs: Capture) -> None:
    log = logging.getLogger("byok.test")
    log.info("odd fields", extra={"path": logging.Logger, "big": 2**70})
    log.info("a lone surrogate: \ud800")
    first, second = json_logs.records()
    assert first["path"] == str(logging.Logger) and first["big"] == 2**70
    assert second["message"] == "a lone surrogate: \ud800"


def test_debug_is_filtered_by_level(json_logs: Capture) -> None:
    logging.getLogger("byok.test").debug("not shown")
    assert json_logs.lines() == []


def test_exceptions_are_one_json_line(json_logs: Capture) -> None:
    try:
        raise RuntimeError(f"upstream said: invalid key {OPENAI_KEY}")
    except RuntimeError:
        logging.getLogger("byok.test").exception("failed")
    [record] = json_logs.records()
    assert "RuntimeError" in record["exc"] and "Traceback" in record["exc"]
    assert OPENAI_KEY not in json_logs.stream.getvalue()
    assert "sk-[REDACTED]" in record["exc"]


def test_log_rpc_writes_one_access_line(json_logs: Capture) -> None:
    log_rpc("/byok.v1.ChatService/StreamChat", "ada", "OK", 0.01234, "rid-9")
    [record] = json_logs.records()
    assert record["logger"] == "byok.access" and record["level"] == "INFO"
    assert record["method"] == "/byok.v1.ChatService/StreamChat"
    assert record["code"] == "OK" and record["user"] == "ada"
    assert record["request_id"] == "rid-9"
    assert record["duration_s"] == pytest.approx(0.01234)
    assert record["message"] == "/byok.v1.ChatService/StreamChat OK 12.3ms"


def test_secrets_are_scrubbed_from_message_args_and_extras(json_logs: Capture) -> None:
    log = logging.getLogger("byok.test")
    log.info("key %s and %s", OPENAI_KEY, BYOK_KEY)
    log.info("header: Authorization: Bearer %s", "abc.def-ghi")
    log.info("by mapping %(k)s", {"k": OPENAI_KEY})
    log.info("extra", extra={"detail": f"bearer {BYOK_KEY}"})
    log.info("redis://:hunter2@redis.internal:6379/0 and postgresql://u:pw@db/x")
    text = json_logs.stream.getvalue()
    for secret in (OPENAI_KEY, BYOK_KEY, "abc.def-ghi", "hunter2", ":pw@"):
        assert secret not in text
    records = json_logs.records()
    assert records[0]["message"] == "key sk-[REDACTED] and byok_[REDACTED]"
    assert records[1]["message"] == "header: Authorization: Bearer [REDACTED]"
    assert records[4]["message"].startswith("redis://:[REDACTED]@redis.internal:6379/0")


def test_redaction_leaves_ordinary_text_alone() -> None:
    text = (
        "byok_llm_requests_total task-runner sk-short byok_current_user "
        "the authorization header must be `Bearer <api key>`"
    )
    assert redact(text) == text
    assert redact(f"x{OPENAI_KEY}") == f"x{OPENAI_KEY}"  # not at a token boundary
    assert redact(f"({OPENAI_KEY})") == "(sk-[REDACTED])"


def test_text_format(restore_logging: None) -> None:
    capture = Capture()
    configure_logging("INFO", "text", stream=capture.stream)
    in_call(lambda: logging.getLogger("byok.test").info("hi %s", OPENAI_KEY), "rid-2", "bob")
    [line] = capture.lines()
    assert "INFO byok.test: hi sk-[REDACTED]" in line
    assert line.endswith("request_id=rid-2 user=bob")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_tty_and_json_otherwise(restore_logging: None) -> None:
    tty = Tty()
    configure_logging("INFO", "auto", stream=tty)
    logging.getLogger("byok.test").info("to a person")
    assert not tty.getvalue().startswith("{")
    pipe = Capture()
    configure_logging("INFO", "auto", stream=pipe.stream)  # replaces the first handler
    logging.getLogger("byok.test").info("to a machine")
    assert pipe.records()[0]["message"] == "to a machine"
    assert "to a machine" not in tty.getvalue()


def test_uvicorn_logs_go_through_the_same_handler(json_logs: Capture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    uvicorn.Config(app, log_config=None, log_level="info")  # how byok builds it
    logging.getLogger("uvicorn.error").info("Started server process")
    [record] = json_logs.records()
    assert record["logger"] == "uvicorn.error" and record["message"] == "Started server process"


def test_content_for_log(restore_logging: None) -> None:
    assert content_for_log("my secret plans") == "[redacted 15 chars]"
    configure_logging("INFO", "json", stream=io.StringIO(), log_content=True)
    assert content_for_log("plans") == "plans"
    assert content_for_log(f"my key is {OPENAI_KEY}") == "my key is sk-[REDACTED]"


def test_request_ids() -> None:
    made = new_request_id()
    assert len(made) == 36 and made != new_request_id()
    assert accept_request_id("abc-123") == "abc-123"
    assert accept_request_id("has space") != "has space"
    assert accept_request_id("x" * 129) != "x" * 129
    assert accept_request_id(None)
    assert request_id_from_metadata((("x-request-id", "from-gw"),)) == "from-gw"
    assert request_id_from_metadata((("other", "v"),)) != "from-gw"
    assert request_id_from_metadata(None)
