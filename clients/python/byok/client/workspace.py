"""Client methods for ModelService (routes, model profiles) and SpaceService.

    with WorkspaceClient() as byok:
        for model in byok.list_models():
            print(model.route_key, model.model_id, model.allowed)
        writer = byok.create_model_profile("SMART", display_name="Writer", temperature=0.9)
        space = byok.create_space("Novel", space_id="novel")
        byok.link_model_profile(space.name, writer.name, make_default=True)

`WorkspaceMethods` is a mixin over `Client` (it uses the client's channel and its
error mapping); `WorkspaceClient` is `Client` with it mixed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from byok.client.client import Client, masked_update
from byok.v1 import common_pb2, models_pb2, models_pb2_grpc, spaces_pb2, spaces_pb2_grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_UNSET: Any = object()  # "leave unchanged" for update methods, where None means "clear"


def model_name(name_or_key: str) -> str:
    """ "fast" → "models/fast"; a full name is kept."""
    return name_or_key if "/" in name_or_key else f"models/{name_or_key.lower()}"


def profile_name(name_or_id: str) -> str:
    """ "writer" → "modelProfiles/writer"; "" stays ""; a full name is kept."""
    if not name_or_id or "/" in name_or_id:
        return name_or_id
    return f"modelProfiles/{name_or_id}"


def space_name(name_or_id: str) -> str:
    """ "novel" → "spaces/novel"; "" stays ""; a full name is kept."""
    if not name_or_id or "/" in name_or_id:
        return name_or_id
    return f"spaces/{name_or_id}"


def generation_params(
    *,
    system_prompt: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    stop: Iterable[str] = (),
) -> common_pb2.GenerationParams:
    """GenerationParams with only the given (not None) fields set."""
    params = common_pb2.GenerationParams(stop=list(stop))
    if system_prompt is not None:
        params.system_prompt = system_prompt
    if temperature is not None:
        params.temperature = temperature
    if top_p is not None:
        params.top_p = top_p
    if max_tokens is not None:
        params.max_tokens = max_tokens
    return params


class WorkspaceMethods:
    """Mixed into `Client`: needs its `_channel` and `_unary`."""

    _channel: grpc.Channel
    _models_stub: models_pb2_grpc.ModelServiceStub | None = None
    _spaces_stub: spaces_pb2_grpc.SpaceServiceStub | None = None

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None = None,
    ) -> _Resp:
        raise NotImplementedError  # Client's own _unary comes first in the MRO

    @property
    def model_service(self) -> models_pb2_grpc.ModelServiceStub:
        if self._models_stub is None:
            self._models_stub = models_pb2_grpc.ModelServiceStub(self._channel)
        return self._models_stub

    @property
    def space_service(self) -> spaces_pb2_grpc.SpaceServiceStub:
        if self._spaces_stub is None:
            self._spaces_stub = spaces_pb2_grpc.SpaceServiceStub(self._channel)
        return self._spaces_stub

    # -- models -----------------------------------------------------------------------

    def list_models(self, page_size: int = 0) -> Iterator[models_pb2.Model]:
        """Every configured route, ordered by key, page after page."""
        token = ""
        while True:
            request = models_pb2.ListModelsRequest(page_size=page_size, page_token=token)
            page = self._unary(self.model_service.ListModels, request)
            yield from page.models
            token = page.next_page_token
            if not token:
                return

    def get_model(self, name_or_key: str) -> models_pb2.Model:
        request = models_pb2.GetModelRequest(name=model_name(name_or_key))
        return self._unary(self.model_service.GetModel, request)

    # -- model profiles ---------------------------------------------------------------

    def create_model_profile(
        self,
        model_key: str,
        *,
        display_name: str = "",
        description: str = "",
        params: common_pb2.GenerationParams | None = None,
        profile_id: str = "",
        request_id: str | None = None,
    ) -> models_pb2.ModelProfile:
        """A profile over route `model_key`; `profile_id` picks its id."""
        request = models_pb2.CreateModelProfileRequest(
            model_profile=models_pb2.ModelProfile(
                display_name=display_name,
                description=description,
                model_key=model_key,
                params=params or common_pb2.GenerationParams(),
            ),
            model_profile_id=profile_id,
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._unary(self.model_service.CreateModelProfile, request)

    def get_model_profile(self, name: str) -> models_pb2.ModelProfile:
        request = models_pb2.GetModelProfileRequest(name=profile_name(name))
        return self._unary(self.model_service.GetModelProfile, request)

    def list_model_profiles(self, page_size: int = 0) -> Iterator[models_pb2.ModelProfile]:
        """Every profile, newest first."""
        token = ""
        while True:
            request = models_pb2.ListModelProfilesRequest(page_size=page_size, page_token=token)
            page = self._unary(self.model_service.ListModelProfiles, request)
            yield from page.model_profiles
            token = page.next_page_token
            if not token:
                return

    def update_model_profile(
        self,
        name: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        model_key: str | None = None,
        system_prompt: str | None = _UNSET,
        temperature: float | None = _UNSET,
        top_p: float | None = _UNSET,
        max_tokens: int | None = _UNSET,
        stop: Iterable[str] | None = _UNSET,
        etag: str = "",
    ) -> models_pb2.ModelProfile:
        """Changes the given fields. A parameter given as None is cleared (the
        provider's default applies again); parameters not given are left alone."""
        profile = models_pb2.ModelProfile(name=profile_name(name), etag=etag)
        paths: list[str] = []
        for field, value in (
            ("display_name", display_name),
            ("description", description),
            ("model_key", model_key),
        ):
            if value is not None:
                setattr(profile, field, value)
                paths.append(field)
        params: list[tuple[str, Any]] = [
            ("system_prompt", system_prompt),
            ("temperature", temperature),
            ("top_p", top_p),
            ("max_tokens", max_tokens),
        ]
        for field, value in params:
            if value is _UNSET:
                continue
            if value is not None:
                setattr(profile.params, field, value)
            paths.append(f"params.{field}")
        if stop is not _UNSET:
            profile.params.stop.extend(list(stop or ()))
            paths.append("params.stop")
        request = models_pb2.UpdateModelProfileRequest(
            model_profile=profile, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return self._unary(self.model_service.UpdateModelProfile, request)

    def delete_model_profile(self, name: str, *, etag: str = "") -> None:
        """Deletes a profile (and unlinks it from every space)."""
        request = models_pb2.DeleteModelProfileRequest(name=profile_name(name), etag=etag)
        self._unary(self.model_service.DeleteModelProfile, request)

    # -- spaces -----------------------------------------------------------------------

    def create_space(
        self,
        display_name: str,
        *,
        description: str = "",
        space_id: str = "",
        request_id: str | None = None,
    ) -> spaces_pb2.Space:
        request = spaces_pb2.CreateSpaceRequest(
            space=spaces_pb2.Space(display_name=display_name, description=description),
            space_id=space_id,
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._unary(self.space_service.CreateSpace, request)

    def get_space(self, name: str) -> spaces_pb2.Space:
        request = spaces_pb2.GetSpaceRequest(name=space_name(name))
        return self._unary(self.space_service.GetSpace, request)

    def list_spaces(self, page_size: int = 0) -> Iterator[spaces_pb2.Space]:
        """Every space, newest first."""
        token = ""
        while True:
            request = spaces_pb2.ListSpacesRequest(page_size=page_size, page_token=token)
            page = self._unary(self.space_service.ListSpaces, request)
            yield from page.spaces
            token = page.next_page_token
            if not token:
                return

    def update_space(
        self,
        name: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        default_model_profile: str | None = None,
        etag: str = "",
    ) -> spaces_pb2.Space:
        """Changes the given fields; default_model_profile "" clears the default."""
        space = spaces_pb2.Space(name=space_name(name), etag=etag)
        mask = masked_update(
            space,
            display_name=display_name,
            description=description,
            default_model_profile=(
                profile_name(default_model_profile) if default_model_profile is not None else None
            ),
        )
        request = spaces_pb2.UpdateSpaceRequest(space=space, update_mask=mask)
        return self._unary(self.space_service.UpdateSpace, request)

    def delete_space(self, name: str, *, force: bool = False, etag: str = "") -> None:
        """Deletes a space; one with conversations needs `force`, which deletes them."""
        request = spaces_pb2.DeleteSpaceRequest(name=space_name(name), force=force, etag=etag)
        self._unary(self.space_service.DeleteSpace, request)

    def link_model_profile(
        self, space: str, model_profile: str, *, make_default: bool = False
    ) -> spaces_pb2.Space:
        request = spaces_pb2.LinkModelProfileRequest(
            space=space_name(space),
            model_profile=profile_name(model_profile),
            make_default=make_default,
        )
        return self._unary(self.space_service.LinkModelProfile, request)

    def unlink_model_profile(self, space: str, model_profile: str) -> spaces_pb2.Space:
        request = spaces_pb2.UnlinkModelProfileRequest(
            space=space_name(space), model_profile=profile_name(model_profile)
        )
        return self._unary(self.space_service.UnlinkModelProfile, request)


class ProviderKeyMethods(WorkspaceMethods):
    """Your own provider keys: stored encrypted on the server, never returned."""

    def set_provider_key(self, provider: str, key: str) -> models_pb2.ProviderKey:
        return self._unary(
            self.model_service.SetProviderKey,
            models_pb2.SetProviderKeyRequest(provider=provider, key=key),
        )

    def list_provider_keys(self) -> list[models_pb2.ProviderKey]:
        reply = self._unary(
            self.model_service.ListProviderKeys, models_pb2.ListProviderKeysRequest()
        )
        return list(reply.provider_keys)

    def delete_provider_key(self, provider: str) -> None:
        name = provider if provider.startswith("providerKeys/") else f"providerKeys/{provider}"
        self._unary(
            self.model_service.DeleteProviderKey, models_pb2.DeleteProviderKeyRequest(name=name)
        )


class WorkspaceClient(Client, ProviderKeyMethods):
    """`Client` with the model, profile and space methods."""
