"""uvicorn running inside byok's own event loop, beside the gRPC server."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from byok.server.config import Address


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to byok's composition root."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(address: Address) -> socket.socket:
    """Binds the HTTP socket up front so a port-0 address learns its port at once."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Without it every small response waits ~40 ms for a delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((address.host, address.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def build_server(
    app: ASGIApp, log_level: str, *, ssl: tuple[str, str] | None = None
) -> EmbeddedServer:
    """`ssl` is (certificate file, key file) to serve HTTPS."""
    config = uvicorn.Config(
        app,
        ssl_certfile=ssl[0] if ssl else None,
        ssl_keyfile=ssl[1] if ssl else None,
        lifespan="off",
        log_config=None,  # byok's logging setup (observability/logs.py) applies
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return EmbeddedServer(config)
