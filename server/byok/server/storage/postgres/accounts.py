"""Users, API keys and users' provider keys on PostgreSQL (`AccountStore`).

Each method is one statement (an upsert for provider keys), so concurrent replicas
need no locks beyond the row's own.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from byok.server.errors import AlreadyExists
from byok.server.storage.accounts import ApiKeyRecord, ProviderKeyRecord
from byok.server.storage.base import User
from byok.server.storage.postgres.base import PostgresBase, _rowcount, now_us

_KEY_COLS = "k.id, k.user_id, k.name, k.prefix, k.create_time, k.last_used_time, k.revoked"
_USER_COLS = "u.id, u.name, u.display_name, u.disabled, u.create_time"
_PROVIDER_COLS = "provider, nonce, ciphertext, last4, create_time, update_time"


def _user(row: Any, offset: int = 0) -> User:
    r = row[offset:]
    return User(r[0], r[1], r[2], bool(r[3]), r[4])


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def _provider_key(row: Any) -> ProviderKeyRecord:
    return ProviderKeyRecord(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


class AccountsMixin(PostgresBase):
    async def create_user(self, user: User) -> User:
        created = now_us()
        try:
            await self._pool.execute(
                "INSERT INTO users (id, name, display_name, disabled, create_time)"
                " VALUES ($1, $2, $3, FALSE, $4)",
                user.id,
                user.name,
                user.display_name,
                created,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(
                f"a user named {user.name!r} already exists", reason="USER_EXISTS"
            ) from None
        return User(user.id, user.name, user.display_name, False, created)

    async def get_user_by_name(self, name: str) -> User | None:
        row = await self._pool.fetchrow(f"SELECT {_USER_COLS} FROM users u WHERE u.name = $1", name)
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._pool.fetch(
            f'SELECT {_USER_COLS} FROM users u ORDER BY u.create_time, u.id COLLATE "C"'
        )
        return [_user(r) for r in rows]

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        status = await self._pool.execute(
            "UPDATE users SET disabled = $1 WHERE id = $2", disabled, user_id
        )
        return _rowcount(status) > 0

    async def create_api_key(self, record: ApiKeyRecord, key_hash: str) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys (id, user_id, name, prefix, hash, create_time)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            record.id,
            record.user_id,
            record.name,
            record.prefix,
            key_hash,
            record.create_time_us,
        )

    async def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.user_id = $1 ORDER BY k.create_time",
            user_id,
        )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        status = await self._pool.execute(
            "UPDATE api_keys SET revoked = TRUE WHERE id = $1", key_id
        )
        return _rowcount(status) > 0

    async def find_api_key(self, key_hash: str) -> tuple[ApiKeyRecord, User] | None:
        row = await self._pool.fetchrow(
            f"SELECT {_KEY_COLS}, {_USER_COLS} FROM api_keys k JOIN users u ON u.id = k.user_id"
            " WHERE k.hash = $1",
            key_hash,
        )
        return (_key(row), _user(row, 7)) if row else None

    async def put_provider_key(self, user_id: str, record: ProviderKeyRecord) -> ProviderKeyRecord:
        now = now_us()
        row = await self._pool.fetchrow(
            "INSERT INTO provider_keys (user_id, provider, nonce, ciphertext, last4,"
            " create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $6)"
            " ON CONFLICT (user_id, provider) DO UPDATE SET nonce = excluded.nonce,"
            " ciphertext = excluded.ciphertext, last4 = excluded.last4,"
            f" update_time = excluded.update_time RETURNING {_PROVIDER_COLS}",
            user_id,
            record.provider,
            record.nonce,
            record.ciphertext,
            record.last4,
            now,
        )
        assert row is not None
        return _provider_key(row)

    async def get_provider_key(self, user_id: str, provider: str) -> ProviderKeyRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_PROVIDER_COLS} FROM provider_keys WHERE user_id = $1 AND provider = $2",
            user_id,
            provider,
        )
        return _provider_key(row) if row else None

    async def list_provider_keys(self, user_id: str) -> list[ProviderKeyRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_PROVIDER_COLS} FROM provider_keys WHERE user_id = $1"
            ' ORDER BY provider COLLATE "C"',
            user_id,
        )
        return [_provider_key(r) for r in rows]

    async def delete_provider_key(self, user_id: str, provider: str) -> bool:
        status = await self._pool.execute(
            "DELETE FROM provider_keys WHERE user_id = $1 AND provider = $2", user_id, provider
        )
        return _rowcount(status) > 0
