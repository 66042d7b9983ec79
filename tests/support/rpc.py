"""Helpers to assert on gRPC errors as a client sees them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class RpcFailure:
    code: grpc.StatusCode | None = None
    message: str = ""
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_delay: float | None = None


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode) -> Iterator[RpcFailure]:
    """`with rpc_error(NOT_FOUND) as err:` — the call must fail with that code."""
    failure = RpcFailure()
    try:
        yield failure
    except grpc.aio.AioRpcError as exc:
        failure.code = exc.code()
        failure.message = exc.details() or ""
        status = rpc_status.from_call(exc)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                failure.reason, failure.domain = info.reason, info.domain
                failure.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                failure.violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                failure.retry_delay = retry.retry_delay.ToMilliseconds() / 1000
        assert failure.code == code, f"expected {code}, got {failure.code}: {failure.message}"
        assert failure.domain == "byok.dev", "every byok error carries an ErrorInfo"
        return
    raise AssertionError(f"the call succeeded; expected {code}")
