"""ModelService end to end: routes with their metadata and live figures, model profiles
(CRUD, validation, the allowlist), and profiles applied to chat turns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from byok.server.providers.local import default_model_path
from byok.v1 import chat_pb2, chat_pb2_grpc, common_pb2, models_pb2, models_pb2_grpc
from tests.support.rpc import rpc_error
from tests.support.servers import RunningServer, running_app
from tests.support.upstream import ScriptedUpstream

if TYPE_CHECKING:
    ModelStub = models_pb2_grpc.ModelServiceAsyncStub
    ChatStub = chat_pb2_grpc.ChatServiceAsyncStub

CODE = grpc.StatusCode
KEY = "sk-test-0123456789abcdef"


def routes(up: ScriptedUpstream, **extra: str) -> dict[str, str]:
    return {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "MODEL_ROUTE_SMART": "openai/gpt-4o",
        "DEFAULT_MODEL_ROUTE": "FAST",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": up.base_url,
        "READ_TIMEOUT_SECONDS": "1",
        "MAX_RETRIES": "0",
        **extra,
    }


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def srv(tmp_path: Path, upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    async with running_app(tmp_path / "data", routes=routes(upstream)) as running:
        yield running


@pytest.fixture
async def stubs(srv: RunningServer) -> AsyncIterator[tuple[ModelStub, ChatStub]]:
    async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
        yield models_pb2_grpc.ModelServiceStub(ch), chat_pb2_grpc.ChatServiceStub(ch)


@pytest.fixture
def models(stubs: tuple[ModelStub, ChatStub]) -> ModelStub:
    return stubs[0]


async def new_profile(
    models: ModelStub, model_key: str = "FAST", profile_id: str = "", **fields: Any
) -> models_pb2.ModelProfile:
    return await models.CreateModelProfile(
        models_pb2.CreateModelProfileRequest(
            model_profile=models_pb2.ModelProfile(model_key=model_key, **fields),
            model_profile_id=profile_id,
        )
    )


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# -- routes ------------------------------------------------------------------------------


async def test_list_and_get_models(tmp_path: Path) -> None:
    env = {
        "MODEL_ROUTE_FAST": "openai/gpt-4o-mini",
        "MODEL_ROUTE_Smart": "openai/gpt-4o",
        "MODEL_ROUTE_GROQ": "groq/llama-3.1-8b-instant",
        "MODEL_ROUTE_LOCAL": "local/smollm2-135m",
        "OPENAI_API_KEY": KEY,
        "PROVIDER_GROQ_BASE_URL": "http://someone:hunter2@127.0.0.1:9/openai/v1",
        "PROVIDER_GROQ_API_KEY": "gsk-secret-groq",
        "DEFAULT_MODEL_ROUTE": "fast",
        "ALLOWED_MODELS": "gpt-4o-mini,groq/llama-3.1-8b-instant,smollm2-135m",
    }
    async with (
        running_app(tmp_path / "data", routes=env, local_model_context=4096) as srv,
        grpc.aio.insecure_channel(srv.grpc_target) as ch,
    ):
        stub = models_pb2_grpc.ModelServiceStub(ch)
        page = await stub.ListModels(models_pb2.ListModelsRequest())
        assert page.next_page_token == ""
        assert [m.name for m in page.models] == [
            "models/fast",
            "models/groq",
            "models/local",
            "models/smart",
        ]
        fast, groq, local, smart = page.models
        assert (fast.route_key, fast.provider, fast.model_id) == ("FAST", "openai", "gpt-4o-mini")
        assert fast.is_default and fast.allowed and not smart.allowed and not smart.is_default
        assert smart.route_key == "Smart" and smart.context_window == 128_000
        assert fast.source == models_pb2.ModelSource(
            provider="openai", base_url_host="api.openai.com"
        )
        assert fast.capabilities == models_pb2.ModelCapabilities(
            streaming=True, system_prompt=True, tools=True, vision=True, json_mode=True
        )
        assert groq.allowed and groq.source.base_url_host == "127.0.0.1:9"
        assert groq.context_window == 131_072 and groq.capabilities.tools
        assert (fast.quantization, fast.size_bytes) == ("", 0)
        assert local.source == models_pb2.ModelSource(provider="local", local=True)
        assert local.allowed and local.context_window == 4096 and local.quantization == "Q4_1"
        weights = default_model_path()
        assert local.size_bytes == (weights.stat().st_size if weights else 0)
        assert not local.capabilities.tools and local.capabilities.streaming
        assert fast.stats.sample_count == 0 and fast.stats.window.seconds == 300
        wire = page.SerializeToString()
        for secret in (KEY, "gsk-secret-groq", "hunter2", "someone"):
            assert secret.encode() not in wire

        pages: list[str] = []
        token = ""
        while True:
            one = await stub.ListModels(models_pb2.ListModelsRequest(page_size=3, page_token=token))
            pages.append(",".join(m.route_key for m in one.models))
            token = one.next_page_token
            if not token:
                break
        assert pages == ["FAST,GROQ,LOCAL", "Smart"]

        got = await stub.GetModel(models_pb2.GetModelRequest(name="models/SMART"))
        assert got == smart
        with rpc_error(CODE.NOT_FOUND) as err:
            await stub.GetModel(models_pb2.GetModelRequest(name="models/nope"))
        assert err.metadata["name"] == "models/nope"
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await stub.GetModel(models_pb2.GetModelRequest(name="fast"))
        assert err.violations[0][0] == "name"
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await stub.ListModels(models_pb2.ListModelsRequest(page_size=-1))
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await stub.ListModels(models_pb2.ListModelsRequest(page_token="nonsense"))
        assert err.violations[0][0] == "page_token"


async def test_live_stats_come_from_real_turns(
    stubs: tuple[ModelStub, ChatStub], upstream: ScriptedUpstream
) -> None:
    models, chat = stubs
    upstream.reply(["a ", "b ", "c"], delay=0.02, usage=(5, 3))
    await chat.Chat(chat_pb2.ChatRequest(content="one"))
    upstream.reply(["d"], delay=0.02, usage=(5, 1))
    await chat.Chat(chat_pb2.ChatRequest(content="two"))
    upstream.fail(500)
    with pytest.raises(grpc.aio.AioRpcError):
        await chat.Chat(chat_pb2.ChatRequest(content="three"))
    fast = await models.GetModel(models_pb2.GetModelRequest(name="models/fast"))
    stats = fast.stats
    assert stats.sample_count == 3 and stats.error_rate == pytest.approx(1 / 3)
    assert stats.p50_latency.ToNanoseconds() >= 20_000_000
    assert 0 < stats.p50_time_to_first_token.ToNanoseconds() <= stats.p50_latency.ToNanoseconds()
    assert stats.output_tokens_per_second > 0
    smart = await models.GetModel(models_pb2.GetModelRequest(name="models/smart"))
    assert smart.stats.sample_count == 0


# -- profiles: CRUD ----------------------------------------------------------------------


async def test_profile_create_get_list_update_delete(models: ModelStub) -> None:
    params = common_pb2.GenerationParams(system_prompt="Be terse.", temperature=0.7, stop=["END"])
    created = await new_profile(
        models, "fast", "terse", display_name="Terse", description="short answers", params=params
    )
    assert created.name == "modelProfiles/terse" and created.model_key == "FAST"
    assert created.params.temperature == pytest.approx(0.7) and created.params.stop == ["END"]
    assert not created.params.HasField("top_p") and not created.params.HasField("max_tokens")
    assert created.etag and created.create_time == created.update_time

    got = await models.GetModelProfile(models_pb2.GetModelProfileRequest(name=created.name))
    assert got == created

    updated = await models.UpdateModelProfile(
        models_pb2.UpdateModelProfileRequest(
            model_profile=models_pb2.ModelProfile(
                name=created.name,
                display_name="Terse and smart",
                model_key="SMART",
                params=common_pb2.GenerationParams(top_p=0.5),
                etag=created.etag,
            ),
            update_mask=mask("display_name", "model_key", "params.top_p", "params.temperature"),
        )
    )
    assert (updated.display_name, updated.model_key) == ("Terse and smart", "SMART")
    assert updated.description == "short answers"  # not in the mask
    assert updated.params.top_p == pytest.approx(0.5)
    assert not updated.params.HasField("temperature")  # in the mask, unset: cleared
    assert updated.params.system_prompt == "Be terse." and updated.params.stop == ["END"]
    assert updated.etag != created.etag

    replaced = await models.UpdateModelProfile(
        models_pb2.UpdateModelProfileRequest(
            model_profile=models_pb2.ModelProfile(
                name=created.name, params=common_pb2.GenerationParams(max_tokens=64)
            ),
            update_mask=mask("params"),
        )
    )
    assert replaced.params == common_pb2.GenerationParams(max_tokens=64)

    with rpc_error(CODE.ABORTED) as err:  # stale etag
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(
                    name=created.name, display_name="x", etag=created.etag
                ),
                update_mask=mask("display_name"),
            )
        )
    assert err.reason == "ETAG_MISMATCH"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(name=created.name, display_name="x")
            )
        )
    assert err.violations[0][0] == "update_mask"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(name=created.name),
                update_mask=mask("create_time"),
            )
        )
    assert "create_time" in err.message

    with rpc_error(CODE.ABORTED):
        await models.DeleteModelProfile(
            models_pb2.DeleteModelProfileRequest(name=created.name, etag=created.etag)
        )
    await models.DeleteModelProfile(
        models_pb2.DeleteModelProfileRequest(name=created.name, etag=replaced.etag)
    )
    with rpc_error(CODE.NOT_FOUND) as err:
        await models.GetModelProfile(models_pb2.GetModelProfileRequest(name=created.name))
    assert err.metadata["name"] == created.name
    with rpc_error(CODE.NOT_FOUND):
        await models.DeleteModelProfile(models_pb2.DeleteModelProfileRequest(name=created.name))
    with rpc_error(CODE.NOT_FOUND):
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(name=created.name, display_name="x"),
                update_mask=mask("display_name"),
            )
        )


async def test_profile_ids_request_ids_and_paging(models: ModelStub) -> None:
    request = models_pb2.CreateModelProfileRequest(
        model_profile=models_pb2.ModelProfile(model_key="FAST", display_name="once"),
        request_id="7b1c2f3e-0000-4000-8000-000000000001",
    )
    first = await models.CreateModelProfile(request)
    again = await models.CreateModelProfile(request)  # a retry: the first result
    assert again == first
    taken = await new_profile(models, profile_id="taken")
    with rpc_error(CODE.ALREADY_EXISTS) as err:
        await new_profile(models, profile_id="taken")
    assert err.reason == "MODEL_PROFILE_EXISTS" and err.metadata["name"] == taken.name
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_profile(models, profile_id="Not An Id")
    assert err.violations[0][0] == "model_profile_id"

    made = [first.name, taken.name]
    made += [(await new_profile(models, display_name=f"p{i}")).name for i in range(3)]
    seen: list[str] = []
    token = ""
    while True:
        page = await models.ListModelProfiles(
            models_pb2.ListModelProfilesRequest(page_size=2, page_token=token)
        )
        assert len(page.model_profiles) <= 2
        seen += [p.name for p in page.model_profiles]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))  # newest first, each once
    with rpc_error(CODE.INVALID_ARGUMENT):
        await models.ListModelProfiles(models_pb2.ListModelProfilesRequest(page_size=-5))


async def test_profile_validation(models: ModelStub) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_profile(models, "turbo")
    assert err.violations[0][0] == "model_profile.model_key"
    assert "turbo" in err.message and "FAST, SMART" in err.message
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_profile(models, "")
    assert err.violations[0][0] == "model_profile.model_key" and "FAST" in err.message
    for params, field in [
        (common_pb2.GenerationParams(temperature=2.5), "model_profile.params.temperature"),
        (common_pb2.GenerationParams(top_p=1.5), "model_profile.params.top_p"),
        (common_pb2.GenerationParams(max_tokens=0), "model_profile.params.max_tokens"),
        (common_pb2.GenerationParams(stop=["a", "b", "c", "d", "e"]), "model_profile.params.stop"),
    ]:
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await new_profile(models, params=params)
        assert err.violations[0][0] == field
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_profile(models, display_name="x" * 257)
    assert err.violations[0][0] == "model_profile.display_name"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await models.GetModelProfile(models_pb2.GetModelProfileRequest(name="profiles/x"))
    assert err.violations[0][0] == "name"
    profile = await new_profile(models)
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(name=profile.name, model_key="nope"),
                update_mask=mask("model_key"),
            )
        )
    assert err.violations[0][0] == "model_profile.model_key"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await models.UpdateModelProfile(
            models_pb2.UpdateModelProfileRequest(
                model_profile=models_pb2.ModelProfile(
                    name=profile.name, params=common_pb2.GenerationParams(temperature=-1)
                ),
                update_mask=mask("params.temperature"),
            )
        )
    assert err.violations[0][0] == "model_profile.params.temperature"


async def test_allowlist_refuses_profiles_over_disallowed_models(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    env = routes(upstream, ALLOWED_MODELS="gpt-4o-mini")
    async with (
        running_app(tmp_path / "data", routes=env) as srv,
        grpc.aio.insecure_channel(srv.grpc_target) as ch,
    ):
        models = models_pb2_grpc.ModelServiceStub(ch)
        with rpc_error(CODE.PERMISSION_DENIED) as err:
            await new_profile(models, "SMART")
        assert err.reason == "MODEL_NOT_ALLOWED"
        assert err.metadata["model"] == "gpt-4o" and err.metadata["route"] == "SMART"
        assert "ALLOWED_MODELS" in err.message and "gpt-4o-mini" in err.message
        ok = await new_profile(models, "FAST")
        with rpc_error(CODE.PERMISSION_DENIED) as err:
            await models.UpdateModelProfile(
                models_pb2.UpdateModelProfileRequest(
                    model_profile=models_pb2.ModelProfile(name=ok.name, model_key="smart"),
                    update_mask=mask("model_key"),
                )
            )
        assert err.reason == "MODEL_NOT_ALLOWED"
        listed = await models.ListModelProfiles(models_pb2.ListModelProfilesRequest())
        assert [p.model_key for p in listed.model_profiles] == ["FAST"]


# -- profiles in chat --------------------------------------------------------------------


async def test_chat_with_a_profile_uses_its_route_and_params(
    stubs: tuple[ModelStub, ChatStub], upstream: ScriptedUpstream
) -> None:
    models, chat = stubs
    params = common_pb2.GenerationParams(
        system_prompt="You are a poet.", temperature=1.2, max_tokens=80, stop=["END"]
    )
    poet = await new_profile(models, "SMART", "poet", params=params)

    reply = await chat.Chat(chat_pb2.ChatRequest(content="A haiku", model_profile=poet.name))
    assert reply.reply.route == "SMART" and reply.reply.model == "gpt-4o"
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {"role": "system", "content": "You are a poet."}
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (1.2, 80, ["END"])
    assert "top_p" not in sent

    # The request's own params win field by field; its model_key wins over the profile's.
    await chat.Chat(
        chat_pb2.ChatRequest(
            conversation=reply.conversation,
            content="Another",
            model_profile=poet.name,
            model_key="fast",
            params=common_pb2.GenerationParams(temperature=0.0, top_p=0.5),
        )
    )
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0] == {"role": "system", "content": "You are a poet."}
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.0, 0.5, 80)

    with rpc_error(CODE.NOT_FOUND) as err:
        await chat.Chat(chat_pb2.ChatRequest(content="x", model_profile="modelProfiles/none"))
    assert err.metadata["name"] == "modelProfiles/none"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await chat.Chat(chat_pb2.ChatRequest(content="x", model_profile="poet"))
    assert err.violations[0][0] == "model_profile"


async def test_chat_refuses_a_profile_whose_model_is_no_longer_allowed(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    data = tmp_path / "data"
    async with (
        running_app(data, routes=routes(upstream)) as srv,
        grpc.aio.insecure_channel(srv.grpc_target) as ch,
    ):
        await new_profile(models_pb2_grpc.ModelServiceStub(ch), "SMART", "big")
    # The operator narrows the allowlist; the stored profile now names a refused model.
    async with (
        running_app(data, routes=routes(upstream, ALLOWED_MODELS="gpt-4o-mini")) as srv,
        grpc.aio.insecure_channel(srv.grpc_target) as ch,
    ):
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        sent_before = len(upstream.requests)
        with rpc_error(CODE.PERMISSION_DENIED) as err:
            await chat.Chat(chat_pb2.ChatRequest(content="hi", model_profile="modelProfiles/big"))
        assert err.reason == "MODEL_NOT_ALLOWED"
        assert "modelProfiles/big" in err.message and err.metadata["model"] == "gpt-4o"
        assert len(upstream.requests) == sent_before  # refused before any upstream call
        # Naming an allowed route overrides the profile's route (params still apply).
        reply = await chat.Chat(
            chat_pb2.ChatRequest(content="hi", model_profile="modelProfiles/big", model_key="FAST")
        )
        assert reply.reply.model == "gpt-4o-mini"
