"""gRPC status → HTTP error, in the API.md JSON form.

    {"error": {"code": <http>, "message": ..., "status": "NOT_FOUND", "details": [...]}}

`details` are the `google.rpc.Status` details from the `grpc-status-details-bin`
trailer, each as proto3 JSON with its "@type". RESOURCE_EXHAUSTED and UNAVAILABLE
errors with a `RetryInfo` also get a `Retry-After` header (whole seconds, rounded up).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "byok.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
_RETRY_AFTER_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


@dataclass
class HttpError:
    """An error answer: HTTP status, the JSON body and any extra headers."""

    status: int
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(
    status_name: str, message: str, details: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "error": {
            "code": HTTP_STATUS.get(status_name, 500),
            "message": message,
            "status": status_name,
            "details": list(details),
        }
    }


def detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):  # a type this process does not know
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def from_status(status_name: str, message: str, details: Sequence[any_pb2.Any] = ()) -> HttpError:
    body = error_body(status_name, message, [detail_json(d) for d in details])
    headers: list[tuple[bytes, bytes]] = []
    if status_name in _RETRY_AFTER_CODES:
        for detail in details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                delay = retry.retry_delay
                seconds = max(0, math.ceil(delay.seconds + delay.nanos / 1e9))
                headers.append((b"retry-after", str(seconds).encode()))
                break
    return HttpError(HTTP_STATUS.get(status_name, 500), body, headers)


def from_rpc_error(error: grpc.aio.AioRpcError) -> HttpError:
    """The HTTP error for a failed call, with details decoded from the trailer."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    message = error.details() or name
    details: Sequence[any_pb2.Any] = ()
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer: keep code and message
                break
            details = status.details
            message = status.message or message
            break
    return from_status(name, message, details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def gateway_error(
    status_name: str,
    message: str,
    reason: str,
    *,
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> HttpError:
    """An error the gateway itself answers (bad JSON, unknown path, ...), in the
    same shape as a server error: an ErrorInfo, plus BadRequest violations if any."""
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    ]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in violations
                    ]
                )
            )
        )
    return from_status(status_name, message, details)


def not_found(path: str) -> HttpError:
    return gateway_error(
        "NOT_FOUND", f"no route for {path}", "ROUTE_NOT_FOUND", metadata={"path": path}
    )


def method_not_allowed(method: str, path: str, allowed: Sequence[str]) -> HttpError:
    # As grpc-gateway does: UNIMPLEMENTED, answered with HTTP 405.
    error = gateway_error(
        "UNIMPLEMENTED",
        f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}",
        "METHOD_NOT_ALLOWED",
        metadata={"method": method, "path": path, "allowed": ",".join(allowed)},
    )
    error.status = 405
    error.body["error"]["code"] = 405
    error.headers.append((b"allow", ", ".join(allowed).encode()))
    return error
