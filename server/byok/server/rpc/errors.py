"""Domain errors → gRPC status with google.rpc details.

A `ByokError` becomes its canonical code with an `ErrorInfo` (reason, domain
"byok.dev", metadata), `BadRequest` field violations and `RetryInfo` where the error
carries them. rpc/calls.py applies it to every call.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from byok.server.errors import DOMAIN, ByokError

MAX_MESSAGE = 1000  # characters of an error message
MAX_VALUE = 200  # characters of a metadata value or a violation's description


def _cap(text: str, limit: int) -> str:
    """Errors may quote what the caller sent; a huge value must not make the status
    itself too large for the caller's metadata limit."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(error: ByokError) -> grpc.Status:
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason,
            domain=DOMAIN,
            metadata={_cap(k, MAX_VALUE): _cap(v, MAX_VALUE) for k, v in error.metadata.items()},
        )
    )
    details.append(info)
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_cap(v.field, MAX_VALUE), description=_cap(v.description, MAX_VALUE)
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
        code=code_pb2.Code.Value(error.code),
        message=_cap(error.message, MAX_MESSAGE),
        details=details,
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ByokError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
