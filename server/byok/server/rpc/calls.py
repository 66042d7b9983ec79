"""What happens around every byok RPC, in one place: who the caller is, and how a
failure becomes a gRPC status.

The interceptor wraps each byok.v1 handler. Inside the wrapper (which runs in the
call's own task) it authenticates the caller and sets `current_user`; services read
it with `user_of()`. Domain errors become statuses with google.rpc details
(rpc/errors.py); anything unexpected is logged and answered INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from byok.server.errors import ByokError, InvalidArgument, ResourceExhausted, Unauthenticated
from byok.server.observability import (
    Metrics,
    begin_rpc,
    current_log_user,
    request_id_from_metadata,
    status_of,
)
from byok.server.ratelimit import RateLimiter, raise_if_refused
from byok.server.rpc.errors import abort
from byok.server.storage.base import DEFAULT_USER_ID

log = logging.getLogger("byok.server.rpc")

current_user: ContextVar[str] = ContextVar("byok_current_user", default=DEFAULT_USER_ID)

# Takes the presented API key, returns the user id (or raises a ByokError).
Authenticate = Callable[[str], Awaitable[str]]
Context = grpc.aio.ServicerContext[Any, Any]


def user_of(context: Context | None = None) -> str:
    """The caller's user id, as the interceptor established it for this call."""
    return current_user.get()


def bearer_key(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated(
                "the authorization header must be `Bearer <api key>`", reason="API_KEY_MALFORMED"
            )
    raise Unauthenticated(
        "this server needs an API key: send `authorization: Bearer <key>` "
        "(the byok CLI sends BYOK_API_KEY)",
        reason="API_KEY_MISSING",
    )


class CallInterceptor(grpc.aio.ServerInterceptor):
    """`authenticate` None means local mode: every call is the implicit local user."""

    def __init__(
        self,
        authenticate: Authenticate | None = None,
        *,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
        max_streams_per_user: int = 0,
    ) -> None:
        self.authenticate = authenticate
        self.metrics = metrics
        self.limiter = limiter
        self.max_streams = max_streams_per_user
        self._streams: dict[str, int] = {}  # open server streams per user, this process
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, its wrapper)

    def _open_stream(self, user: str) -> None:
        open_now = self._streams.get(user, 0)
        if self.max_streams and open_now >= self.max_streams:
            raise ResourceExhausted(
                f"too many open streams: at most {self.max_streams} per user "
                "(MAX_STREAMS_PER_USER); wait for one to finish",
                reason="TOO_MANY_STREAMS",
                metadata={"limit": str(self.max_streams)},
                retry_after=1.0,
            )
        self._streams[user] = open_now + 1

    def _close_stream(self, user: str) -> None:
        left = self._streams.get(user, 1) - 1
        if left > 0:
            self._streams[user] = left
        else:
            self._streams.pop(user, None)

    async def _begin(self, request: Any, context: Context) -> None:
        if isinstance(request, _Undecodable):
            raise InvalidArgument(
                f"the request is not a valid protobuf message ({request.reason})",
                reason="MALFORMED_REQUEST",
            )
        if self.authenticate is None:
            current_user.set(DEFAULT_USER_ID)
        else:
            current_user.set(await self.authenticate(bearer_key(context)))
        current_log_user.set(current_user.get())
        if self.limiter is not None:
            raise_if_refused(await self.limiter.take_request(current_user.get()), "requests")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/byok."):
            return handler
        # Registered handlers are built once, so their wrappers are too.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        deserialize = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, behavior: Any, method: str) -> Any:
        async def wrapper(request: Any, context: Context) -> Any:
            call = begin_rpc(self.metrics, method, "unary", _request_id(context))
            error: BaseException | None = None
            try:
                await self._begin(request, context)
                response = await behavior(request, context)
                call.message_sent()
                return response
            except ByokError as exc:
                error = exc
                await abort(context, exc)
            except (grpc.aio.AbortError, grpc.aio.UsageError) as exc:
                error = exc
                raise
            except Exception as exc:
                error = exc
                await _internal(context, method)
            except BaseException as exc:  # cancelled: the caller went away
                error = exc
                raise
            finally:
                call.finish(status_of(error, context), current_user.get())

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str) -> Any:
        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            call = begin_rpc(self.metrics, method, "server_stream", _request_id(context))
            error: BaseException | None = None
            counted = ""
            try:
                await self._begin(request, context)
                self._open_stream(current_user.get())
                counted = current_user.get()
                async for item in behavior(request, context):
                    yield item
                    call.message_sent()
            except ByokError as exc:
                error = exc
                await abort(context, exc)
            except (grpc.aio.AbortError, grpc.aio.UsageError) as exc:
                error = exc
                raise
            except Exception as exc:
                error = exc
                await _internal(context, method)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if counted:
                    self._close_stream(counted)
                call.finish(status_of(error, context), current_user.get())

        return wrapper


def _request_id(context: Context) -> str | None:
    return request_id_from_metadata(context.invocation_metadata())


async def _internal(context: Context, method: str) -> None:
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the call can answer
    INVALID_ARGUMENT with google.rpc details instead of grpc's bare INTERNAL."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError and friends
            return _Undecodable(type(exc).__name__)

    return parse
