"""The server skeleton on a real grpc.aio server: health, reflection, probes, shutdown."""

from __future__ import annotations

import asyncio

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.servers import RunningServer

BYOK_SERVICES = [
    "byok.v1.ChatService",
    "byok.v1.ConversationService",
    "byok.v1.ModelService",
    "byok.v1.SpaceService",
]


async def test_health_is_serving_per_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", *BYOK_SERVICES]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="byok.v1.NoSuchService"))
        raise AssertionError("unknown service should be NOT_FOUND")
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for reply in call:
        names = {s.name for s in reply.list_services_response.service}
        break
    assert set(BYOK_SERVICES) <= names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


async def test_http_probes(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        live = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_stop_refuses_new_calls_and_turns_health_off(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.app.stop(grace=2.0))
        # The running stream is told the server is going away...
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.wait_for(stopping, timeout=10)
        # ...and once stopped, no new call is taken.
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            raise AssertionError("a stopped server answered")
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
