"""Metrics, structured logs and request ids (docs/observability.md).

`begin_rpc` / `RpcCall` are what the gRPC interceptor needs around one call: the
request id and arrival time in context, the go-grpc-prometheus counters, and the one
access-log line at the end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from byok.server.errors import ByokError
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
from byok.server.observability.metrics import (
    HttpMetricsMiddleware,
    LlmTurn,
    Metrics,
    error_kind,
    instrument_store,
    rpc_received_at,
    sqlite_size,
)

__all__ = [
    "HttpMetricsMiddleware",
    "LlmTurn",
    "Metrics",
    "RpcCall",
    "accept_request_id",
    "begin_rpc",
    "configure_logging",
    "content_for_log",
    "current_log_user",
    "current_request_id",
    "error_kind",
    "instrument_store",
    "log_rpc",
    "new_request_id",
    "redact",
    "request_id_from_metadata",
    "rpc_received_at",
    "sqlite_size",
    "status_of",
]

_ONE_REQUEST = frozenset({"unary", "server_stream"})


class RpcCall:
    """One RPC in flight: `message_sent()` per response message, `finish()` once."""

    __slots__ = ("_finished", "_metrics", "_start", "grpc_type", "method", "request_id")

    def __init__(
        self, metrics: Metrics | None, method: str, grpc_type: str, request_id: str
    ) -> None:
        self._metrics = metrics
        self.method = method
        self.grpc_type = grpc_type
        self.request_id = request_id
        self._start = time.perf_counter()
        self._finished = False

    def message_sent(self) -> None:
        if self._metrics is not None:
            self._metrics.rpc_msg_sent(self.method, self.grpc_type)

    def finish(self, code: str, user: str) -> float:
        """Counts the call as handled with `code` and logs its access line; returns the
        duration. Only the first call counts."""
        duration = time.perf_counter() - self._start
        if self._finished:
            return duration
        self._finished = True
        if self._metrics is not None:
            self._metrics.rpc_handled(self.method, self.grpc_type, code, duration)
        log_rpc(self.method, user, code, duration, self.request_id)
        return duration


def begin_rpc(
    metrics: Metrics | None, method: str, grpc_type: str, request_id: str | None = None
) -> RpcCall:
    """Call at the top of the interceptor's wrapper (it runs in the call's own task):
    sets the request id and arrival time for everything the call logs and measures,
    and counts the call started and its request message received."""
    rid = request_id or new_request_id()
    current_request_id.set(rid)
    call = RpcCall(metrics, method, grpc_type, rid)
    rpc_received_at.set(call._start)
    if metrics is not None:
        metrics.rpc_started(method, grpc_type)
        if grpc_type in _ONE_REQUEST:
            metrics.rpc_msg_received(method, grpc_type)
    return call


def status_of(exc: BaseException | None, context: Any) -> str:
    """The canonical status name a call ended with: OK, a domain error's code,
    CANCELLED when the caller went away, the code an abort set, else INTERNAL."""
    if isinstance(exc, ByokError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    try:
        code = context.code()
    except Exception:  # a context without code(): decide from the exception alone
        code = None
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code.name
    if exc is None:
        return "OK"
    if isinstance(exc, grpc.aio.AbortError):
        return "UNKNOWN"
    return "INTERNAL"
