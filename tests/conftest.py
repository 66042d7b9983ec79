from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.servers import (
    TEST_BACKEND,
    RunningServer,
    drop_test_databases,
    running_app,
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The real byok server, in-process, on ephemeral loopback ports."""
    async with running_app(tmp_path / "data") as running:
        yield running


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_test_databases() -> Iterator[None]:
    yield
    if TEST_BACKEND == "postgres":
        asyncio.run(drop_test_databases())
