"""SpaceService: proto in, `Spaces` core call, proto out."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from byok.server.rpc.calls import user_of
from byok.server.services.convert import timestamp
from byok.server.spaces.service import Spaces
from byok.server.storage.workspace import Space
from byok.v1 import spaces_pb2, spaces_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def space_pb(s: Space) -> spaces_pb2.Space:
    return spaces_pb2.Space(
        name=s.name,
        display_name=s.display_name,
        description=s.description,
        model_profiles=[f"modelProfiles/{p}" for p in s.profile_ids],
        default_model_profile=f"modelProfiles/{s.default_profile_id}"
        if s.default_profile_id
        else "",
        conversation_count=s.conversation_count,
        create_time=timestamp(s.create_time_us),
        update_time=timestamp(s.update_time_us),
        etag=s.etag,
    )


class SpaceServicer(spaces_pb2_grpc.SpaceServiceServicer):
    def __init__(self, core: Spaces):
        self.core = core

    async def CreateSpace(
        self, request: spaces_pb2.CreateSpaceRequest, context: Context
    ) -> spaces_pb2.Space:
        s = request.space
        space = await self.core.create(
            user_of(context),
            display_name=s.display_name,
            description=s.description,
            default_model_profile=s.default_model_profile,
            space_id=request.space_id,
            request_id=request.request_id,
        )
        return space_pb(space)

    async def GetSpace(
        self, request: spaces_pb2.GetSpaceRequest, context: Context
    ) -> spaces_pb2.Space:
        return space_pb(await self.core.get(user_of(context), request.name))

    async def ListSpaces(
        self, request: spaces_pb2.ListSpacesRequest, context: Context
    ) -> spaces_pb2.ListSpacesResponse:
        page, token = await self.core.list_spaces(
            user_of(context), page_size=request.page_size, page_token=request.page_token
        )
        return spaces_pb2.ListSpacesResponse(
            spaces=[space_pb(s) for s in page], next_page_token=token
        )

    async def UpdateSpace(
        self, request: spaces_pb2.UpdateSpaceRequest, context: Context
    ) -> spaces_pb2.Space:
        s = request.space
        values = {
            "display_name": s.display_name,
            "description": s.description,
            "default_model_profile": s.default_model_profile,
        }
        space = await self.core.update(
            user_of(context), s.name, values, list(request.update_mask.paths), etag=s.etag
        )
        return space_pb(space)

    async def DeleteSpace(
        self, request: spaces_pb2.DeleteSpaceRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.core.delete(
            user_of(context), request.name, etag=request.etag, force=request.force
        )
        return empty_pb2.Empty()

    async def LinkModelProfile(
        self, request: spaces_pb2.LinkModelProfileRequest, context: Context
    ) -> spaces_pb2.Space:
        space = await self.core.link(
            user_of(context),
            request.space,
            request.model_profile,
            make_default=request.make_default,
        )
        return space_pb(space)

    async def UnlinkModelProfile(
        self, request: spaces_pb2.UnlinkModelProfileRequest, context: Context
    ) -> spaces_pb2.Space:
        return space_pb(
            await self.core.unlink(user_of(context), request.space, request.model_profile)
        )
