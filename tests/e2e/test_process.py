"""`byok-server serve` as a user runs it: start, serve, SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.servers import ServerProcess


def test_sigterm_ends_running_streams_within_grace_and_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"BYOK_SHUTDOWN_GRACE_SECONDS": "1.5"})
    server.start()
    try:
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200
        with grpc.insecure_channel(server.grpc_target) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            started = time.monotonic()
            assert server.proc is not None
            server.proc.send_signal(15)
            statuses = [reply.status for reply in _drain(watch)]
            code = server.proc.wait(timeout=20)
            took = time.monotonic() - started
        assert code == 0, server.log()
        assert statuses[:1] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert took < 10, f"shutdown took {took:.1f}s with a 1.5s grace period"
        assert "byok stopped" in server.log()
        assert "event loop uvloop" in server.log()  # the default (BYOK_EVENT_LOOP=auto)
        assert (tmp_path / "data" / "byok.db").exists()
    finally:
        server.kill()


def test_byok_event_loop_asyncio_serves_on_the_standard_loop(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"BYOK_EVENT_LOOP": "asyncio"})
    server.start()
    try:
        with grpc.insecure_channel(server.grpc_target) as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert "event loop asyncio" in server.log()
    finally:
        server.kill()


def _drain(
    stream: Iterator[health_pb2.HealthCheckResponse],
) -> list[health_pb2.HealthCheckResponse]:
    seen = []
    try:
        for reply in stream:
            seen.append(reply)
    except grpc.RpcError:
        pass  # the stream is cut when the grace period ends
    return seen


def test_data_survives_a_restart_and_port_in_use_is_one_line(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data")
    first.start()
    try:
        clash = ServerProcess(tmp_path / "data2", grpc_port=first.grpc_port)
        try:
            clash.start(timeout=20)
            raise AssertionError("a second server took a busy port")
        except RuntimeError as err:
            assert "byok-server: cannot listen on" in str(err)
        finally:
            clash.kill()  # never leave a process behind, whatever happened
        assert first.terminate() == 0
        first.start()
        assert httpx.get(f"{first.http_url}/readyz").json()["status"] == "ready"
    finally:
        first.kill()
