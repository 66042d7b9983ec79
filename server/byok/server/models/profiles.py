"""Model profiles core: named presets (a route and default generation parameters).

Plain async Python over a `WorkspaceStore`: the gRPC servicer converts messages and
calls `ModelProfiles`; the chat engine calls `resolve_profile`, `route_for` and
`merge_params` to apply a profile (named, or a space's default) to a turn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from byok.server import paging
from byok.server.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from byok.server.ids import check_caller_id, new_id, parse_name
from byok.server.models.routing import Route, RouteTable
from byok.server.storage.workspace import ModelProfile, Params, WorkspaceStore

MAX_DISPLAY_NAME = 256
MAX_DESCRIPTION = 4096
MAX_SYSTEM_PROMPT = 64 * 1024
MAX_STOPS = 4
MAX_STOP_LENGTH = 256
PARAM_FIELDS = ("system_prompt", "temperature", "top_p", "max_tokens", "stop")
PROFILE_MUTABLE = ("display_name", "description", "model_key", "params")
PROFILE_PATHS = (*PROFILE_MUTABLE, *(f"params.{f}" for f in PARAM_FIELDS))


class ParamsLike(Protocol):
    """What `merge_params` reads: the chat engine's GenerationOverrides has this shape."""

    @property
    def system_prompt(self) -> str | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def stop(self) -> tuple[str, ...]: ...


P = TypeVar("P", bound=ParamsLike)


# -- validation --------------------------------------------------------------------------


def check_text(value: str, field_name: str, limit: int, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument.field(field_name, "is required")
    if len(value) > limit:
        raise InvalidArgument.field(field_name, f"is longer than {limit} characters")
    return value


def _float(value: float | None, field_name: str, high: float) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(value) and 0.0 <= value <= high):
        raise InvalidArgument.field(field_name, f"must be between 0 and {high:g}")
    # proto floats are 32-bit: 0.7 arrives as 0.699999988; keep what the caller meant.
    return round(float(value), 6)


def check_params(params: Params, field_name: str = "model_profile.params") -> Params:
    """The same rules as a chat request's params, plus size limits; returns them tidied."""
    if params.system_prompt is not None and len(params.system_prompt) > MAX_SYSTEM_PROMPT:
        raise InvalidArgument.field(
            f"{field_name}.system_prompt", f"is longer than {MAX_SYSTEM_PROMPT} characters"
        )
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidArgument.field(f"{field_name}.max_tokens", "must be at least 1")
    if len(params.stop) > MAX_STOPS:
        raise InvalidArgument.field(f"{field_name}.stop", f"takes at most {MAX_STOPS} sequences")
    for stop in params.stop:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgument.field(
                f"{field_name}.stop", f"sequences must be 1-{MAX_STOP_LENGTH} characters"
            )
    return dataclasses.replace(
        params,
        temperature=_float(params.temperature, f"{field_name}.temperature", 2.0),
        top_p=_float(params.top_p, f"{field_name}.top_p", 1.0),
        stop=tuple(params.stop),
    )


def profile_id_of(name: str, field_name: str = "name") -> str:
    return parse_name(name, "modelProfiles", field=field_name)[0]


# -- applying a profile to a chat turn ---------------------------------------------------


async def resolve_profile(
    store: WorkspaceStore,
    user_id: str,
    profile_name: str,
    space_id: str = "",
    *,
    model_key: str = "",
    space_required: bool = False,
) -> ModelProfile | None:
    """The profile a turn uses: the named one (NOT_FOUND if the user has none by that
    name); else, when the turn names no route either, its space's default profile;
    else None.

    `space_id` is the conversation's space (or the new conversation's). With
    `space_required` (a new conversation) a space that does not exist is NOT_FOUND;
    otherwise (an old conversation whose space is gone) it just has no default.
    """
    if profile_name:
        profile_id = profile_id_of(profile_name, "model_profile")
        profile = await store.get_model_profile(user_id, profile_id)
        if profile is None:
            raise NotFound.resource(profile_name)
        return profile
    if model_key or not space_id:
        return None
    space = await store.get_space(user_id, space_id)
    if space is None:
        if space_required:
            raise NotFound.resource(f"spaces/{space_id}")
        return None
    if not space.default_profile_id:
        return None
    return await store.get_model_profile(user_id, space.default_profile_id)


def route_for(routes: RouteTable, model_key: str, profile: ModelProfile | None) -> Route:
    """The route of a turn: its model_key, else the profile's, else the default; the
    allowlist must admit the model (PERMISSION_DENIED otherwise)."""
    if model_key or profile is None:
        route = routes.resolve(model_key or None)
    else:
        try:
            route = routes.resolve(profile.model_key)
        except NotFound:
            keys = ", ".join(r.key for r in routes.all())
            raise FailedPrecondition(
                f"{profile.name} uses route {profile.model_key!r}, which is not configured "
                f"(configured: {keys}); update the profile or name a model_key",
                reason="MODEL_PROFILE_ROUTE_MISSING",
                metadata={"model_profile": profile.name, "route": profile.model_key},
            ) from None
    try:
        routes.check_allowed(route)
    except PermissionDenied as exc:
        if profile is None or model_key:
            raise
        raise PermissionDenied(
            f"{profile.name}: {exc.message}",
            reason=exc.reason,
            metadata={**exc.metadata, "model_profile": profile.name},
        ) from None
    return route


