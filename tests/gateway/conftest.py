"""Fixtures for the REST gateway: an httpx client on the real server's HTTP door.

Until the composition root serves the gateway itself, `rest` serves
`build_http_app(..., server.grpc_target)` on its own loopback port; once it does
(`/openapi.json` answers on the App's HTTP port), `rest` uses the App's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from byok.server.config import Address
from byok.server.gateway.app import build_http_app
from byok.server.gateway.server import bind, build_server
from tests.support.servers import RunningServer


async def _ready() -> str | None:
    return None


@contextlib.asynccontextmanager
async def serve_gateway(grpc_target: str, **options: Any) -> AsyncIterator[str]:
    """Serves the HTTP app with the gateway to `grpc_target`; yields its base URL."""
    app = build_http_app(_ready, grpc_target, **options)
    sock = bind(Address("127.0.0.1", 0))
    # Accepted sockets inherit it; without it Nagle + delayed ACK add ~40 ms per response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    http = build_server(app, "warning")
    task = asyncio.create_task(http.serve(sockets=[sock]))
    try:
        while not http.started:
            if task.done():
                await task
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app.state.gateway.aclose()


@contextlib.asynccontextmanager
async def gateway_url(server: RunningServer) -> AsyncIterator[str]:
    """The App's own HTTP door once it serves the gateway, else one of ours."""
    async with httpx.AsyncClient(base_url=server.http_url) as probe:
        wired = (await probe.get("/openapi.json")).status_code == 200
    if wired:
        yield server.http_url
        return
    async with serve_gateway(server.grpc_target) as url:
        yield url


@pytest.fixture
async def rest_url(server: RunningServer) -> AsyncIterator[str]:
    async with gateway_url(server) as url:
        yield url


@pytest.fixture
async def rest(rest_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=rest_url, timeout=10.0) as client:
        yield client
