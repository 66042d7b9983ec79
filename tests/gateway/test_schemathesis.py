"""Schemathesis over /openapi.json: every operation, a bounded number of generated
requests each; no 5xx other than 501 (not implemented yet), and every answer
conforms to the document (status code, content type, JSON schema).

Needs `schemathesis` (dev extra); skipped without it. The server runs in a thread
with its own event loop because schemathesis calls it with blocking requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import serve_gateway
from tests.support.servers import running_app
from tests.support.upstream import ScriptedUpstream

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (add it to the dev extra)"
)
hypothesis = pytest.importorskip("hypothesis", reason="schemathesis brings hypothesis")

MAX_EXAMPLES = 25
CHECKS = {"status_code_conformance", "content_type_conformance", "response_schema_conformance"}


@contextlib.contextmanager
def server_in_thread(data_dir: Path) -> Iterator[str]:
    """The real App plus the gateway on a loop in a thread; yields the HTTP base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> str:
        # Chat goes to a scripted upstream that echoes at once: the embedded model with
        # random parameters (up to 512 tokens on a busy CPU) would make timing decide.
        upstream = await stack.enter_async_context(ScriptedUpstream())
        routes = {
            "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
            "OPENAI_API_KEY": "sk-schemathesis-000000",
            "OPENAI_BASE_URL": upstream.base_url,
        }
        server = await stack.enter_async_context(running_app(data_dir, routes=routes))
        async with httpx.AsyncClient(base_url=server.http_url) as probe:
            if (await probe.get("/openapi.json")).status_code == 200:
                return server.http_url
        return await stack.enter_async_context(serve_gateway(server.grpc_target))

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _checks() -> list[Any]:
    registry = importlib.import_module("schemathesis.checks")
    registry.load_all_checks()
    found = [check for check in registry.CHECKS.get_all() if check.__name__ in CHECKS]
    assert {c.__name__ for c in found} == CHECKS, "schemathesis renamed its checks"
    return found


@pytest.mark.slow
def test_every_operation_conforms(tmp_path: Path) -> None:
    given, settings, HealthCheck = hypothesis.given, hypothesis.settings, hypothesis.HealthCheck
    checks = _checks()
    with server_in_thread(tmp_path / "data") as url:
        document = httpx.get(f"{url}/openapi.json").json()
        schema = schemathesis.openapi.from_dict(document)
        failures: list[str] = []
        for path, item in document["paths"].items():
            for method in item:
                strategy = schema[path][method.upper()].as_strategy()

                def call(case: Any) -> None:
                    response = case.call(base_url=url, timeout=30)
                    status = response.status_code
                    assert status < 500 or status == 501, (
                        f"{case.method} {case.formatted_path} -> {status}: {response.text[:500]}"
                    )
                    case.validate_response(response, checks=checks)

                run = settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )(given(case=strategy)(call))
                try:
                    run()
                except Exception as exc:  # collect every operation's failure, then report
                    failures.append(f"{method.upper()} {path}: {exc}")
        assert not failures, "\n\n".join(failures)