def merge_params(profile: Params | None, request: P) -> P:
    """The request's params over the profile's, field by field: a field the request
    sets wins (stop counts as set when it has any sequence)."""
    if profile is None:
        return request
    changes: dict[str, Any] = {}
    for name in PARAM_FIELDS:
        mine = getattr(request, name)
        unset = not mine if name == "stop" else mine is None
        theirs = getattr(profile, name)
        if unset and theirs not in (None, ()):
            changes[name] = theirs
    if not changes:
        return request
    merged: P = dataclasses.replace(request, **changes)  # type: ignore[type-var]
    return merged


# -- the CRUD use cases --------------------------------------------------------------------


class ModelProfiles:
    """The ModelService profile use cases, for one store and route table."""

    def __init__(self, store: WorkspaceStore, routes: RouteTable) -> None:
        self.store = store
        self.routes = routes

    def check_model_key(self, model_key: str, field_name: str = "model_profile.model_key") -> str:
        """The configured key of a route the allowlist admits."""
        key = model_key.strip().removeprefix("models/")
        known = [r.key for r in self.routes.all()]
        if not key:
            raise InvalidArgument.field(
                field_name, f"is required; configured routes: {', '.join(known)}"
            )
        route = next((r for r in self.routes.all() if r.key.lower() == key.lower()), None)
        if route is None:
            raise InvalidArgument.field(
                field_name,
                f"{key!r} is not a configured route; configured routes: {', '.join(known)}",
                routes=",".join(known),
            )
        try:
            self.routes.check_allowed(route)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"{field_name}: {exc.message}; a profile can only use an allowed model",
                reason=exc.reason,
                metadata={**exc.metadata, "field": field_name},
            ) from None
        return route.key

    async def create(
        self,
        user_id: str,
        *,
        model_key: str,
        display_name: str = "",
        description: str = "",
        params: Params | None = None,
        model_profile_id: str = "",
        request_id: str = "",
    ) -> ModelProfile:
        profile = ModelProfile(
            id=(
                check_caller_id("model_profile_id", model_profile_id)
                if model_profile_id
                else new_id()
            ),
            display_name=check_text(display_name, "model_profile.display_name", MAX_DISPLAY_NAME),
            description=check_text(description, "model_profile.description", MAX_DESCRIPTION),
            model_key=self.check_model_key(model_key),
            params=check_params(params or Params()),
        )
        created, _ = await self.store.create_model_profile(
            user_id, profile, request_id=request_id or None
        )
        return created

    async def get(self, user_id: str, name: str) -> ModelProfile:
        profile = await self.store.get_model_profile(user_id, profile_id_of(name))
        if profile is None:
            raise NotFound.resource(name)
        return profile

    async def list_profiles(
        self, user_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ModelProfile], str]:
        """Newest first."""

        async def fetch(limit: int, before_seq: int | None) -> list[ModelProfile]:
            return await self.store.list_model_profiles(user_id, limit=limit, before_seq=before_seq)

        return await paging.seq_page(
            fetch, requested_size=page_size, page_token=page_token, query=["modelProfiles"]
        )

    async def update(
        self,
        user_id: str,
        name: str,
        values: Mapping[str, Any],
        paths: Sequence[str],
        *,
        etag: str = "",
    ) -> ModelProfile:
        """`values`: display_name, description, model_key (str), params (Params). Paths
        may name one parameter ("params.temperature"); a named field absent from the
        values is cleared. "*" replaces every field."""
        if not paths:
            raise InvalidArgument.field(
                "update_mask", f"is required; fields: {', '.join(PROFILE_PATHS)}"
            )
        if "*" in paths:
            paths = PROFILE_MUTABLE
        changes: dict[str, Any] = {}
        param_fields: dict[str, Any] = {}
        params = values.get("params") or Params()
        for path in paths:
            if path not in PROFILE_PATHS:
                raise InvalidArgument.field(
                    "update_mask", f"cannot update {path!r}; can: {', '.join(PROFILE_PATHS)}"
                )
            if path == "display_name":
                changes[path] = check_text(
                    str(values.get(path) or ""), "model_profile.display_name", MAX_DISPLAY_NAME
                )
            elif path == "description":
                changes[path] = check_text(
                    str(values.get(path) or ""), "model_profile.description", MAX_DESCRIPTION
                )
            elif path == "model_key":
                changes[path] = self.check_model_key(str(values.get(path) or ""))
            elif path == "params":
                changes["params"] = check_params(params)
            else:
                field = path.removeprefix("params.")
                one = check_params(Params(**{field: getattr(params, field)}))
                param_fields[field] = getattr(one, field)
        if param_fields and "params" not in changes:  # with "params" too, the whole wins
            changes["param_fields"] = param_fields
        profile = await self.store.update_model_profile(
            user_id, profile_id_of(name, "model_profile.name"), changes, expected_etag=etag or None
        )
        if profile is None:
            raise NotFound.resource(name)
        return profile

    async def delete(self, user_id: str, name: str, *, etag: str = "") -> None:
        if not await self.store.delete_model_profile(
            user_id, profile_id_of(name), expected_etag=etag or None
        ):
            raise NotFound.resource(name)
