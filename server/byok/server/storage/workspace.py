"""Spaces and model profiles: the domain objects and the storage interface for them.

Plain data, no gRPC, no SQL. The SQLite store implements `WorkspaceStore` in
`storage/sqlite/workspace.py`; the cores in `models/profiles.py` and `spaces/`
depend on this protocol only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from byok.server.conversations.model import etag_of


@dataclass(frozen=True)
class Params:
    """Generation parameters a profile sets; None (or no stops) means "not set"."""

    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Only the set fields."""
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "stop"}
        if self.stop:
            values["stop"] = list(self.stop)
        return values

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Params:
        return cls(
            system_prompt=value.get("system_prompt"),
            temperature=value.get("temperature"),
            top_p=value.get("top_p"),
            max_tokens=value.get("max_tokens"),
            stop=tuple(value.get("stop") or ()),
        )


@dataclass
class ModelProfile:
    id: str
    model_key: str  # the route key, as configured ("FAST")
    display_name: str = ""
    description: str = ""
    params: Params = field(default_factory=Params)
    create_time_us: int = 0
    update_time_us: int = 0
    revision: int = 1
    seq: int = 0  # creation order; the paging cursor

    @property
    def name(self) -> str:
        return f"modelProfiles/{self.id}"

    @property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)


@dataclass
class Space:
    id: str
    display_name: str = ""
    description: str = ""
    default_profile_id: str = ""  # "" = none; otherwise one of profile_ids
    profile_ids: list[str] = field(default_factory=list)  # linked, in link order
    conversation_count: int = 0
    create_time_us: int = 0
    update_time_us: int = 0
    revision: int = 1
    seq: int = 0  # creation order; the paging cursor

    @property
    def name(self) -> str:
        return f"spaces/{self.id}"

    @property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)


class WorkspaceStore(Protocol):
    """Every method scopes by user: another user's rows are invisible. A missing row
    comes back as None/False (the core answers NOT_FOUND with the name); stale etags
    raise Aborted, and rules that need the transaction (a default that is not linked,
    a space that still holds conversations) raise FailedPrecondition."""

    # -- model profiles ---------------------------------------------------------------

    async def create_model_profile(
        self, user_id: str, profile: ModelProfile, *, request_id: str | None = None
    ) -> tuple[ModelProfile, bool]:
        """(profile, created); a known request_id returns the first result."""
        ...

    async def get_model_profile(self, user_id: str, profile_id: str) -> ModelProfile | None: ...

    async def list_model_profiles(
        self, user_id: str, *, limit: int, before_seq: int | None
    ) -> list[ModelProfile]:
        """Newest first."""
        ...

    async def update_model_profile(
        self,
        user_id: str,
        profile_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> ModelProfile | None:
        """changes: display_name, description, model_key (str), params (Params), or
        param_fields ({field: value}: these parameters only, None clearing one)."""
        ...

    async def delete_model_profile(
        self, user_id: str, profile_id: str, *, expected_etag: str | None
    ) -> bool:
        """Also unlinks it from every space (clearing a default)."""
        ...

    # -- spaces -----------------------------------------------------------------------

    async def create_space(
        self, user_id: str, space: Space, *, request_id: str | None = None
    ) -> tuple[Space, bool]: ...

    async def get_space(self, user_id: str, space_id: str) -> Space | None: ...

    async def space_exists(self, user_id: str, space_id: str) -> bool: ...

    async def list_spaces(self, user_id: str, *, limit: int, before_seq: int | None) -> list[Space]:
        """Newest first."""
        ...

    async def update_space(
        self,
        user_id: str,
        space_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Space | None:
        """changes: display_name, description, default_profile_id ("" clears; must be
        linked, else FailedPrecondition; NotFound if no such profile)."""
        ...

    async def delete_space(
        self, user_id: str, space_id: str, *, expected_etag: str | None, force: bool
    ) -> bool:
        """A space with conversations needs `force`, which deletes them too."""
        ...

    async def link_model_profile(
        self, user_id: str, space_id: str, profile_id: str, *, make_default: bool
    ) -> Space | None:
        """None if no such space; NotFound if no such profile. Linking twice is fine."""
        ...

    async def unlink_model_profile(
        self, user_id: str, space_id: str, profile_id: str
    ) -> Space | None:
        """None if no such space; NotFound if no such profile; unlinking a profile that
        is not linked changes nothing. Unlinking the default clears it."""
        ...
