"""The Starlette application served on BYOK_HTTP_ADDR: probes, the REST gateway,
its OpenAPI document and a docs page."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from byok.server.gateway.docs_page import render_docs
from byok.server.gateway.handler import Gateway
from byok.server.gateway.openapi import build_openapi
from byok.server.gateway.routes import RouteTable, load_bindings
from byok.server.observability.metrics import HttpMetricsMiddleware, Metrics

ReadinessCheck = Callable[[], Awaitable[str | None]]


@functools.cache
def default_routes() -> RouteTable:
    """The routes of every annotated byok.v1 RPC (built once per process)."""
    return load_bindings()


@functools.cache
def _documents(routes: RouteTable) -> tuple[bytes, str]:
    spec = build_openapi(routes)
    return json.dumps(spec, ensure_ascii=False).encode(), render_docs(spec)


def build_http_app(
    readiness: ReadinessCheck,
    grpc_target: str | None = None,
    *,
    heartbeat_seconds: float = 15.0,
    grpc_credentials: grpc.ChannelCredentials | None = None,
    grpc_options: Sequence[tuple[str, Any]] = (),
    routes: RouteTable | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """`readiness` returns None when ready, else why not (answered with 503).

    With `grpc_target` (the local gRPC server, "127.0.0.1:<port>") the app also
    serves every annotated RPC as REST/JSON, `/openapi.json` and `/docs`, calling
    gRPC over one channel: insecure, or with `grpc_credentials` when the gRPC door
    has TLS. The gateway is `app.state.gateway`; `await gateway.aclose()` on stop.
    `routes` defaults to every annotated byok.v1 RPC.
    """

    async def healthz(_: Request) -> JSONResponse:
        # Liveness: the process and its event loop answer.
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        reason = await readiness()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    app_routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if metrics is not None:

        async def metrics_page(request: Request) -> Response:
            body, content_type = metrics.exposition(request.headers.get("accept"))
            return Response(body, headers={"content-type": content_type})

        app_routes.append(Route("/metrics", metrics_page, methods=["GET"]))
    gateway: Gateway | None = None
    if grpc_target is not None:
        table = routes if routes is not None else default_routes()
        spec, page = _documents(table)
        gateway = Gateway(
            table,
            grpc_target,
            heartbeat_seconds=heartbeat_seconds,
            grpc_credentials=grpc_credentials,
            grpc_options=grpc_options,
        )

        async def openapi(_: Request) -> Response:
            return Response(spec, media_type="application/json")

        async def docs(_: Request) -> HTMLResponse:
            return HTMLResponse(page)

        app_routes += [
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
        ]
    middleware = [Middleware(HttpMetricsMiddleware, metrics=metrics)] if metrics is not None else []
    app = Starlette(routes=app_routes, middleware=middleware)
    if gateway is not None:
        # Everything else is the gateway's: its routes, or its JSON 404/405, for any
        # path at all (a catch-all route's pattern would miss paths with newlines).
        app.router.default = gateway
    app.state.gateway = gateway
    return app
