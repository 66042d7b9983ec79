"""Structured logs: one JSON object per line (or readable text on a terminal), with the
request id and user of the call that logged, and secrets scrubbed as a last line of
defence.

- `configure_logging(level, fmt)` installs one handler on the root logger and sends
  uvicorn's loggers through it (uvicorn must be built with `log_config=None`).
- `current_request_id` / `current_log_user` are set per call (the gRPC interceptor
  does it); every record logged inside the call carries them.
- `log_rpc(...)` writes the one access line per RPC.
- `RedactingFilter` scrubs API-key shapes (`sk-…`, `byok_…`, `Bearer …`, URL
  passwords) from every record. Code must not log secrets in the first place.
- `content_for_log(text)` is how message content may appear in a log: only with
  LOG_CONTENT=true, else "[redacted N chars]".
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import IO, Any, Literal

import orjson

LogFormat = Literal["json", "text", "auto"]

ACCESS_LOGGER = "byok.access"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# HTTP clients that log every request at INFO: the upstream call of each chat turn
# ("HTTP Request: POST …/chat/completions 200 OK"), a second line per turn beside the
# access line, and a tenth of a millisecond of the server's CPU per turn. Shown at DEBUG.
CHATTY_LOGGERS = ("httpx2", "httpx")

current_request_id: ContextVar[str | None] = ContextVar("byok_request_id", default=None)
current_log_user: ContextVar[str | None] = ContextVar("byok_log_user", default=None)

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # the REST gateway's rule too
_log_content = False

# Attributes every LogRecord has; anything else on a record is an `extra` field.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_RESERVED = _STANDARD | {"request_id", "user"}  # printed in their own place

_SECRET_PATTERNS = (
    # OpenAI-style keys: sk-..., sk-proj-..., sk-ant-...
    (re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{8,}"), "sk-[REDACTED]"),
    # byok API keys: byok_ + 43 URL-safe characters. The lookahead wants an uppercase
    # letter or digit, so identifiers like byok_llm_requests_total stay readable.
    (
        re.compile(r"(?<![A-Za-z0-9_-])byok_(?=[A-Za-z0-9_-]*[A-Z0-9])[A-Za-z0-9_-]{16,}"),
        "byok_[REDACTED]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    # Passwords in URLs: redis://:secret@host, postgresql://user:secret@host
    (re.compile(r"(://[^/\s:@]*):[^@\s/]+@"), r"\1:[REDACTED]@"),
)


def redact(text: str) -> str:
    """`text` with anything shaped like an API key, bearer token or URL password replaced."""
    # Fast path: most log text contains none of the markers (substring tests are cheap).
    if not (
        "sk-" in text or "byok_" in text or "://" in text or "earer" in text or "EARER" in text
    ):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def new_request_id() -> str:
    return str(uuid.uuid4())


def accept_request_id(value: str | None) -> str:
    """A caller's x-request-id if it is 1-128 printable ASCII characters, else a new id."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def request_id_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The request id from gRPC invocation metadata (`x-request-id`, which the REST
    gateway forwards), or a new one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str):
            return accept_request_id(value)
    return new_request_id()


def set_log_content(enabled: bool) -> None:
    """LOG_CONTENT: whether message content may appear in logs."""
    global _log_content
    _log_content = enabled


def content_for_log(text: str) -> str:
    """Message content as it may be logged: the text (secrets still scrubbed) with
    LOG_CONTENT=true, else "[redacted N chars]"."""
    if _log_content:
        return redact(text)
    return f"[redacted {len(text)} chars]"


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record's message and args, traceback, stack and extra
    string fields. Attach it to handlers: a handler filter sees every record the
    handler emits, propagated ones included."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # args that do not fit the format: keep both, as text
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


def _context(record: logging.LogRecord) -> tuple[str | None, str | None]:
    request_id = getattr(record, "request_id", None) or current_request_id.get()
    user = getattr(record, "user", None) or current_log_user.get()
    return request_id, user


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _iso_time(record: logging.LogRecord) -> str:
    """2026-03-01T12:00:00.123Z (UTC). Lines come many a second under load, so a
    formatted second is reused (a cache several threads may share)."""
    return f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = vars(record)
    extra = fields.keys() - _RESERVED
    if not extra:
        return {}
    return {key: value for key, value in fields.items() if key in extra}  # in order


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, request_id,
    user, then the record's extra fields, then `exc` / `stack` when present."""

    def format(self, record: logging.LogRecord) -> str:
        request_id, user = _context(record)
        out: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id,
            "user": user,
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:  # an extra field JSON does not know goes out as its text
            return orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:  # what only the stdlib writes (lone surrogates)
            return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [key=value ...]` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        request_id, user = _context(record)
        fields = {"request_id": request_id, "user": user, **_extras(record)}
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{head} {extra}{sep}{tail}" if extra else line


def configure_logging(
    level: str,
    fmt: LogFormat = "auto",
    *,
    stream: IO[str] | None = None,
    log_content: bool = False,
) -> logging.Handler:
    """Installs byok's one log handler on the root logger (replacing one installed
    before), routes uvicorn's loggers through it and keeps per-request client logs
    (CHATTY_LOGGERS) for DEBUG. `auto` is text on a TTY, JSON otherwise. Returns the
    handler."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if _isatty(out) else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    handler.set_name("byok")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "byok":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    chatty = root.level if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    set_log_content(log_content)
    return handler


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_access = logging.getLogger(ACCESS_LOGGER)


def log_rpc(method: str, user: str, code: str, duration_s: float, request_id: str) -> None:
    """The access line of one RPC, at INFO on `byok.access`."""
    if _access.isEnabledFor(logging.INFO):
        _access.info(
            "%s %s %.1fms",
            method,
            code,
            duration_s * 1000,
            extra={
                "method": method,
                "user": user,
                "code": code,
                "duration_s": round(duration_s, 6),
                "request_id": request_id,
            },
        )
