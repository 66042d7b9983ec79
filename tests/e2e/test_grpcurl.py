"""grpcurl, a client nobody here wrote, against the live server over reflection."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.support.servers import BIN, RunningServer


async def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl off the event loop, which the in-process server needs."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_grpcurl_lists_services(server: RunningServer) -> None:
    result = await grpcurl(server.grpc_target, "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    for name in [
        "byok.v1.ChatService",
        "byok.v1.ConversationService",
        "byok.v1.ModelService",
        "byok.v1.SpaceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]:
        assert name in listed


async def test_grpcurl_describes_a_service_with_its_http_rules(server: RunningServer) -> None:
    result = await grpcurl(server.grpc_target, "describe", "byok.v1.ConversationService")
    assert result.returncode == 0, result.stderr
    assert "rpc CreateConversation ( .byok.v1.CreateConversationRequest )" in result.stdout
    assert 'post:"/api/conversations"' in result.stdout


async def test_grpcurl_health_check(server: RunningServer) -> None:
    result = await grpcurl(
        "-d",
        '{"service": "byok.v1.ChatService"}',
        server.grpc_target,
        "grpc.health.v1.Health/Check",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}
