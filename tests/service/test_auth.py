"""AUTH_MODE=keys: API keys on every byok RPC; users' own provider keys; TLS."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from byok.server.accounts.provider_keys import new_master_key
from byok.server.accounts.users import Accounts
from byok.server.config import SettingsError, load_settings
from byok.v1 import chat_pb2, chat_pb2_grpc, conversations_pb2_grpc, models_pb2, models_pb2_grpc
from byok.v1 import conversations_pb2 as cpb
from tests.support.certs import self_signed
from tests.support.rpc import rpc_error
from tests.support.servers import BIN, RunningServer, ServerProcess, running_app
from tests.support.upstream import ScriptedUpstream, ThreadedUpstream

if TYPE_CHECKING:
    ConvStub = conversations_pb2_grpc.ConversationServiceAsyncStub

CODE = grpc.StatusCode
SERVER_KEY = "sk-server-key-0000000000"


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def keyed(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    routes = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "OPENAI_API_KEY": SERVER_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
    }
    async with running_app(
        tmp_path / "data", routes=routes, auth_mode="keys", master_key=new_master_key()
    ) as srv:
        yield srv


def meta(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_keys_are_required_checked_and_revocable(keyed: RunningServer) -> None:
    accounts = Accounts(keyed.app.store)  # type: ignore[arg-type]
    await accounts.create_user("ada")
    key = await accounts.create_key("ada", "laptop")
    async with grpc.aio.insecure_channel(keyed.grpc_target) as ch:
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1  # no key needed
        with rpc_error(CODE.UNAUTHENTICATED) as err:
            await convs.ListConversations(cpb.ListConversationsRequest())
        assert err.reason == "API_KEY_MISSING" and "Bearer" in err.message
        with rpc_error(CODE.UNAUTHENTICATED) as err:
            await convs.ListConversations(
                cpb.ListConversationsRequest(), metadata=meta("byok_nope")
            )
        assert err.reason == "INVALID_API_KEY"
        with rpc_error(CODE.UNAUTHENTICATED) as err:
            await convs.ListConversations(
                cpb.ListConversationsRequest(), metadata=(("authorization", "Basic abc"),)
            )
        assert err.reason == "API_KEY_MALFORMED"

        made = await convs.CreateConversation(
            cpb.CreateConversationRequest(conversation=cpb.Conversation(title="ada's")),
            metadata=meta(key.key),
        )
        listed = await convs.ListConversations(
            cpb.ListConversationsRequest(), metadata=meta(key.key)
        )
        assert [c.name for c in listed.conversations] == [made.name]

        await accounts.set_disabled("ada", True)
        with rpc_error(CODE.PERMISSION_DENIED) as err:
            await convs.ListConversations(cpb.ListConversationsRequest(), metadata=meta(key.key))
        assert err.reason == "USER_DISABLED"
        await accounts.set_disabled("ada", False)
        await accounts.store.revoke_api_key(key.record.id)
        with rpc_error(CODE.UNAUTHENTICATED):
            await convs.ListConversations(cpb.ListConversationsRequest(), metadata=meta(key.key))


async def test_users_see_only_their_own_threads(keyed: RunningServer) -> None:
    accounts = Accounts(keyed.app.store)  # type: ignore[arg-type]
    await accounts.create_user("ada")
    await accounts.create_user("bob")
    ada, bob = (await accounts.create_key("ada")).key, (await accounts.create_key("bob")).key
    async with grpc.aio.insecure_channel(keyed.grpc_target) as ch:
        convs = conversations_pb2_grpc.ConversationServiceStub(ch)
        mine = await convs.CreateConversation(
            cpb.CreateConversationRequest(conversation=cpb.Conversation(title="secret plans")),
            metadata=meta(ada),
        )
        await convs.CreateMessage(
            cpb.CreateMessageRequest(
                parent=mine.name, message=cpb.Message(role=cpb.ROLE_USER, content="the password")
            ),
            metadata=meta(ada),
        )
        with rpc_error(CODE.NOT_FOUND):
            await convs.GetConversation(
                cpb.GetConversationRequest(name=mine.name), metadata=meta(bob)
            )
        listed = await convs.ListConversations(cpb.ListConversationsRequest(), metadata=meta(bob))
        assert list(listed.conversations) == []
        found = await convs.SearchMessages(
            cpb.SearchMessagesRequest(parent="conversations/-", query="password"),
            metadata=meta(bob),
        )
        assert list(found.results) == []


async def test_provider_keys_are_used_listed_as_last4_and_deleted(
    keyed: RunningServer, upstream: ScriptedUpstream
) -> None:
    accounts = Accounts(keyed.app.store)  # type: ignore[arg-type]
    await accounts.create_user("ada")
    await accounts.create_user("bob")
    ada, bob = (await accounts.create_key("ada")).key, (await accounts.create_key("bob")).key
    own = "sk-ada-own-key-9876543210WXYZ"
    async with grpc.aio.insecure_channel(keyed.grpc_target) as ch:
        models = models_pb2_grpc.ModelServiceStub(ch)
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        stored = await models.SetProviderKey(
            models_pb2.SetProviderKeyRequest(provider="openai", key=own), metadata=meta(ada)
        )
        assert (stored.name, stored.last4) == ("providerKeys/openai", "WXYZ")
        assert own not in str(stored)
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await models.SetProviderKey(
                models_pb2.SetProviderKeyRequest(provider="nosuch", key="x"), metadata=meta(ada)
            )
        assert "openai" in err.message
        listed = await models.ListProviderKeys(
            models_pb2.ListProviderKeysRequest(), metadata=meta(ada)
        )
        assert [(k.provider, k.last4) for k in listed.provider_keys] == [("openai", "WXYZ")]
        assert (
            list(
                (
                    await models.ListProviderKeys(
                        models_pb2.ListProviderKeysRequest(), metadata=meta(bob)
                    )
                ).provider_keys
            )
            == []
        )

        upstream.reply(["hi"])
        await chat.Chat(chat_pb2.ChatRequest(content="x"), metadata=meta(ada))
        assert upstream.requests[-1].authorization == f"Bearer {own}"  # the caller's key first
        upstream.reply(["hi"])
        await chat.Chat(chat_pb2.ChatRequest(content="x"), metadata=meta(bob))
        assert upstream.requests[-1].authorization == f"Bearer {SERVER_KEY}"  # else the server's

        await models.DeleteProviderKey(
            models_pb2.DeleteProviderKeyRequest(name="providerKeys/openai"), metadata=meta(ada)
        )
        with rpc_error(CODE.NOT_FOUND):
            await models.DeleteProviderKey(
                models_pb2.DeleteProviderKeyRequest(name="providerKeys/openai"), metadata=meta(ada)
            )


async def test_provider_keys_need_a_master_key_and_openai_needs_some_key(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    routes = {"MODEL_ROUTE_FAST": "openai/gpt-4o-mini", "OPENAI_BASE_URL": upstream.base_url}
    async with running_app(tmp_path / "d", routes=routes) as srv:
        async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
            with rpc_error(CODE.FAILED_PRECONDITION) as err:
                await models_pb2_grpc.ModelServiceStub(ch).SetProviderKey(
                    models_pb2.SetProviderKeyRequest(provider="openai", key="sk-whatever-123")
                )
            assert err.reason == "MASTER_KEY_MISSING"
            with rpc_error(CODE.FAILED_PRECONDITION) as err:
                await chat_pb2_grpc.ChatServiceStub(ch).Chat(chat_pb2.ChatRequest(content="x"))
            assert err.reason == "PROVIDER_KEY_MISSING" and "openai" in err.message
    assert upstream.requests == []


def test_a_planted_provider_key_is_nowhere_in_logs_or_database(tmp_path: Path) -> None:
    planted = "sk-PLANTED-" + "Z9" * 20
    with ThreadedUpstream() as upstream:
        upstream.reply(["ok"])
        env = {
            "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
            "OPENAI_BASE_URL": upstream.base_url,
            "BYOK_MASTER_KEY": new_master_key(),
            "BYOK_LOG_LEVEL": "DEBUG",
        }
        server = ServerProcess(tmp_path / "data", env)
        server.start()
        try:
            with grpc.insecure_channel(server.grpc_target) as ch:
                models_pb2_grpc.ModelServiceStub(ch).SetProviderKey(
                    models_pb2.SetProviderKeyRequest(provider="openai", key=planted)
                )
                chat_pb2_grpc.ChatServiceStub(ch).Chat(chat_pb2.ChatRequest(content="use it"))
                upstream.fail(
                    401, body={"error": {"message": f"Incorrect API key provided: {planted}"}}
                )
                try:
                    chat_pb2_grpc.ChatServiceStub(ch).Chat(chat_pb2.ChatRequest(content="again"))
                except grpc.RpcError as err:
                    assert planted not in (err.details() or "")  # the upstream echoed it; we don't
            assert upstream.requests[0].authorization == f"Bearer {planted}"  # it was used
        finally:
            assert server.terminate() == 0
    needle = planted.encode()
    for path in (tmp_path / "data").rglob("*"):  # byok.db, -wal, -shm
        if path.is_file():
            assert needle not in path.read_bytes(), f"the key is readable in {path.name}"
    assert planted not in server.log() and server.log()


async def test_tls_on_both_doors(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    async with running_app(tmp_path / "d", tls_cert=cert, tls_key=key) as srv:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(srv.grpc_target, credentials) as ch:
            listed = await conversations_pb2_grpc.ConversationServiceStub(ch).ListConversations(
                cpb.ListConversationsRequest()
            )
            assert list(listed.conversations) == []
        https = srv.http_url.replace("http://", "https://")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as http:
            assert (await http.get(f"{https}/healthz")).status_code == 200
        async with grpc.aio.insecure_channel(srv.grpc_target) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await conversations_pb2_grpc.ConversationServiceStub(plain).ListConversations(
                    cpb.ListConversationsRequest(), timeout=2
                )


def test_cli_over_tls_with_a_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    env = {"AUTH_MODE": "keys", "BYOK_TLS_CERT": str(cert), "BYOK_TLS_KEY": str(key)}
    data = tmp_path / "data"
    subprocess.run(
        [str(BIN / "byok-server"), "users", "create", "ada", "--data-dir", str(data)], check=True
    )
    made = subprocess.run(
        [str(BIN / "byok-server"), "keys", "create", "--user", "ada", "--data-dir", str(data)],
        check=True,
        capture_output=True,
        text=True,
    )
    api_key = made.stdout.strip()
    assert api_key.startswith("byok_") and api_key not in made.stderr
    server = ServerProcess(data, env, scheme="https", ca=cert)
    server.start()
    try:

        def byok(*args: str, key: str = api_key) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "byok"), "--server", server.grpc_target, *args],
                env={"BYOK_API_KEY": key, "BYOK_CA_FILE": str(cert), "PATH": "/usr/bin"},
                capture_output=True,
                text=True,
                timeout=60,
            )

        ok = byok("conversations", "ls", "--json")
        assert ok.returncode == 0 and ok.stdout.strip() == "[]", ok.stderr
        denied = byok("conversations", "ls", key="byok_wrong")
        assert denied.returncode == 1 and "invalid or revoked API key" in denied.stderr
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"grpc_addr": "0.0.0.0:50051"}, "AUTH_MODE=local"),
        ({"grpc_addr": "0.0.0.0:50051", "auth_mode": "keys"}, "TLS is off"),
        ({"tls_cert": "/nonexistent.pem"}, "BYOK_TLS_CERT"),
        ({"master_key": "short"}, "BYOK_MASTER_KEY"),
        ({"auth_mode": "password"}, "AUTH_MODE"),
    ],
)
def test_unsafe_or_bad_security_settings_refuse_to_start(
    settings: dict[str, str], needle: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**settings)
    assert needle in str(info.value)


def test_allow_insecure_is_explicit() -> None:
    settings = load_settings(grpc_addr="0.0.0.0:50051", auth_mode="keys", allow_insecure=True)
    assert settings.allow_insecure and not settings.tls
