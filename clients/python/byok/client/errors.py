"""Errors of the byok client: one exception type with the server's google.rpc details.

The server answers every error with a `google.rpc.Status` in the `grpc-status-details-bin`
trailer: an `ErrorInfo` (reason, domain, metadata), `BadRequest` field violations for
invalid arguments and `RetryInfo` for retryable failures. `from_rpc_error` decodes them
into a `ByokError`; the client never lets a raw `grpc.RpcError` through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "byok.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, from `google.rpc.BadRequest`."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class ByokError(Exception):
    """An error from the byok server, or from reaching it.

    `code` is the canonical gRPC status name ("NOT_FOUND", "INVALID_ARGUMENT", ...),
    `message` the server's message, `reason` the `ErrorInfo` reason in UPPER_SNAKE_CASE
    ("" when the error carried none, as when the server cannot be reached).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.retry_delay = retry_delay

    @property
    def status_code(self) -> grpc.StatusCode:
        try:
            return grpc.StatusCode[self.code]
        except KeyError:
            return grpc.StatusCode.UNKNOWN

    @property
    def unreachable(self) -> bool:
        """True when no byok server answered (connection refused, name not resolved...).

        A byok server's own UNAVAILABLE errors carry an ErrorInfo; grpc's transport
        failures carry none.
        """
        return self.code == "UNAVAILABLE" and not self.domain

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ByokError({self.code}, {self.message!r}, reason={self.reason!r})"


def from_rpc_error(err: grpc.RpcError) -> ByokError:
    """The `ByokError` for a failed call, with the google.rpc details it carried."""
    call: Any = err
    try:
        code = call.code()
        message = call.details() or ""
    except (AttributeError, TypeError):  # an RpcError that is not a Call
        return ByokError("UNKNOWN", str(err) or type(err).__name__)
    code_name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    try:
        status = rpc_status.from_call(call)
    except (ValueError, TypeError, AttributeError):  # inconsistent or unreadable details
        status = None
    kwargs: dict[str, Any] = {}
    if status is not None:
        message = status.message or message
        violations: list[FieldViolation] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                kwargs.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                kwargs["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
        kwargs["field_violations"] = violations
    return ByokError(code_name, message, **kwargs)
