"""Spaces and model profiles on PostgreSQL (`WorkspaceStore`).

Every statement is parameterized and scoped by user; the only SQL text built at run
time joins fixed column names from whitelists. Every write runs under the user's
workspace lock (`_user_tx`): a profile's deletion, a link and a default that must stay
linked are decided on one consistent view, whichever replica runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import asyncpg

from byok.server.errors import AlreadyExists, FailedPrecondition, NotFound
from byok.server.storage.base import check_etag as _check_etag
from byok.server.storage.postgres.base import (
    PostgresBase,
    _Args,
    _rowcount,
    now_us,
)
from byok.server.storage.workspace import ModelProfile, Params, Space

if TYPE_CHECKING:
    from byok.server.storage.postgres.base import Connection

    Reader = Connection | asyncpg.Pool[asyncpg.Record]

PROFILE_COLS = (
    "p.seq, p.id, p.display_name, p.description, p.model_key, p.params,"
    " p.create_time, p.update_time, p.revision"
)
SPACE_COLS = (
    "s.seq, s.id, s.display_name, s.description, COALESCE(s.default_profile_id, ''),"
    " s.create_time, s.update_time, s.revision,"
    " (SELECT COUNT(*) FROM conversations c WHERE c.user_id = s.user_id AND c.space_id = s.id)"
)
_PROFILE_COLUMNS = {"display_name", "description", "model_key", "params"}
_SPACE_COLUMNS = {"display_name", "description", "default_profile_id"}


def _profile(row: asyncpg.Record) -> ModelProfile:
    return ModelProfile(
        seq=row[0],
        id=row[1],
        display_name=row[2],
        description=row[3],
        model_key=row[4],
        params=Params.from_json(row[5]),
        create_time_us=row[6],
        update_time_us=row[7],
        revision=row[8],
    )


def _space(row: asyncpg.Record) -> Space:
    return Space(
        seq=row[0],
        id=row[1],
        display_name=row[2],
        description=row[3],
        default_profile_id=row[4],
        create_time_us=row[5],
        update_time_us=row[6],
        revision=row[7],
        conversation_count=row[8],
    )


def _profile_exists(profile_id: str) -> AlreadyExists:
    name = f"modelProfiles/{profile_id}"
    return AlreadyExists(
        f"{name} already exists", reason="MODEL_PROFILE_EXISTS", metadata={"name": name}
    )


def _space_exists(space_id: str) -> AlreadyExists:
    name = f"spaces/{space_id}"
    return AlreadyExists(f"{name} already exists", reason="SPACE_EXISTS", metadata={"name": name})


async def _with_profiles(db: Reader, spaces: list[Space]) -> list[Space]:
    """Fills each space's linked profile ids, in link order."""
    if not spaces:
        return spaces
    by_seq = {s.seq: s for s in spaces}
    rows = await db.fetch(
        "SELECT l.space_seq, p.id FROM space_profiles l"
        " JOIN model_profiles p ON p.seq = l.profile_seq"
        " WHERE l.space_seq = ANY($1::bigint[]) ORDER BY l.link_time, l.profile_seq",
        list(by_seq),
    )
    for space_seq, profile_id in rows:
        by_seq[space_seq].profile_ids.append(profile_id)
    return spaces


async def _load_space(db: Reader, user_id: str, space_id: str) -> Space | None:
    row = await db.fetchrow(
        f"SELECT {SPACE_COLS} FROM spaces s WHERE s.id = $1 AND s.user_id = $2",
        space_id,
        user_id,
    )
    if row is None:
        return None
    return (await _with_profiles(db, [_space(row)]))[0]


async def _profile_seq(db: Connection, user_id: str, profile_id: str) -> int:
    """The profile's seq; NotFound naming it if the user has no such profile."""
    seq = await db.fetchval(
        "SELECT seq FROM model_profiles WHERE id = $1 AND user_id = $2", profile_id, user_id
    )
    if seq is None:
        raise NotFound.resource(f"modelProfiles/{profile_id}")
    return int(seq)


