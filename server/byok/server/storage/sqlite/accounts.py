"""Users, API keys and users' provider keys on SQLite."""

from __future__ import annotations

import sqlite3
from typing import Any

from byok.server.errors import AlreadyExists
from byok.server.storage.accounts import ApiKeyRecord, ProviderKeyRecord
from byok.server.storage.base import User
from byok.server.storage.sqlite.base import SqliteBase, now_us

_KEY_COLS = "k.id, k.user_id, k.name, k.prefix, k.create_time, k.last_used_time, k.revoked"
_USER_COLS = "u.id, u.name, u.display_name, u.disabled, u.create_time"


def _user(row: Any, offset: int = 0) -> User:
    r = row[offset:]
    return User(r[0], r[1], r[2], bool(r[3]), r[4])


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def _provider_key(row: Any) -> ProviderKeyRecord:
    return ProviderKeyRecord(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


class AccountsMixin(SqliteBase):
    async def create_user(self, user: User) -> User:
        created = now_us()
        async with self._tx() as db:
            try:
                await db.execute(
                    "INSERT INTO users (id, name, display_name, disabled, create_time)"
                    " VALUES (?, ?, ?, 0, ?)",
                    (user.id, user.name, user.display_name, created),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"a user named {user.name!r} already exists", reason="USER_EXISTS"
                ) from None
        return User(user.id, user.name, user.display_name, False, created)

    async def get_user_by_name(self, name: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users u WHERE u.name = ?", (name,))
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._all(f"SELECT {_USER_COLS} FROM users u ORDER BY u.create_time, u.id")
        return [_user(r) for r in rows]

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id)
            )
            return cur.rowcount > 0

    async def create_api_key(self, record: ApiKeyRecord, key_hash: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO api_keys (id, user_id, name, prefix, hash, create_time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.user_id,
                    record.name,
                    record.prefix,
                    key_hash,
                    record.create_time_us,
                ),
            )

    async def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]:
        rows = await self._all(
            f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.user_id = ? ORDER BY k.create_time",
            (user_id,),
        )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,))
            return cur.rowcount > 0

    async def find_api_key(self, key_hash: str) -> tuple[ApiKeyRecord, User] | None:
        row = await self._one(
            f"SELECT {_KEY_COLS}, {_USER_COLS} FROM api_keys k JOIN users u ON u.id = k.user_id"
            " WHERE k.hash = ?",
            (key_hash,),
        )
        return (_key(row), _user(row, 7)) if row else None

    async def put_provider_key(self, user_id: str, record: ProviderKeyRecord) -> ProviderKeyRecord:
        now = now_us()
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO provider_keys (user_id, provider, nonce, ciphertext, last4,"
                " create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, provider) DO UPDATE SET nonce = excluded.nonce,"
                " ciphertext = excluded.ciphertext, last4 = excluded.last4,"
                " update_time = excluded.update_time",
                (user_id, record.provider, record.nonce, record.ciphertext, record.last4, now, now),
            )
            async with db.execute(
                "SELECT provider, nonce, ciphertext, last4, create_time, update_time"
                " FROM provider_keys WHERE user_id = ? AND provider = ?",
                (user_id, record.provider),
            ) as cur:
                return _provider_key(await cur.fetchone())

    async def get_provider_key(self, user_id: str, provider: str) -> ProviderKeyRecord | None:
        row = await self._one(
            "SELECT provider, nonce, ciphertext, last4, create_time, update_time"
            " FROM provider_keys WHERE user_id = ? AND provider = ?",
            (user_id, provider),
        )
        return _provider_key(row) if row else None

    async def list_provider_keys(self, user_id: str) -> list[ProviderKeyRecord]:
        rows = await self._all(
            "SELECT provider, nonce, ciphertext, last4, create_time, update_time"
            " FROM provider_keys WHERE user_id = ? ORDER BY provider",
            (user_id,),
        )
        return [_provider_key(r) for r in rows]

    async def delete_provider_key(self, user_id: str, provider: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "DELETE FROM provider_keys WHERE user_id = ? AND provider = ?", (user_id, provider)
            )
            return cur.rowcount > 0
