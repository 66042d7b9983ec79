"""The Starlette application served on BYOK_HTTP_ADDR."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ReadinessCheck = Callable[[], Awaitable[str | None]]


def build_http_app(readiness: ReadinessCheck) -> Starlette:
    """`readiness` returns None when ready, else why not (answered with 503)."""

    async def healthz(_: Request) -> JSONResponse:
        # Liveness: the process and its event loop answer.
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        reason = await readiness()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )
