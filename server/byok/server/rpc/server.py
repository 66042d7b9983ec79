"""Builds the grpc.aio server: byok's services, standard health, reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from byok.server.observability import Metrics
from byok.server.ratelimit import RateLimiter
from byok.server.rpc.calls import Authenticate, CallInterceptor

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that registers it."""

    full_name: str
    servicer: Any
    register: Callable[[Any, grpc.aio.Server], None]


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: Sequence[str]

    async def set_serving(self) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def build_grpc_server(
    bindings: Sequence[ServiceBinding],
    address: str,
    *,
    authenticate: Authenticate | None = None,
    credentials: grpc.ServerCredentials | None = None,
    metrics: Metrics | None = None,
    limiter: RateLimiter | None = None,
    max_streams_per_user: int = 0,
) -> GrpcServer:
    server = grpc.aio.server(
        interceptors=[
            CallInterceptor(
                authenticate,
                metrics=metrics,
                limiter=limiter,
                max_streams_per_user=max_streams_per_user,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    for binding in bindings:
        binding.register(binding.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        port = (
            server.add_secure_port(address, credentials)
            if credentials
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpc reports a failed bind this way
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} for gRPC (address in use or not available)")
    return GrpcServer(server, health_servicer, port, names)
