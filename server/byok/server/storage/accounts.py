"""The accounts part of the Store: users, API keys, users' provider keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from byok.server.storage.base import User


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    user_id: str
    name: str
    prefix: str
    create_time_us: int
    last_used_time_us: int
    revoked: bool


@dataclass(frozen=True)
class ProviderKeyRecord:
    provider: str
    nonce: bytes
    ciphertext: bytes
    last4: str
    create_time_us: int
    update_time_us: int


class AccountStore(Protocol):
    async def create_user(self, user: User) -> User: ...

    async def get_user_by_name(self, name: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool: ...

    async def create_api_key(self, record: ApiKeyRecord, key_hash: str) -> None: ...

    async def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str) -> bool: ...

    async def find_api_key(self, key_hash: str) -> tuple[ApiKeyRecord, User] | None: ...

    async def put_provider_key(
        self, user_id: str, record: ProviderKeyRecord
    ) -> ProviderKeyRecord: ...

    async def get_provider_key(self, user_id: str, provider: str) -> ProviderKeyRecord | None: ...

    async def list_provider_keys(self, user_id: str) -> list[ProviderKeyRecord]: ...

    async def delete_provider_key(self, user_id: str, provider: str) -> bool: ...
