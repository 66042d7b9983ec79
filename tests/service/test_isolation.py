"""Two users, every RPC in the contract: another user's resource is NOT_FOUND, never
revealed by id, list, search, export or stream. The test fails if an RPC is added to
the contract without being walked here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import field_mask_pb2

from byok.server.accounts.provider_keys import new_master_key
from byok.server.accounts.users import Accounts
from byok.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    spaces_pb2,
    spaces_pb2_grpc,
)
from byok.v1 import conversations_pb2 as cpb
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream

CODE = grpc.StatusCode
MODULES = (conversations_pb2, chat_pb2, models_pb2, spaces_pb2)


def every_rpc() -> set[str]:
    return {
        f"{service.name}.{method.name}"
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def srv(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    routes = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "OPENAI_API_KEY": "sk-server-0000000000",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    async with running_app(
        tmp_path / "data", routes=routes, auth_mode="keys", master_key=new_master_key()
    ) as running:
        yield running


class Caller:
    """One user's stubs; records which RPCs the test walked."""

    walked: ClassVar[set[str]] = set()

    def __init__(self, ch: grpc.aio.Channel, key: str) -> None:
        self.md = (("authorization", f"Bearer {key}"),)
        self.conv = conversations_pb2_grpc.ConversationServiceStub(ch)
        self.chat = chat_pb2_grpc.ChatServiceStub(ch)
        self.models = models_pb2_grpc.ModelServiceStub(ch)
        self.spaces = spaces_pb2_grpc.SpaceServiceStub(ch)

    async def call(self, service: str, method: str, request: Any) -> Any:
        Caller.walked.add(f"{service}.{method}")
        stub = {
            "ConversationService": self.conv,
            "ChatService": self.chat,
            "ModelService": self.models,
            "SpaceService": self.spaces,
        }[service]
        rpc = getattr(stub, method)
        result = rpc(request, metadata=self.md)
        if hasattr(result, "__aiter__"):
            return [item async for item in result]
        return await result

    async def not_found(self, service: str, method: str, request: Any) -> None:
        try:
            await self.call(service, method, request)
        except grpc.aio.AioRpcError as err:
            assert err.code() == CODE.NOT_FOUND, f"{service}.{method}: {err.code()} {err.details()}"
            return
        raise AssertionError(f"{service}.{method} reached another user's resource")


