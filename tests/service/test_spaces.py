"""SpaceService end to end: CRUD, linked model profiles and the default, conversations
in spaces (count, force delete), a space's default profile reaching the upstream, and
the `byok spaces` / `byok profiles` / `byok models` commands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from typer.testing import CliRunner

from byok.client import cli
from byok.client.workspace_cli import register
from byok.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    common_pb2,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    spaces_pb2,
    spaces_pb2_grpc,
)
from tests.support.rpc import rpc_error
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream

if TYPE_CHECKING:
    SpaceStub = spaces_pb2_grpc.SpaceServiceAsyncStub
    ModelStub = models_pb2_grpc.ModelServiceAsyncStub
    ConvStub = conversations_pb2_grpc.ConversationServiceAsyncStub
    ChatStub = chat_pb2_grpc.ChatServiceAsyncStub

CODE = grpc.StatusCode


class Stubs:
    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.spaces: SpaceStub = spaces_pb2_grpc.SpaceServiceStub(ch)
        self.models: ModelStub = models_pb2_grpc.ModelServiceStub(ch)
        self.convs: ConvStub = conversations_pb2_grpc.ConversationServiceStub(ch)
        self.chat: ChatStub = chat_pb2_grpc.ChatServiceStub(ch)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def srv(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    env = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "MODEL_ROUTE_SMART": "openai/gpt-4o",
        "DEFAULT_MODEL_ROUTE": "FAST",
        "OPENAI_API_KEY": "sk-test-0123456789abcdef",
        "OPENAI_BASE_URL": upstream.base_url,
        "MAX_RETRIES": "0",
    }
    async with running_app(tmp_path / "data", routes=env) as running:
        yield running


@pytest.fixture
async def stubs(srv: RunningServer) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        yield Stubs(ch)


async def new_space(
    s: Stubs, display_name: str = "Work", space_id: str = "", **fields: Any
) -> spaces_pb2.Space:
    return await s.spaces.CreateSpace(
        spaces_pb2.CreateSpaceRequest(
            space=spaces_pb2.Space(display_name=display_name, **fields), space_id=space_id
        )
    )


async def new_profile(s: Stubs, profile_id: str, model_key: str = "FAST", **fields: Any) -> str:
    profile = await s.models.CreateModelProfile(
        models_pb2.CreateModelProfileRequest(
            model_profile=models_pb2.ModelProfile(model_key=model_key, **fields),
            model_profile_id=profile_id,
        )
    )
    return profile.name


async def new_conversation(s: Stubs, space: str, title: str = "") -> conversations_pb2.Conversation:
    return await s.convs.CreateConversation(
        conversations_pb2.CreateConversationRequest(
            conversation=conversations_pb2.Conversation(title=title, space=space)
        )
    )


async def link(s: Stubs, space: str, profile: str, make_default: bool = False) -> spaces_pb2.Space:
    return await s.spaces.LinkModelProfile(
        spaces_pb2.LinkModelProfileRequest(
            space=space, model_profile=profile, make_default=make_default
        )
    )


async def set_default(s: Stubs, space: str, profile: str) -> spaces_pb2.Space:
    return await s.spaces.UpdateSpace(
        spaces_pb2.UpdateSpaceRequest(
            space=spaces_pb2.Space(name=space, default_model_profile=profile),
            update_mask=field_mask_pb2.FieldMask(paths=["default_model_profile"]),
        )
    )


# -- CRUD --------------------------------------------------------------------------------


async def test_space_create_get_list_update_delete(stubs: Stubs) -> None:
    space = await new_space(stubs, "Novel", "novel", description="the book")
    assert space.name == "spaces/novel" and space.display_name == "Novel"
    assert space.description == "the book" and space.etag
    assert (space.conversation_count, list(space.model_profiles)) == (0, [])
    assert space.default_model_profile == "" and space.create_time == space.update_time
    assert await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name=space.name)) == space

    updated = await stubs.spaces.UpdateSpace(
        spaces_pb2.UpdateSpaceRequest(
            space=spaces_pb2.Space(name=space.name, display_name="My novel", etag=space.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.display_name == "My novel" and updated.description == "the book"
    assert updated.etag != space.etag
    with rpc_error(CODE.ABORTED) as err:
        await stubs.spaces.UpdateSpace(
            spaces_pb2.UpdateSpaceRequest(
                space=spaces_pb2.Space(name=space.name, description="x", etag=space.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            )
        )
    assert err.reason == "ETAG_MISMATCH"
    for paths, field in [([], "update_mask"), (["conversation_count"], "update_mask")]:
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await stubs.spaces.UpdateSpace(
                spaces_pb2.UpdateSpaceRequest(
                    space=spaces_pb2.Space(name=space.name, display_name="x"),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )
        assert err.violations[0][0] == field
    with rpc_error(CODE.INVALID_ARGUMENT) as err:  # display_name stays required
        await stubs.spaces.UpdateSpace(
            spaces_pb2.UpdateSpaceRequest(
                space=spaces_pb2.Space(name=space.name),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert err.violations[0][0] == "space.display_name"

    with rpc_error(CODE.ABORTED):
        await stubs.spaces.DeleteSpace(
            spaces_pb2.DeleteSpaceRequest(name=space.name, etag=space.etag)
        )
    await stubs.spaces.DeleteSpace(
        spaces_pb2.DeleteSpaceRequest(name=space.name, etag=updated.etag)
    )
    with rpc_error(CODE.NOT_FOUND) as err:
        await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name=space.name))
    assert err.metadata["name"] == "spaces/novel"
    with rpc_error(CODE.NOT_FOUND):
        await stubs.spaces.DeleteSpace(spaces_pb2.DeleteSpaceRequest(name=space.name))


async def test_space_validation_ids_request_ids_and_paging(stubs: Stubs) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_space(stubs, "")
    assert err.violations[0][0] == "space.display_name"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_space(stubs, "x" * 257)
    assert err.violations[0][0] == "space.display_name"
    assert (await new_space(stubs, "x" * 256)).display_name == "x" * 256
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_space(stubs, "ok", "Bad_Id")
    assert err.violations[0][0] == "space_id"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name="space/x"))
    assert err.violations[0][0] == "name"
    with rpc_error(CODE.FAILED_PRECONDITION) as err:  # nothing is linked to a new space
        await new_space(stubs, "ok", default_model_profile="modelProfiles/p")
    assert err.reason == "MODEL_PROFILE_NOT_LINKED"

    request = spaces_pb2.CreateSpaceRequest(
        space=spaces_pb2.Space(display_name="Once"),
        request_id="5f0e6c59-0000-4000-8000-000000000002",
    )
    first = await stubs.spaces.CreateSpace(request)
    assert await stubs.spaces.CreateSpace(request) == first
    await new_space(stubs, "Taken", "taken")
    with rpc_error(CODE.ALREADY_EXISTS) as err:
        await new_space(stubs, "Again", "taken")
    assert err.reason == "SPACE_EXISTS"

    seen: list[str] = []
    token = ""
    while True:
        page = await stubs.spaces.ListSpaces(
            spaces_pb2.ListSpacesRequest(page_size=2, page_token=token)
        )
        seen += [s.name for s in page.spaces]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 3 and seen[0] == "spaces/taken" and seen[1] == first.name  # newest first
    with rpc_error(CODE.INVALID_ARGUMENT):
        await stubs.spaces.ListSpaces(spaces_pb2.ListSpacesRequest(page_size=-1))


# -- linked profiles ---------------------------------------------------------------------


async def test_link_unlink_and_the_default(stubs: Stubs) -> None:
    space = (await new_space(stubs, "Work", "work")).name
    p1 = await new_profile(stubs, "p1")
    p2 = await new_profile(stubs, "p2", "SMART")
    p3 = await new_profile(stubs, "p3")

    linked = await link(stubs, space, p1, make_default=True)
    assert list(linked.model_profiles) == [p1] and linked.default_model_profile == p1
    linked = await link(stubs, space, p2)
    assert list(linked.model_profiles) == [p1, p2] and linked.default_model_profile == p1
    again = await link(stubs, space, p1)  # linking twice changes nothing
    assert again == linked

    changed = await set_default(stubs, space, p2)
    assert changed.default_model_profile == p2
    with rpc_error(CODE.FAILED_PRECONDITION) as err:  # p3 exists but is not linked
        await set_default(stubs, space, p3)
    assert err.reason == "MODEL_PROFILE_NOT_LINKED" and err.metadata["model_profile"] == p3
    with rpc_error(CODE.NOT_FOUND) as err:
        await set_default(stubs, space, "modelProfiles/ghost")
    assert err.metadata["name"] == "modelProfiles/ghost"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await set_default(stubs, space, "p2")
    assert err.violations[0][0] == "space.default_model_profile"

    unlinked = await stubs.spaces.UnlinkModelProfile(
        spaces_pb2.UnlinkModelProfileRequest(space=space, model_profile=p2)
    )
    assert list(unlinked.model_profiles) == [p1] and unlinked.default_model_profile == ""
    same = await stubs.spaces.UnlinkModelProfile(  # not linked: nothing to do
        spaces_pb2.UnlinkModelProfileRequest(space=space, model_profile=p2)
    )
    assert same == unlinked

    cleared = await set_default(stubs, space, p1)
    cleared = await set_default(stubs, space, "")
    assert cleared.default_model_profile == "" and list(cleared.model_profiles) == [p1]

    with rpc_error(CODE.NOT_FOUND) as err:
        await link(stubs, "spaces/nowhere", p1)
    assert err.metadata["name"] == "spaces/nowhere"
    with rpc_error(CODE.NOT_FOUND) as err:
        await link(stubs, space, "modelProfiles/ghost")
    assert err.metadata["name"] == "modelProfiles/ghost"
    with rpc_error(CODE.NOT_FOUND):
        await stubs.spaces.UnlinkModelProfile(
            spaces_pb2.UnlinkModelProfileRequest(space=space, model_profile="modelProfiles/ghost")
        )
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await link(stubs, space, "")
    assert err.violations[0][0] == "model_profile"


async def test_deleting_a_profile_unlinks_it_everywhere(stubs: Stubs) -> None:
    a = (await new_space(stubs, "A", "a")).name
    b = (await new_space(stubs, "B", "b")).name
    keep = await new_profile(stubs, "keep")
    gone = await new_profile(stubs, "gone")
    await link(stubs, a, keep)
    before_a = await link(stubs, a, gone, make_default=True)
    before_b = await link(stubs, b, gone)
    await stubs.models.DeleteModelProfile(models_pb2.DeleteModelProfileRequest(name=gone))
    after_a = await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name=a))
    after_b = await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name=b))
    assert list(after_a.model_profiles) == [keep] and after_a.default_model_profile == ""
    assert list(after_b.model_profiles) == []
    assert after_a.etag != before_a.etag and after_b.etag != before_b.etag


# -- conversations in spaces -------------------------------------------------------------


async def test_conversation_count_and_deleting_a_non_empty_space(stubs: Stubs) -> None:
    work = (await new_space(stubs, "Work", "work")).name
    other = (await new_space(stubs, "Other", "other")).name
    one = await new_conversation(stubs, work, "one")
    two = await new_conversation(stubs, work, "two")
    elsewhere = await new_conversation(stubs, other, "elsewhere")
    await stubs.convs.UpdateConversation(  # archived ones count too
        conversations_pb2.UpdateConversationRequest(
            conversation=conversations_pb2.Conversation(name=two.name, archived=True),
            update_mask=field_mask_pb2.FieldMask(paths=["archived"]),
        )
    )
    space = await stubs.spaces.GetSpace(spaces_pb2.GetSpaceRequest(name=work))
    assert space.conversation_count == 2
    listed = await stubs.spaces.ListSpaces(spaces_pb2.ListSpacesRequest())
    assert {s.name: s.conversation_count for s in listed.spaces} == {work: 2, other: 1}

    with rpc_error(CODE.FAILED_PRECONDITION) as err:
        await stubs.spaces.DeleteSpace(spaces_pb2.DeleteSpaceRequest(name=work))
    assert err.reason == "SPACE_NOT_EMPTY" and err.metadata["conversation_count"] == "2"
    await stubs.spaces.DeleteSpace(spaces_pb2.DeleteSpaceRequest(name=work, force=True))
    for conv in (one, two):
        with rpc_error(CODE.NOT_FOUND):
            await stubs.convs.GetConversation(
                conversations_pb2.GetConversationRequest(name=conv.name)
            )
    kept = await stubs.convs.GetConversation(
        conversations_pb2.GetConversationRequest(name=elsewhere.name)
    )
    assert kept.space == other
    empty = (await new_space(stubs, "Empty")).name
    await stubs.spaces.DeleteSpace(spaces_pb2.DeleteSpaceRequest(name=empty))  # no force needed


async def test_conversations_only_go_into_existing_spaces(stubs: Stubs) -> None:
    with rpc_error(CODE.NOT_FOUND) as err:
        await new_conversation(stubs, "spaces/nowhere")
    assert err.metadata["name"] == "spaces/nowhere"
    conv = await new_conversation(stubs, "")
    with rpc_error(CODE.NOT_FOUND):
        await stubs.convs.UpdateConversation(
            conversations_pb2.UpdateConversationRequest(
                conversation=conversations_pb2.Conversation(name=conv.name, space="spaces/x"),
                update_mask=field_mask_pb2.FieldMask(paths=["space"]),
            )
        )
    await new_space(stubs, "X", "x")
    moved = await stubs.convs.UpdateConversation(
        conversations_pb2.UpdateConversationRequest(
            conversation=conversations_pb2.Conversation(name=conv.name, space="spaces/x"),
            update_mask=field_mask_pb2.FieldMask(paths=["space"]),
        )
    )
    assert moved.space == "spaces/x"


async def test_a_space_default_profile_reaches_the_upstream(
    stubs: Stubs, upstream: ScriptedUpstream
) -> None:
    space = (await new_space(stubs, "Poems", "poems")).name
    params = common_pb2.GenerationParams(system_prompt="Answer in verse.", temperature=1.5)
    poet = await new_profile(stubs, "poet", "SMART", params=params)
    await link(stubs, space, poet, make_default=True)

    first = await stubs.chat.Chat(chat_pb2.ChatRequest(content="Rain?", space=space))
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o" and sent["temperature"] == 1.5
    assert sent["messages"][0] == {"role": "system", "content": "Answer in verse."}
    conv = await stubs.convs.GetConversation(
        conversations_pb2.GetConversationRequest(name=first.conversation)
    )
    assert conv.space == space

    # A follow-up in the space's conversation: the default applies again, under the
    # request's own params.
    await stubs.chat.Chat(
        chat_pb2.ChatRequest(
            conversation=first.conversation,
            content="Snow?",
            params=common_pb2.GenerationParams(temperature=0.25),
        )
    )
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o" and sent["temperature"] == 0.25
    assert sent["messages"][0]["content"] == "Answer in verse."

    # Naming a route opts out of the default profile.
    await stubs.chat.Chat(
        chat_pb2.ChatRequest(conversation=first.conversation, content="Sun?", model_key="FAST")
    )
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o-mini" and "temperature" not in sent
    assert sent["messages"][0]["role"] == "user"

    # Without a default, the default route answers; a missing space is NOT_FOUND.
    await set_default(stubs, space, "")
    await stubs.chat.Chat(chat_pb2.ChatRequest(conversation=first.conversation, content="Fog?"))
    assert upstream.requests[-1].json["model"] == "gpt-4o-mini"
    with rpc_error(CODE.NOT_FOUND) as err:
        await stubs.chat.Chat(chat_pb2.ChatRequest(content="hi", space="spaces/nowhere"))
    assert err.metadata["name"] == "spaces/nowhere"


# -- the CLI -----------------------------------------------------------------------------


async def byok(srv: RunningServer, *args: str) -> tuple[int, str, str]:
    """`byok --server <srv> args...` in a worker thread (the server shares this loop)."""
    register(cli.app)
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, cli.app, ["--server", srv.grpc_target, *args], catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


async def test_cli_models_profiles_and_spaces(srv: RunningServer) -> None:
    code, out, _ = await byok(srv, "models", "ls")
    assert code == 0 and "FAST *" in out and "gpt-4o" in out and "128,000" in out
    code, out, _ = await byok(srv, "models", "ls", "--json")
    models = json.loads(out)
    assert [m["name"] for m in models] == ["models/fast", "models/smart"]
    code, out, _ = await byok(srv, "models", "show", "smart")
    assert code == 0 and "models/smart  openai/gpt-4o" in out

    code, out, _ = await byok(
        srv,
        "profiles",
        "create",
        "--model",
        "smart",
        "--id",
        "poet",
        "--name",
        "Poet",
        "--system",
        "Answer in verse.",
        "--temperature",
        "1.2",
        "--stop",
        "END",
    )
    assert code == 0 and out.strip() == "modelProfiles/poet"
    code, out, _ = await byok(srv, "profiles", "ls")
    assert code == 0 and "poet" in out and "SMART" in out and "temperature=1.2" in out
    code, out, _ = await byok(
        srv, "profiles", "update", "poet", "--top-p", "0.5", "--clear", "stop"
    )
    assert code == 0 and out.strip() == "updated modelProfiles/poet"
    code, out, _ = await byok(srv, "profiles", "show", "poet", "--json")
    shown = json.loads(out)
    assert shown["params"] == {
        "systemPrompt": "Answer in verse.",
        "temperature": pytest.approx(1.2),
        "topP": 0.5,
    }
    code, _, err = await byok(srv, "profiles", "create", "--model", "turbo")
    assert code == 1 and "turbo" in err and "FAST, SMART" in err

    code, out, _ = await byok(srv, "spaces", "create", "Poems", "--id", "poems")
    assert code == 0 and out.strip() == "spaces/poems"
    code, out, _ = await byok(srv, "spaces", "link", "poems", "poet", "--default")
    assert code == 0 and "poet (default)" in out
    code, out, _ = await byok(srv, "spaces", "ls", "--json")
    assert json.loads(out)[0]["defaultModelProfile"] == "modelProfiles/poet"
    code, out, _ = await byok(srv, "spaces", "unlink", "poems", "poet")
    assert code == 0 and "profiles: (none)" in out
    code, out, _ = await byok(srv, "spaces", "show", "poems")
    assert code == 0 and "conversations: 0" in out

    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        await new_conversation(Stubs(ch), "spaces/poems")
    code, _, err = await byok(srv, "spaces", "rm", "poems")
    assert code == 1 and "force" in err
    code, _, err = await byok(srv, "spaces", "rm", "poems", "--force")  # stdin is no terminal
    assert code == 1 and "--yes" in err
    code, out, _ = await byok(srv, "spaces", "rm", "poems", "--force", "--yes")
    assert code == 0 and out.strip() == "deleted spaces/poems"
    code, out, _ = await byok(srv, "profiles", "rm", "poet")
    assert code == 0 and out.strip() == "deleted modelProfiles/poet"
    code, _, err = await byok(srv, "profiles", "show", "poet")
    assert code == 1 and "modelProfiles/poet not found" in err
