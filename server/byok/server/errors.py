"""Domain errors: what went wrong, in terms a caller can act on.

Core code raises these and knows nothing of gRPC; `rpc/errors.py` turns each into a
`google.rpc.Status` with its canonical code, an `ErrorInfo` (reason, domain
"byok.dev", metadata) and, where they help, `BadRequest` field violations or
`RetryInfo`. The REST gateway maps the code to HTTP by the canonical table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DOMAIN = "byok.dev"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ByokError(Exception):
    """Base of every error a caller is meant to see. `code` is a canonical status name."""

    code = "INTERNAL"
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.retry_after = retry_after


class InvalidArgument(ByokError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str, **metadata: str) -> InvalidArgument:
        return cls(
            f"{field}: {description}",
            violations=[FieldViolation(field, description)],
            metadata={"field": field, **metadata},
        )


class NotFound(ByokError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"

    @classmethod
    def resource(cls, name: str) -> NotFound:
        return cls(f"{name} not found", reason="RESOURCE_NOT_FOUND", metadata={"name": name})


class AlreadyExists(ByokError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class Aborted(ByokError):
    code = "ABORTED"
    default_reason = "ETAG_MISMATCH"


class FailedPrecondition(ByokError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(ByokError):
    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ByokError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(ByokError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ByokError):
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(ByokError):
    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(ByokError):
    code = "CANCELLED"
    default_reason = "CANCELLED"


class Unimplemented(ByokError):
    code = "UNIMPLEMENTED"
    default_reason = "NOT_IMPLEMENTED"
