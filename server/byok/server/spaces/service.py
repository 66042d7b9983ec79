"""Spaces core: validation, limits, names and paging over a `WorkspaceStore`.

Plain async Python: the gRPC servicer converts messages and calls this; tests can
call it directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from byok.server import paging
from byok.server.errors import FailedPrecondition, InvalidArgument, NotFound
from byok.server.ids import check_caller_id, new_id, parse_name
from byok.server.models.profiles import MAX_DESCRIPTION, check_text, profile_id_of
from byok.server.storage.workspace import Space, WorkspaceStore

MAX_DISPLAY_NAME = 256
SPACE_MUTABLE = ("display_name", "description", "default_model_profile")


def space_id_of(name: str, field_name: str = "name") -> str:
    return parse_name(name, "spaces", field=field_name)[0]


class Spaces:
    """The SpaceService use cases, for one store."""

    def __init__(self, store: WorkspaceStore) -> None:
        self.store = store

    async def create(
        self,
        user_id: str,
        *,
        display_name: str,
        description: str = "",
        default_model_profile: str = "",
        space_id: str = "",
        request_id: str = "",
    ) -> Space:
        space = Space(
            id=check_caller_id("space_id", space_id) if space_id else new_id(),
            display_name=check_text(
                display_name, "space.display_name", MAX_DISPLAY_NAME, required=True
            ),
            description=check_text(description, "space.description", MAX_DESCRIPTION),
        )
        if default_model_profile:
            profile_id_of(default_model_profile, "space.default_model_profile")
            raise FailedPrecondition(
                "space.default_model_profile: a new space has no linked profiles; create the "
                "space, then LinkModelProfile with make_default",
                reason="MODEL_PROFILE_NOT_LINKED",
                metadata={"model_profile": default_model_profile},
            )
        created, _ = await self.store.create_space(user_id, space, request_id=request_id or None)
        return created

    async def get(self, user_id: str, name: str) -> Space:
        space = await self.store.get_space(user_id, space_id_of(name))
        if space is None:
            raise NotFound.resource(name)
        return space

    async def list_spaces(
        self, user_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Space], str]:
        """Newest first."""

        async def fetch(limit: int, before_seq: int | None) -> list[Space]:
            return await self.store.list_spaces(user_id, limit=limit, before_seq=before_seq)

        return await paging.seq_page(
            fetch, requested_size=page_size, page_token=page_token, query=["spaces"]
        )

    async def update(
        self,
        user_id: str,
        name: str,
        values: Mapping[str, Any],
        paths: Sequence[str],
        *,
        etag: str = "",
    ) -> Space:
        """`values`: display_name, description, default_model_profile (a profile name,
        "" to clear; it must be linked). "*" replaces every field."""
        if not paths:
            raise InvalidArgument.field(
                "update_mask", f"is required; fields: {', '.join(SPACE_MUTABLE)}"
            )
        if "*" in paths:
            paths = SPACE_MUTABLE
        changes: dict[str, Any] = {}
        for path in paths:
            value = str(values.get(path) or "")
            if path == "display_name":
                changes[path] = check_text(
                    value, "space.display_name", MAX_DISPLAY_NAME, required=True
                )
            elif path == "description":
                changes[path] = check_text(value, "space.description", MAX_DESCRIPTION)
            elif path == "default_model_profile":
                changes["default_profile_id"] = (
                    profile_id_of(value, "space.default_model_profile") if value else ""
                )
            else:
                raise InvalidArgument.field(
                    "update_mask", f"cannot update {path!r}; can: {', '.join(SPACE_MUTABLE)}"
                )
        space = await self.store.update_space(
            user_id, space_id_of(name, "space.name"), changes, expected_etag=etag or None
        )
        if space is None:
            raise NotFound.resource(name)
        return space

    async def delete(self, user_id: str, name: str, *, etag: str = "", force: bool = False) -> None:
        if not await self.store.delete_space(
            user_id, space_id_of(name), expected_etag=etag or None, force=force
        ):
            raise NotFound.resource(name)

    async def link(
        self, user_id: str, space: str, model_profile: str, *, make_default: bool = False
    ) -> Space:
        space_id = space_id_of(space, "space")
        profile_id = self._profile(model_profile)
        linked = await self.store.link_model_profile(
            user_id, space_id, profile_id, make_default=make_default
        )
        if linked is None:
            raise NotFound.resource(space)
        return linked

    async def unlink(self, user_id: str, space: str, model_profile: str) -> Space:
        space_id = space_id_of(space, "space")
        profile_id = self._profile(model_profile)
        unlinked = await self.store.unlink_model_profile(user_id, space_id, profile_id)
        if unlinked is None:
            raise NotFound.resource(space)
        return unlinked

    @staticmethod
    def _profile(model_profile: str) -> str:
        if not model_profile:
            raise InvalidArgument.field("model_profile", "is required")
        return profile_id_of(model_profile, "model_profile")
