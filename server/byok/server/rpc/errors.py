"""Domain errors → gRPC status with google.rpc details, in one place.

An interceptor wraps every byok handler: a `ByokError` becomes its canonical code
with an `ErrorInfo` (reason, domain "byok.dev", metadata), `BadRequest` field
violations and `RetryInfo` where the error carries them. Anything else is logged
with its traceback and answered INTERNAL without internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from byok.server.errors import DOMAIN, ByokError

log = logging.getLogger("byok.server.rpc")


def to_status(error: ByokError) -> grpc.Status:
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    details.append(info)
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        details.append(bad)
    if error.retry_after is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code), message=error.message, details=details
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ByokError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _internal(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors for every byok.v1 method; other services pass through untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/byok."):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behavior: Any, method: str) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except ByokError as error:
            await abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            await _internal(context, method)

    return wrapper


def _wrap_stream(behavior: Any, method: str) -> Any:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except ByokError as error:
            await abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            await _internal(context, method)

    return wrapper