class WorkspaceMixin(PostgresBase):
    # -- model profiles ---------------------------------------------------------------

    async def create_model_profile(
        self, user_id: str, profile: ModelProfile, *, request_id: str | None = None
    ) -> tuple[ModelProfile, bool]:
        select = (
            f"SELECT {PROFILE_COLS} FROM model_profiles p"
            " WHERE p.user_id = $1 AND p.request_id = $2"
        )
        async with self._user_tx(user_id) as db:
            if request_id:
                row = await db.fetchrow(select, user_id, request_id)
                if row is not None:
                    return _profile(row), False
            now = now_us()
            try:
                row = await db.fetchrow(
                    "INSERT INTO model_profiles AS p (id, user_id, display_name, description,"
                    " model_key, params, create_time, update_time, request_id)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING {PROFILE_COLS}",
                    profile.id,
                    user_id,
                    profile.display_name,
                    profile.description,
                    profile.model_key,
                    profile.params.to_json(),
                    now,
                    request_id,
                )
            except asyncpg.UniqueViolationError:
                raise _profile_exists(profile.id) from None
        assert row is not None
        return _profile(row), True

    async def get_model_profile(self, user_id: str, profile_id: str) -> ModelProfile | None:
        row = await self._pool.fetchrow(
            f"SELECT {PROFILE_COLS} FROM model_profiles p WHERE p.id = $1 AND p.user_id = $2",
            profile_id,
            user_id,
        )
        return _profile(row) if row else None

    async def list_model_profiles(
        self, user_id: str, *, limit: int, before_seq: int | None
    ) -> list[ModelProfile]:
        args = _Args(user_id)
        cursor = f" AND p.seq < {args(before_seq)}" if before_seq is not None else ""
        rows = await self._pool.fetch(
            f"SELECT {PROFILE_COLS} FROM model_profiles p WHERE p.user_id = $1{cursor}"
            f" ORDER BY p.seq DESC LIMIT {args(limit)}",
            *args.values,
        )
        return [_profile(r) for r in rows]

    async def update_model_profile(
        self,
        user_id: str,
        profile_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> ModelProfile | None:
        async with self._user_tx(user_id) as db:
            row = await db.fetchrow(
                "SELECT revision, params FROM model_profiles WHERE id = $1 AND user_id = $2",
                profile_id,
                user_id,
            )
            if row is None:
                return None
            _check_etag(expected_etag, profile_id, row[0], f"modelProfiles/{profile_id}")
            changes = dict(changes)
            if "param_fields" in changes:  # some parameters: merged here, in the transaction
                current = Params.from_json(row[1])
                changes["params"] = replace(current, **changes.pop("param_fields"))
            args = _Args(profile_id, user_id, now_us())
            sets = ["update_time = $3", "revision = revision + 1"]
            for key, value in changes.items():
                if key not in _PROFILE_COLUMNS:
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = {args(value.to_json() if key == 'params' else value)}")
            updated = await db.fetchrow(
                f"UPDATE model_profiles AS p SET {', '.join(sets)}"
                f" WHERE p.id = $1 AND p.user_id = $2 RETURNING {PROFILE_COLS}",
                *args.values,
            )
            assert updated is not None
            return _profile(updated)

    async def delete_model_profile(
        self, user_id: str, profile_id: str, *, expected_etag: str | None
    ) -> bool:
        async with self._user_tx(user_id) as db:
            row = await db.fetchrow(
                "SELECT seq, revision FROM model_profiles WHERE id = $1 AND user_id = $2",
                profile_id,
                user_id,
            )
            if row is None:
                return False
            _check_etag(expected_etag, profile_id, row[1], f"modelProfiles/{profile_id}")
            # The spaces that link it change (their etags too); the links cascade.
            await db.execute(
                "UPDATE spaces SET update_time = $1, revision = revision + 1,"
                " default_profile_id = CASE WHEN default_profile_id = $2 THEN NULL"
                " ELSE default_profile_id END"
                " WHERE user_id = $3 AND (default_profile_id = $2"
                " OR seq IN (SELECT space_seq FROM space_profiles WHERE profile_seq = $4))",
                now_us(),
                profile_id,
                user_id,
                row[0],
            )
            await db.execute("DELETE FROM model_profiles WHERE seq = $1", row[0])
            return True

    # -- spaces -----------------------------------------------------------------------

    async def create_space(
        self, user_id: str, space: Space, *, request_id: str | None = None
    ) -> tuple[Space, bool]:
        async with self._user_tx(user_id) as db:
            if request_id:
                first_id = await db.fetchval(
                    "SELECT id FROM spaces WHERE user_id = $1 AND request_id = $2",
                    user_id,
                    request_id,
                )
                if first_id is not None:
                    first = await _load_space(db, user_id, first_id)
                    assert first is not None
                    return first, False
            now = now_us()
            try:
                await db.execute(
                    "INSERT INTO spaces (id, user_id, display_name, description,"
                    " create_time, update_time, request_id)"
                    " VALUES ($1, $2, $3, $4, $5, $5, $6)",
                    space.id,
                    user_id,
                    space.display_name,
                    space.description,
                    now,
                    request_id,
                )
            except asyncpg.UniqueViolationError:
                raise _space_exists(space.id) from None
            created = await _load_space(db, user_id, space.id)
            assert created is not None
            return created, True

    async def get_space(self, user_id: str, space_id: str) -> Space | None:
        # One snapshot for the space and its links.
        async with (
            self._pool.acquire() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await _load_space(db, user_id, space_id)

    async def space_exists(self, user_id: str, space_id: str) -> bool:
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM spaces WHERE id = $1 AND user_id = $2)",
                space_id,
                user_id,
            )
        )

    async def list_spaces(self, user_id: str, *, limit: int, before_seq: int | None) -> list[Space]:
        args = _Args(user_id)
        cursor = f" AND s.seq < {args(before_seq)}" if before_seq is not None else ""
        async with (
            self._pool.acquire() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await db.fetch(
                f"SELECT {SPACE_COLS} FROM spaces s WHERE s.user_id = $1{cursor}"
                f" ORDER BY s.seq DESC LIMIT {args(limit)}",
                *args.values,
            )
            return await _with_profiles(db, [_space(r) for r in rows])

    async def update_space(
        self,
        user_id: str,
        space_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Space | None:
        async with self._user_tx(user_id) as db:
            row = await db.fetchrow(
                "SELECT seq, revision FROM spaces WHERE id = $1 AND user_id = $2",
                space_id,
                user_id,
            )
            if row is None:
                return None
            name = f"spaces/{space_id}"
            _check_etag(expected_etag, space_id, row[1], name)
            args = _Args(row[0], now_us())
            sets = ["update_time = $2", "revision = revision + 1"]
            for key, value in changes.items():
                if key not in _SPACE_COLUMNS:
                    raise ValueError(f"cannot update {key}")
                if key == "default_profile_id" and value:
                    profile_seq = await _profile_seq(db, user_id, value)
                    linked = await db.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM space_profiles"
                        " WHERE space_seq = $1 AND profile_seq = $2)",
                        row[0],
                        profile_seq,
                    )
                    if not linked:
                        profile = f"modelProfiles/{value}"
                        raise FailedPrecondition(
                            f"{profile} is not linked to {name}; link it first"
                            " (LinkModelProfile with make_default)",
                            reason="MODEL_PROFILE_NOT_LINKED",
                            metadata={"space": name, "model_profile": profile},
                        )
                bound = (value or None) if key == "default_profile_id" else value
                sets.append(f"{key} = {args(bound)}")
            await db.execute(f"UPDATE spaces SET {', '.join(sets)} WHERE seq = $1", *args.values)
            return await _load_space(db, user_id, space_id)

    async def delete_space(
        self, user_id: str, space_id: str, *, expected_etag: str | None, force: bool
    ) -> bool:
        async with self._user_tx(user_id) as db:
            row = await db.fetchrow(
                "SELECT seq, revision, (SELECT COUNT(*) FROM conversations c"
                " WHERE c.user_id = s.user_id AND c.space_id = s.id)"
                " FROM spaces s WHERE s.id = $1 AND s.user_id = $2",
                space_id,
                user_id,
            )
            if row is None:
                return False
            name = f"spaces/{space_id}"
            _check_etag(expected_etag, space_id, row[1], name)
            if row[2] and not force:
                raise FailedPrecondition(
                    f"{name} still holds {row[2]} conversations; move or delete them,"
                    " or delete the space with force (which deletes them too)",
                    reason="SPACE_NOT_EMPTY",
                    metadata={"name": name, "conversation_count": str(row[2])},
                )
            if row[2]:
                await db.execute(
                    "DELETE FROM conversations WHERE user_id = $1 AND space_id = $2",
                    user_id,
                    space_id,
                )
            await db.execute("DELETE FROM spaces WHERE seq = $1", row[0])
            return True

    async def link_model_profile(
        self, user_id: str, space_id: str, profile_id: str, *, make_default: bool
    ) -> Space | None:
        async with self._user_tx(user_id) as db:
            space_seq = await db.fetchval(
                "SELECT seq FROM spaces WHERE id = $1 AND user_id = $2", space_id, user_id
            )
            if space_seq is None:
                return None
            profile_seq = await _profile_seq(db, user_id, profile_id)
            now = now_us()
            status = await db.execute(
                "INSERT INTO space_profiles (space_seq, profile_seq, link_time)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                space_seq,
                profile_seq,
                now,
            )
            changed = _rowcount(status) > 0
            if make_default:
                status = await db.execute(
                    "UPDATE spaces SET default_profile_id = $1"
                    " WHERE seq = $2 AND default_profile_id IS DISTINCT FROM $1",
                    profile_id,
                    space_seq,
                )
                changed = changed or _rowcount(status) > 0
            if changed:  # linking again what is already linked is no change (no new etag)
                await db.execute(
                    "UPDATE spaces SET update_time = $1, revision = revision + 1 WHERE seq = $2",
                    now,
                    space_seq,
                )
            return await _load_space(db, user_id, space_id)

    async def unlink_model_profile(
        self, user_id: str, space_id: str, profile_id: str
    ) -> Space | None:
        async with self._user_tx(user_id) as db:
            space_seq = await db.fetchval(
                "SELECT seq FROM spaces WHERE id = $1 AND user_id = $2", space_id, user_id
            )
            if space_seq is None:
                return None
            profile_seq = await _profile_seq(db, user_id, profile_id)
            status = await db.execute(
                "DELETE FROM space_profiles WHERE space_seq = $1 AND profile_seq = $2",
                space_seq,
                profile_seq,
            )
            if _rowcount(status):
                await db.execute(
                    "UPDATE spaces SET update_time = $1, revision = revision + 1,"
                    " default_profile_id = CASE WHEN default_profile_id = $2 THEN NULL"
                    " ELSE default_profile_id END WHERE seq = $3",
                    now_us(),
                    profile_id,
                    space_seq,
                )
            return await _load_space(db, user_id, space_id)
