"""Users and their API keys: created by an operator with `byok-server users|keys ...`.

A key is `byok_` + 43 URL-safe characters (256 random bits). Only its SHA-256 is
stored; it is shown once, at creation. With 256 random bits a slow password hash buys
nothing, and a fast lookup keeps authentication off the hot path.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from byok.server.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from byok.server.ids import new_id
from byok.server.storage.accounts import AccountStore, ApiKeyRecord
from byok.server.storage.base import DEFAULT_USER_ID, User
from byok.server.storage.sqlite.base import now_us

KEY_PREFIX = "byok_"
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    record: ApiKeyRecord
    key: str  # shown once


class Accounts:
    def __init__(self, store: AccountStore):
        self.store = store

    async def create_user(self, name: str, display_name: str = "") -> User:
        if not _NAME.match(name):
            raise InvalidArgument.field(
                "name", "must be 1-63 of a-z 0-9 _ . -, starting with a letter"
            )
        return await self.store.create_user(User(new_id(), name, display_name or name, False, 0))

    async def user(self, name: str) -> User:
        user = await self.store.get_user_by_name(name)
        if user is None:
            raise NotFound(f"no user named {name!r}", reason="USER_NOT_FOUND")
        return user

    async def set_disabled(self, name: str, disabled: bool) -> User:
        user = await self.user(name)
        if user.id == DEFAULT_USER_ID and disabled:
            raise InvalidArgument.field("name", "the implicit local user cannot be disabled")
        await self.store.set_user_disabled(user.id, disabled)
        return await self.user(name)

    async def create_key(self, user_name: str, label: str = "") -> NewKey:
        user = await self.user(user_name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(new_id(), user.id, label, key[:12], now_us(), 0, False)
        await self.store.create_api_key(record, hash_key(key))
        return NewKey(record, key)

    async def authenticate(self, key: str) -> User:
        """The user a presented key belongs to; refuses revoked keys and disabled users."""
        found = await self.store.find_api_key(hash_key(key)) if key else None
        if found is None or found[0].revoked:
            raise Unauthenticated("invalid or revoked API key", reason="INVALID_API_KEY")
        _, user = found
        if user.disabled:
            raise PermissionDenied(f"user {user.name!r} is disabled", reason="USER_DISABLED")
        return user
