"""ModelService: proto in, `ModelCatalog` / `ModelProfiles` core call, proto out."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from byok.server.errors import Unimplemented
from byok.server.models.catalog import ModelCatalog, ModelInfo
from byok.server.models.profiles import ModelProfiles
from byok.server.models.stats import RouteStats
from byok.server.rpc.calls import user_of
from byok.server.services.convert import duration, timestamp
from byok.server.storage.workspace import ModelProfile, Params
from byok.v1 import common_pb2, models_pb2, models_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def params_from_pb(p: common_pb2.GenerationParams) -> Params:
    """Only the fields the caller set."""
    return Params(
        system_prompt=p.system_prompt if p.HasField("system_prompt") else None,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
        stop=tuple(p.stop),
    )


def params_pb(p: Params) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(
        system_prompt=p.system_prompt,
        temperature=p.temperature,
        top_p=p.top_p,
        max_tokens=p.max_tokens,
        stop=list(p.stop),
    )


def profile_pb(p: ModelProfile) -> models_pb2.ModelProfile:
    return models_pb2.ModelProfile(
        name=p.name,
        display_name=p.display_name,
        description=p.description,
        model_key=p.model_key,
        params=params_pb(p.params),
        create_time=timestamp(p.create_time_us),
        update_time=timestamp(p.update_time_us),
        etag=p.etag,
    )


def stats_pb(s: RouteStats) -> models_pb2.ModelStats:
    def us(seconds: float | None) -> Any:
        return duration(round(seconds * 1e6)) if seconds is not None else None

    return models_pb2.ModelStats(
        sample_count=s.sample_count,
        p50_latency=us(s.p50_latency_s),
        p50_time_to_first_token=us(s.p50_ttft_s),
        output_tokens_per_second=s.output_tokens_per_second,
        error_rate=s.error_rate,
        window=us(s.window_seconds),
    )


def model_pb(m: ModelInfo) -> models_pb2.Model:
    c = m.capabilities
    return models_pb2.Model(
        name=m.name,
        route_key=m.route.key,
        provider=m.route.provider,
        model_id=m.route.model_id,
        allowed=m.allowed,
        is_default=m.is_default,
        source=models_pb2.ModelSource(
            provider=m.route.provider, base_url_host=m.base_url_host, local=m.local
        ),
        capabilities=models_pb2.ModelCapabilities(
            streaming=c.streaming,
            system_prompt=c.system_prompt,
            tools=c.tools,
            vision=c.vision,
            json_mode=c.json_mode,
        ),
        context_window=m.context_window,
        quantization=m.quantization,
        size_bytes=m.size_bytes,
        stats=stats_pb(m.stats),
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, catalog: ModelCatalog, profiles: ModelProfiles):
        self.catalog = catalog
        self.profiles = profiles

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        page, token = self.catalog.list_models(
            page_size=request.page_size, page_token=request.page_token
        )
        return models_pb2.ListModelsResponse(
            models=[model_pb(m) for m in page], next_page_token=token
        )

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: Context
    ) -> models_pb2.Model:
        return model_pb(self.catalog.get_model(request.name))

    async def CreateModelProfile(
        self, request: models_pb2.CreateModelProfileRequest, context: Context
    ) -> models_pb2.ModelProfile:
        p = request.model_profile
        profile = await self.profiles.create(
            user_of(context),
            model_key=p.model_key,
            display_name=p.display_name,
            description=p.description,
            params=params_from_pb(p.params),
            model_profile_id=request.model_profile_id,
            request_id=request.request_id,
        )
        return profile_pb(profile)

    async def GetModelProfile(
        self, request: models_pb2.GetModelProfileRequest, context: Context
    ) -> models_pb2.ModelProfile:
        return profile_pb(await self.profiles.get(user_of(context), request.name))

    async def ListModelProfiles(
        self, request: models_pb2.ListModelProfilesRequest, context: Context
    ) -> models_pb2.ListModelProfilesResponse:
        page, token = await self.profiles.list_profiles(
            user_of(context), page_size=request.page_size, page_token=request.page_token
        )
        return models_pb2.ListModelProfilesResponse(
            model_profiles=[profile_pb(p) for p in page], next_page_token=token
        )

    async def UpdateModelProfile(
        self, request: models_pb2.UpdateModelProfileRequest, context: Context
    ) -> models_pb2.ModelProfile:
        p = request.model_profile
        values = {
            "display_name": p.display_name,
            "description": p.description,
            "model_key": p.model_key,
            "params": params_from_pb(p.params),
        }
        profile = await self.profiles.update(
            user_of(context), p.name, values, list(request.update_mask.paths), etag=p.etag
        )
        return profile_pb(profile)

    async def DeleteModelProfile(
        self, request: models_pb2.DeleteModelProfileRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.profiles.delete(user_of(context), request.name, etag=request.etag)
        return empty_pb2.Empty()

    # Provider keys come with the accounts issue; until then they answer UNIMPLEMENTED
    # (the generated base class would raise NotImplementedError, answered INTERNAL).

    async def SetProviderKey(
        self, request: models_pb2.SetProviderKeyRequest, context: Context
    ) -> models_pb2.ProviderKey:
        raise _keys_unimplemented("SetProviderKey")

    async def ListProviderKeys(
        self, request: models_pb2.ListProviderKeysRequest, context: Context
    ) -> models_pb2.ListProviderKeysResponse:
        raise _keys_unimplemented("ListProviderKeys")

    async def DeleteProviderKey(
        self, request: models_pb2.DeleteProviderKeyRequest, context: Context
    ) -> empty_pb2.Empty:
        raise _keys_unimplemented("DeleteProviderKey")


def _keys_unimplemented(method: str) -> Unimplemented:
    return Unimplemented(
        f"/byok.v1.ModelService/{method} is not implemented yet (provider keys)",
        metadata={"method": method},
    )