async def test_a_second_user_cannot_reach_anything_of_the_first(
    srv: RunningServer, upstream: ScriptedUpstream
) -> None:
    accounts = Accounts(srv.app.store)  # type: ignore[arg-type]
    await accounts.create_user("ada")
    await accounts.create_user("bob")
    ada_key, bob_key = (
        (await accounts.create_key("ada")).key,
        (await accounts.create_key("bob")).key,
    )
    Caller.walked = set()
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        ada, bob = Caller(ch, ada_key), Caller(ch, bob_key)
        C, H, M, S = "ConversationService", "ChatService", "ModelService", "SpaceService"

        # Ada's world: a space, a profile linked to it, a thread with messages, a key.
        space = await ada.call(
            S,
            "CreateSpace",
            spaces_pb2.CreateSpaceRequest(
                space=spaces_pb2.Space(display_name="Ada's"), space_id="ada-space"
            ),
        )
        profile = await ada.call(
            M,
            "CreateModelProfile",
            models_pb2.CreateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(model_key="FAST"), model_profile_id="ada-prof"
            ),
        )
        await ada.call(
            S,
            "LinkModelProfile",
            spaces_pb2.LinkModelProfileRequest(space=space.name, model_profile=profile.name),
        )
        upstream.reply(["secret answer"])
        turn = await ada.call(
            H, "Chat", chat_pb2.ChatRequest(content="the launch code is zebra", space=space.name)
        )
        conv, message = turn.conversation, turn.user_message.name
        await ada.call(
            M,
            "SetProviderKey",
            models_pb2.SetProviderKeyRequest(provider="openai", key="sk-ada-personal-1234"),
        )

        # Bob, by id: NOT_FOUND everywhere.
        await bob.not_found(C, "GetConversation", cpb.GetConversationRequest(name=conv))
        await bob.not_found(
            C,
            "UpdateConversation",
            cpb.UpdateConversationRequest(
                conversation=cpb.Conversation(name=conv, title="mine"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
        )
        await bob.not_found(
            C, "DeleteConversation", cpb.DeleteConversationRequest(name=conv, force=True)
        )
        await bob.not_found(C, "ListMessages", cpb.ListMessagesRequest(parent=conv))
        await bob.not_found(
            C,
            "CreateMessage",
            cpb.CreateMessageRequest(
                parent=conv, message=cpb.Message(role=cpb.ROLE_USER, content="x")
            ),
        )
        await bob.not_found(C, "GetMessage", cpb.GetMessageRequest(name=message))
        await bob.not_found(
            C,
            "UpdateMessage",
            cpb.UpdateMessageRequest(
                message=cpb.Message(name=message, content="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["content"]),
            ),
        )
        await bob.not_found(C, "DeleteMessage", cpb.DeleteMessageRequest(name=message))
        await bob.not_found(
            C, "SearchMessages", cpb.SearchMessagesRequest(parent=conv, query="zebra")
        )
        await bob.not_found(C, "ExportConversations", cpb.ExportConversationsRequest(names=[conv]))
        await bob.not_found(
            C,
            "CreateConversation",
            cpb.CreateConversationRequest(conversation=cpb.Conversation(space=space.name)),
        )
        await bob.not_found(H, "Chat", chat_pb2.ChatRequest(conversation=conv, content="x"))
        await bob.not_found(H, "StreamChat", chat_pb2.ChatRequest(conversation=conv, content="x"))
        await bob.not_found(
            H, "Chat", chat_pb2.ChatRequest(content="x", model_profile=profile.name)
        )
        await bob.not_found(
            M, "GetModelProfile", models_pb2.GetModelProfileRequest(name=profile.name)
        )
        await bob.not_found(
            M,
            "UpdateModelProfile",
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(name=profile.name, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
        )
        await bob.not_found(
            M, "DeleteModelProfile", models_pb2.DeleteModelProfileRequest(name=profile.name)
        )
        await bob.not_found(
            M, "DeleteProviderKey", models_pb2.DeleteProviderKeyRequest(name="providerKeys/openai")
        )
        await bob.not_found(S, "GetSpace", spaces_pb2.GetSpaceRequest(name=space.name))
        await bob.not_found(
            S,
            "UpdateSpace",
            spaces_pb2.UpdateSpaceRequest(
                space=spaces_pb2.Space(name=space.name, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
        )
        await bob.not_found(
            S, "DeleteSpace", spaces_pb2.DeleteSpaceRequest(name=space.name, force=True)
        )
        await bob.not_found(
            S,
            "LinkModelProfile",
            spaces_pb2.LinkModelProfileRequest(space=space.name, model_profile=profile.name),
        )
        await bob.not_found(
            S,
            "UnlinkModelProfile",
            spaces_pb2.UnlinkModelProfileRequest(space=space.name, model_profile=profile.name),
        )
        mine = await bob.call(
            S,
            "CreateSpace",
            spaces_pb2.CreateSpaceRequest(space=spaces_pb2.Space(display_name="Bob's")),
        )
        await bob.not_found(
            S,
            "LinkModelProfile",
            spaces_pb2.LinkModelProfileRequest(space=mine.name, model_profile=profile.name),
        )

        # Bob, by list, search, export and stream: nothing of Ada's shows.
        listed = await bob.call(C, "ListConversations", cpb.ListConversationsRequest())
        assert list(listed.conversations) == []
        found = await bob.call(
            C, "SearchMessages", cpb.SearchMessagesRequest(parent="conversations/-", query="zebra")
        )
        assert list(found.results) == []
        exported = await bob.call(C, "ExportConversations", cpb.ExportConversationsRequest())
        document = b"".join(e.data for e in exported if e.WhichOneof("event") == "data")
        assert json.loads(document)["conversations"] == [] and b"zebra" not in document
        assert (
            list(
                (
                    await bob.call(M, "ListModelProfiles", models_pb2.ListModelProfilesRequest())
                ).model_profiles
            )
            == []
        )
        assert [
            s.name for s in (await bob.call(S, "ListSpaces", spaces_pb2.ListSpacesRequest())).spaces
        ] == [mine.name]
        assert (
            list(
                (
                    await bob.call(M, "ListProviderKeys", models_pb2.ListProviderKeysRequest())
                ).provider_keys
            )
            == []
        )

        # What is shared by design (the server's routes) and what Bob makes is his.
        assert [
            m.route_key
            for m in (await bob.call(M, "ListModels", models_pb2.ListModelsRequest())).models
        ] == ["FAST"]
        assert (
            await bob.call(M, "GetModel", models_pb2.GetModelRequest(name="models/fast"))
        ).model_id == "gpt-4o-mini"
        await bob.call(
            M,
            "SetProviderKey",
            models_pb2.SetProviderKeyRequest(provider="openai", key="sk-bob-9999999999"),
        )
        upstream.reply(["hi bob"])
        events = await bob.call(H, "StreamChat", chat_pb2.ChatRequest(content="hello"))
        assert upstream.requests[-1].authorization == "Bearer sk-bob-9999999999"
        assert events[0].started.conversation != conv
        # Importing Ada's own export as Bob makes Bob's copy, never touches Ada's thread.
        ada_export = await ada.call(
            C, "ExportConversations", cpb.ExportConversationsRequest(names=[conv])
        )
        data = b"".join(e.data for e in ada_export if e.WhichOneof("event") == "data")
        imported = await bob.call(
            C, "ImportConversations", cpb.ImportConversationsRequest(data=data)
        )
        assert imported.created_count == 1 and imported.conversations[0] != conv
        still = await ada.call(C, "GetConversation", cpb.GetConversationRequest(name=conv))
        assert still.message_count == 2 and still.space == space.name

    assert Caller.walked == every_rpc(), f"not walked: {sorted(every_rpc() - Caller.walked)}"
