"""The gateway in front of a gRPC door with API keys and with TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx

from byok.server.accounts.users import Accounts
from tests.gateway.conftest import gateway_url, serve_gateway
from tests.support.certs import self_signed
from tests.support.servers import running_app


async def test_api_keys_apply_to_rest_calls(tmp_path: Path) -> None:
    async with (
        running_app(tmp_path / "data", auth_mode="keys") as server,
        gateway_url(server) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        reply = await http.get("/api/conversations")
        assert reply.status_code == 401
        error = reply.json()["error"]
        assert error["status"] == "UNAUTHENTICATED"
        assert error["details"][0]["reason"] == "API_KEY_MISSING"

        accounts = Accounts(server.app.store)  # type: ignore[arg-type]
        await accounts.create_user("ada")
        key = (await accounts.create_key("ada", "laptop")).key
        bearer = {"authorization": f"Bearer {key}"}
        made = await http.post("/api/conversations", json={"title": "ada's"}, headers=bearer)
        assert made.status_code == 200, made.text
        listed = await http.get("/api/conversations", headers=bearer)
        assert [c["title"] for c in listed.json()["conversations"]] == ["ada's"]
        wrong = await http.get("/api/conversations", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401


async def test_gateway_to_a_tls_grpc_door(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with (
        running_app(tmp_path / "data", tls_cert=cert, tls_key=key) as server,
        serve_gateway(server.grpc_target, grpc_credentials=credentials) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        reply = await http.get("/api/conversations")
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"conversations": [], "nextPageToken": ""}
