"""Prometheus metrics for one byok process, on its own registry.

`Metrics` owns a private `CollectorRegistry`: nothing is registered globally, so two
`App`s in one test process never collide. Every event has one method; the hot paths
(`rpc_*`, `http_request`, `llm_*`) cache the labelled children per label set, so a call
costs a dict lookup and the counter/histogram update itself.

Names and labels:
- gRPC, as go-grpc-prometheus names them: `grpc_server_started_total`,
  `grpc_server_handled_total{...,grpc_code}`, `grpc_server_handling_seconds`,
  `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`
  ({grpc_type, grpc_service, grpc_method}); grpc_code in Go's spelling (NotFound).
- HTTP: `byok_http_requests_total{method,route,status}`,
  `byok_http_request_duration_seconds{method,route}`; route is the matched template.
- LLM turns ({route, model, provider}): requests, errors{kind}, input/output tokens,
  time to first token, duration, output tokens per second, active streams, upstream
  retries, and the gateway's own overhead around the upstream call.
- Storage: `byok_db_query_duration_seconds{operation}`, `byok_db_size_bytes` (read at
  scrape time from a size function).
- Rate limiting: `byok_ratelimit_refused_total{kind}`, `byok_ratelimit_backend_errors_total`.

docs/observability.md explains each one and how to query it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byok.server.errors import ByokError

# Buckets, in seconds unless named otherwise.
RPC_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
)  # fmt: skip
LLM_DURATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0,
    60.0, 90.0, 120.0, 300.0, 600.0,
)  # fmt: skip
TOKENS_PER_SECOND_BUCKETS = (
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0,
    300.0, 500.0, 1000.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
DB_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

GRPC_TYPES = frozenset({"unary", "client_stream", "server_stream", "bidi_stream"})
# grpc_code values as go-grpc-prometheus writes them (Go's codes.Code.String()), so
# dashboards and alerts written for it work unchanged.
GRPC_CODE_LABELS = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}
_GO_CODES = frozenset(GRPC_CODE_LABELS.values())
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
# Where the REST gateway puts the matched path template in the ASGI scope.
ROUTE_SCOPE_KEY = "byok.route"

# When the current RPC arrived (time.perf_counter()), set by `begin_rpc`; the chat
# engine measures its overhead from here.
rpc_received_at: ContextVar[float | None] = ContextVar("byok_rpc_received_at", default=None)

SizeFunction = Callable[[], float | None]
T = TypeVar("T")


def split_method(full_method: str) -> tuple[str, str]:
    """Splits a full method: `/byok.v1.ChatService/StreamChat` -> (service, method)."""
    service, sep, method = full_method.lstrip("/").rpartition("/")
    if not sep or not service or not method:
        return "unknown", full_method or "unknown"
    return service, method


def grpc_code_label(code_name: str) -> str:
    """A canonical status name (NOT_FOUND) as the grpc_code label (NotFound)."""
    if code_name in _GO_CODES:
        return code_name
    return GRPC_CODE_LABELS.get(code_name, "Unknown")


def error_kind(exc: BaseException) -> str:
    """The `kind` label of `byok_llm_errors_total` for an exception that ended a turn:
    a domain error's reason (UPSTREAM_RATE_LIMITED, PROVIDER_AUTH_FAILED, ...),
    "cancelled" when the caller went away, "internal" for anything unexpected."""
    if isinstance(exc, ByokError):
        return exc.reason
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return "internal"


def sqlite_size(path: Path) -> SizeFunction:
    """A size function for `Metrics(db_size=...)`: the database file with its WAL and
    shared-memory files, in bytes (None before the file exists)."""

    def size() -> float | None:
        total = 0
        found = False
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{path}{suffix}").st_size
                found = True
        return float(total) if found else None

    return size


class _DbSizeCollector(Collector):
    """`byok_db_size_bytes`, evaluated when Prometheus scrapes."""

    def __init__(self, owner: Metrics) -> None:
        self.owner = owner

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "byok_db_size_bytes", "Size of the database on disk (with its WAL), in bytes."
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        size_fn = self.owner.db_size
        if size_fn is not None:
            try:
                value = size_fn()
            except Exception:  # a scrape must not fail because the size is unknown
                value = None
            if value is not None:
                family.add_metric([], value)
        return [family]


class _Rpc:
    """The children of one (method, type): label lookups happen once."""

    __slots__ = ("handled", "handled_counter", "handling", "labels", "received", "sent", "started")

    def __init__(self, m: Metrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = m.grpc_started.labels(*labels)
        self.handling = m.grpc_handling.labels(*labels)
        self.sent = m.grpc_msg_sent.labels(*labels)
        self.received = m.grpc_msg_received.labels(*labels)
        self.handled_counter = m.grpc_handled
        self.handled: dict[str, Counter] = {}

    def handled_child(self, code: str) -> Counter:
        child = self.handled.get(code)
        if child is None:
            label = grpc_code_label(code)
            child = self.handled[code] = self.handled_counter.labels(*self.labels, label)
        return child


class _Llm:
    __slots__ = (
        "active",
        "duration",
        "errors",
        "errors_counter",
        "input_tokens",
        "labels",
        "output_tokens",
        "overhead",
        "requests",
        "retries",
        "tokens_per_second",
        "ttft",
    )

    def __init__(self, m: Metrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.requests = m.llm_requests.labels(*labels)
        self.input_tokens = m.llm_input_tokens.labels(*labels)
        self.output_tokens = m.llm_output_tokens.labels(*labels)
        self.ttft = m.llm_ttft.labels(*labels)
        self.duration = m.llm_duration.labels(*labels)
        self.tokens_per_second = m.llm_tokens_per_second.labels(*labels)
        self.active = m.llm_active_streams.labels(*labels)
        self.retries = m.llm_retries.labels(*labels)
        self.overhead = m.gateway_overhead.labels(*labels)
        self.errors_counter = m.llm_errors
        self.errors: dict[str, Counter] = {}

    def error_child(self, kind: str) -> Counter:
        child = self.errors.get(kind)
        if child is None:
            child = self.errors[kind] = self.errors_counter.labels(*self.labels, kind)
        return child


class Metrics:
    """All of byok's metrics on a private registry.

    `db_size` is called at scrape time for `byok_db_size_bytes` (see `sqlite_size`);
    it may be set later through the attribute. `process=True` adds the standard
    process_*/python_* collectors to this registry.
    """

    def __init__(self, *, db_size: SizeFunction | None = None, process: bool = True) -> None:
        self.db_size = db_size
        r = self.registry = CollectorRegistry(auto_describe=True)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            grpc_labels,
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            grpc_labels,
            registry=r,
        )

        self.http_requests = Counter(
            "byok_http_requests_total",
            "HTTP requests answered, by method, matched route template and status.",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "byok_http_request_duration_seconds",
            "HTTP request duration until the response is complete (streams included).",
            ("method", "route"),
            buckets=RPC_BUCKETS,
            registry=r,
        )

        llm = ("route", "model", "provider")
        self.llm_requests = Counter(
            "byok_llm_requests_total", "Chat turns sent to a model.", llm, registry=r
        )
        self.llm_errors = Counter(
            "byok_llm_errors_total",
            "Chat turns that ended in an error, by kind (the error reason, or cancelled).",
            (*llm, "kind"),
            registry=r,
        )
        self.llm_input_tokens = Counter(
            "byok_llm_input_tokens_total", "Prompt tokens sent to models.", llm, registry=r
        )
        self.llm_output_tokens = Counter(
            "byok_llm_output_tokens_total", "Completion tokens received.", llm, registry=r
        )
        self.llm_ttft = Histogram(
            "byok_llm_time_to_first_token_seconds",
            "Time from sending the upstream request to the first text delta.",
            llm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.llm_duration = Histogram(
            "byok_llm_duration_seconds",
            "Time from sending the upstream request to its last byte.",
            llm,
            buckets=LLM_DURATION_BUCKETS,
            registry=r,
        )
        self.llm_tokens_per_second = Histogram(
            "byok_llm_output_tokens_per_second",
            "Decode speed of one turn: output tokens / (duration - time to first token).",
            llm,
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=r,
        )
        self.llm_active_streams = Gauge(
            "byok_llm_active_streams", "Chat turns in progress.", llm, registry=r
        )
        self.llm_retries = Counter(
            "byok_llm_upstream_retries_total",
            "Upstream requests retried (after a connection error, 429 or 5xx).",
            llm,
            registry=r,
        )
        self.gateway_overhead = Histogram(
            "byok_gateway_overhead_seconds",
            "Time byok spends around the upstream call: request received to upstream "
            "request sent, plus last upstream byte to response done.",
            llm,
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )

        self.db_query_duration = Histogram(
            "byok_db_query_duration_seconds",
            "Duration of store operations, by operation (the store method).",
            ("operation",),
            buckets=DB_BUCKETS,
            registry=r,
        )
        r.register(_DbSizeCollector(self))

        self.ratelimit_refused_counter = Counter(
            "byok_ratelimit_refused_total",
            "Calls refused by the per-user rate limits, by kind (requests or tokens).",
            ("kind",),
            registry=r,
        )
        self.ratelimit_backend_errors = Counter(
            "byok_ratelimit_backend_errors_total",
            "Rate-limiter backend (Redis) failures; each call then follows RATE_LIMIT_FAIL_OPEN.",
            registry=r,
        )
        for kind in ("requests", "tokens"):  # exported at 0 from the start
            self.ratelimit_refused_counter.labels(kind)

        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        self._rpcs: dict[tuple[str, str], _Rpc] = {}
        self._llms: dict[tuple[str, str, str], _Llm] = {}
        self._http_counts: dict[tuple[str, str, int], Counter] = {}
        self._http_durations: dict[tuple[str, str], Histogram] = {}
        self._db: dict[str, Histogram] = {}

    # -- gRPC -------------------------------------------------------------------------

    def _rpc(self, full_method: str, grpc_type: str) -> _Rpc:
        key = (full_method, grpc_type)
        rpc = self._rpcs.get(key)
        if rpc is None:
            service, method = split_method(full_method)
            rpc = self._rpcs[key] = _Rpc(self, (grpc_type, service, method))
        return rpc

    def rpc_started(self, full_method: str, grpc_type: str) -> None:
        """`grpc_type`: unary, client_stream, server_stream or bidi_stream."""
        self._rpc(full_method, grpc_type).started.inc()

    def rpc_handled(self, full_method: str, grpc_type: str, code_name: str, seconds: float) -> None:
        """`code_name` is the canonical status name (OK, NOT_FOUND, ...); the label
        takes go-grpc-prometheus's spelling (OK, NotFound, ...)."""
        rpc = self._rpc(full_method, grpc_type)
        rpc.handled_child(code_name).inc()
        rpc.handling.observe(seconds)

    def rpc_msg_sent(self, full_method: str, grpc_type: str) -> None:
        self._rpc(full_method, grpc_type).sent.inc()

    def rpc_msg_received(self, full_method: str, grpc_type: str) -> None:
        self._rpc(full_method, grpc_type).received.inc()

    # -- HTTP -------------------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """`route` is the matched template (`/api/conversations/{id}`), never the raw path."""
        if method not in HTTP_METHODS:
            method = "OTHER"
        count = self._http_counts.get((method, route, status))
        if count is None:
            count = self.http_requests.labels(method, route, str(status))
            self._http_counts[(method, route, status)] = count
        duration = self._http_durations.get((method, route))
        if duration is None:
            duration = self._http_durations[(method, route)] = self.http_duration.labels(
                method, route
            )
        count.inc()
        duration.observe(seconds)

    # -- LLM turns --------------------------------------------------------------------

    def _llm(self, route: str, model: str, provider: str) -> _Llm:
        key = (route, model, provider)
        llm = self._llms.get(key)
        if llm is None:
            llm = self._llms[key] = _Llm(self, key)
        return llm

    def llm_turn_started(self, route: str, model: str, provider: str) -> None:
        """A turn is about to call the model: counts it and raises the active gauge."""
        llm = self._llm(route, model, provider)
        llm.requests.inc()
        llm.active.inc()

    def llm_first_token(self, route: str, model: str, provider: str, ttft_s: float) -> None:
        """The first text delta arrived `ttft_s` after the upstream request was sent."""
        self._llm(route, model, provider).ttft.observe(ttft_s)

    def llm_upstream_retry(self, route: str, model: str, provider: str, count: int = 1) -> None:
        if count > 0:
            self._llm(route, model, provider).retries.inc(count)

    def llm_turn_finished(
        self,
        route: str,
        model: str,
        provider: str,
        *,
        ttft_s: float | None,
        duration_s: float,
        input_tokens: int,
        output_tokens: int,
        overhead_s: float | None,
        error_kind: str | None,
    ) -> None:
        """The turn ended (once per `llm_turn_started`): lowers the active gauge, counts
        tokens and the error, observes duration, overhead and decode speed. TTFT is
        observed by `llm_first_token`; `ttft_s` here only feeds tokens per second."""
        llm = self._llm(route, model, provider)
        llm.active.dec()
        if input_tokens > 0:
            llm.input_tokens.inc(input_tokens)
        if output_tokens > 0:
            llm.output_tokens.inc(output_tokens)
        llm.duration.observe(duration_s)
        if overhead_s is not None:
            llm.overhead.observe(max(0.0, overhead_s))
        if ttft_s is not None and output_tokens > 0 and duration_s - ttft_s >= 0.001:
            llm.tokens_per_second.observe(output_tokens / (duration_s - ttft_s))
        if error_kind is not None:
            llm.error_child(error_kind).inc()

    def llm_turn(
        self, route: str, model: str, provider: str, *, received_at: float | None = None
    ) -> LlmTurn:
        """Starts a turn and returns its handle (see `LlmTurn`), which keeps the clocks."""
        return LlmTurn(self, route, model, provider, received_at)

    # -- storage ----------------------------------------------------------------------

    def db_query(self, operation: str, seconds: float) -> None:
        child = self._db.get(operation)
        if child is None:
            child = self._db[operation] = self.db_query_duration.labels(operation)
        child.observe(seconds)

    @contextlib.contextmanager
    def time_db(self, operation: str) -> Iterator[None]:
        """Times the block as one store operation (failures included)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.db_query(operation, time.perf_counter() - start)

    # -- rate limiting ----------------------------------------------------------------

    def ratelimit_refused(self, kind: str) -> None:
        """`kind`: requests or tokens."""
        self.ratelimit_refused_counter.labels(kind).inc()

    def ratelimit_backend_error(self) -> None:
        self.ratelimit_backend_errors.inc()

    # -- exposition -------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and content type for GET /metrics: the Prometheus text format, or
        OpenMetrics when the scraper's Accept header asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class LlmTurn:
    """One chat turn's clocks and metrics, so the engine only marks events:

        with metrics.llm_turn(route.key, route.model_id, route.provider) as turn:
            turn.upstream_sent()    # just before the provider is called
            turn.first_token()      # at each text delta (only the first counts)
            turn.upstream_done()    # the upstream's stream ended normally
            turn.finish(input_tokens=p, output_tokens=c)  # the reply is stored

    `finish` is idempotent; leaving the `with` block finishes the turn if nothing did,
    with the exception that left it as the error (GeneratorExit and CancelledError
    count as "cancelled") and the tokens given to `tokens()`.

    `received_at` (perf_counter) is when byok received the request: by default the
    current RPC's arrival (`rpc_received_at`), else the moment the handle is made.
    Overhead = (upstream_sent - received_at) + (finish - upstream_done), recorded only
    for turns whose upstream stream ended.
    """

    __slots__ = (
        "_done_at",
        "_finished",
        "_first_at",
        "_input_tokens",
        "_llm",
        "_metrics",
        "_output_tokens",
        "_received_at",
        "_sent_at",
        "model",
        "provider",
        "route",
    )

    def __init__(
        self, metrics: Metrics, route: str, model: str, provider: str, received_at: float | None
    ) -> None:
        now = time.perf_counter()
        self._metrics = metrics
        self.route, self.model, self.provider = route, model, provider
        self._llm = metrics._llm(route, model, provider)
        if received_at is None:
            received_at = rpc_received_at.get()
        self._received_at: float = now if received_at is None else received_at
        self._sent_at = now
        self._first_at: float | None = None
        self._done_at: float | None = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._finished = False
        metrics.llm_turn_started(route, model, provider)

    def __enter__(self) -> LlmTurn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc)

    def upstream_sent(self) -> None:
        self._sent_at = time.perf_counter()

    def first_token(self) -> None:
        if self._first_at is None:
            self._first_at = time.perf_counter()
            self._llm.ttft.observe(self._first_at - self._sent_at)

    def upstream_retry(self, count: int = 1) -> None:
        self._metrics.llm_upstream_retry(self.route, self.model, self.provider, count)

    def upstream_done(self) -> None:
        if self._done_at is None:
            self._done_at = time.perf_counter()

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        """The turn's usage, for a finish that does not pass it (e.g. on an error)."""
        self._input_tokens, self._output_tokens = input_tokens, output_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self._first_at is None else self._first_at - self._sent_at

    def finish(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """Records the end of the turn; only the first call counts. `error` is the
        exception that ended it, or an explicit kind."""
        if self._finished:
            return
        self._finished = True
        now = time.perf_counter()
        done = self._done_at if self._done_at is not None else now
        overhead = None
        if self._done_at is not None:
            overhead = (self._sent_at - self._received_at) + (now - done)
        kind = None
        if error is not None:
            kind = error if isinstance(error, str) else error_kind(error)
        self._metrics.llm_turn_finished(
            self.route,
            self.model,
            self.provider,
            ttft_s=self.ttft_s,
            duration_s=done - self._sent_at,
            input_tokens=self._input_tokens if input_tokens is None else input_tokens,
            output_tokens=self._output_tokens if output_tokens is None else output_tokens,
            overhead_s=overhead,
            error_kind=kind,
        )


def instrument_store(store: T, metrics: Metrics) -> T:
    """A proxy of `store` whose coroutine methods are timed into
    `byok_db_query_duration_seconds{operation=<method name>}`; everything else passes
    through. Use it where the core gets the store; keep the original for close()."""
    return cast(T, _TimedStore(store, metrics))


class _TimedStore:
    def __init__(self, store: Any, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        timed = _timed(attr, self._metrics, name)
        self.__dict__[name] = timed  # later lookups skip __getattr__
        return timed


def _timed(
    fn: Callable[..., Awaitable[Any]], metrics: Metrics, operation: str
) -> Callable[..., Awaitable[Any]]:
    histogram = metrics.db_query_duration.labels(operation)

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - start)

    return timed


class HttpMetricsMiddleware:
    """ASGI middleware counting every HTTP request by method, route template and status.

    The route is, in order: `scope["byok.route"]` (the REST gateway sets it to the
    matched binding's template), the Starlette route's path when it is not a
    catch-all, else "unmatched". Streams are timed until their last body chunk.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.http_request(
                scope["method"], route_of(scope), status, time.perf_counter() - start
            )


def route_of(scope: Scope) -> str:
    """The matched route template of a finished request (see HttpMetricsMiddleware)."""
    route = scope.get(ROUTE_SCOPE_KEY)
    if isinstance(route, str) and route:
        return route
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path and ":path}" not in path:
        return path
    return UNMATCHED_ROUTE
