"""Spaces and model profiles on SQLite (`WorkspaceStore`).

Every statement is parameterized and scoped by user; the only SQL text built at run
time joins fixed column names from whitelists.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiosqlite

from byok.server.errors import AlreadyExists, FailedPrecondition, NotFound
from byok.server.storage.base import check_etag as _check_etag
from byok.server.storage.sqlite.base import SqliteBase, now_us
from byok.server.storage.workspace import ModelProfile, Params, Space

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


def _profile(row: Sequence[Any]) -> ModelProfile:
    return ModelProfile(
        seq=row[0],
        id=row[1],
        display_name=row[2],
        description=row[3],
        model_key=row[4],
        params=Params.from_json(json.loads(row[5])),
        create_time_us=row[6],
        update_time_us=row[7],
        revision=row[8],
    )


def _space(row: Sequence[Any]) -> Space:
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


async def _fetchone(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> Any:
    async with db.execute(sql, params) as cur:
        return await cur.fetchone()


async def _fetchall(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def _with_profiles(db: aiosqlite.Connection, spaces: list[Space]) -> list[Space]:
    """Fills each space's linked profile ids, in link order."""
    if not spaces:
        return spaces
    by_seq = {s.seq: s for s in spaces}
    marks = ",".join("?" * len(by_seq))
    rows = await _fetchall(
        db,
        "SELECT l.space_seq, p.id FROM space_profiles l"
        " JOIN model_profiles p ON p.seq = l.profile_seq"
        f" WHERE l.space_seq IN ({marks}) ORDER BY l.link_time, l.profile_seq",
        list(by_seq),
    )
    for space_seq, profile_id in rows:
        by_seq[space_seq].profile_ids.append(profile_id)
    return spaces


async def _load_space(db: aiosqlite.Connection, user_id: str, space_id: str) -> Space | None:
    row = await _fetchone(
        db,
        f"SELECT {SPACE_COLS} FROM spaces s WHERE s.id = ? AND s.user_id = ?",
        (space_id, user_id),
    )
    if row is None:
        return None
    return (await _with_profiles(db, [_space(row)]))[0]


async def _profile_seq(db: aiosqlite.Connection, user_id: str, profile_id: str) -> int:
    """The profile's seq; NotFound naming it if the user has no such profile."""
    row = await _fetchone(
        db, "SELECT seq FROM model_profiles WHERE id = ? AND user_id = ?", (profile_id, user_id)
    )
    if row is None:
        raise NotFound.resource(f"modelProfiles/{profile_id}")
    return int(row[0])


class WorkspaceMixin(SqliteBase):
    # -- model profiles ---------------------------------------------------------------

    async def create_model_profile(
        self, user_id: str, profile: ModelProfile, *, request_id: str | None = None
    ) -> tuple[ModelProfile, bool]:
        async with self._tx() as db:
            if request_id:
                row = await _fetchone(
                    db,
                    f"SELECT {PROFILE_COLS} FROM model_profiles p"
                    " WHERE p.user_id = ? AND p.request_id = ?",
                    (user_id, request_id),
                )
                if row is not None:
                    return _profile(row), False
            now = now_us()
            try:
                cur = await db.execute(
                    "INSERT INTO model_profiles (id, user_id, display_name, description,"
                    " model_key, params, create_time, update_time, request_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        profile.id,
                        user_id,
                        profile.display_name,
                        profile.description,
                        profile.model_key,
                        json.dumps(profile.params.to_json()),
                        now,
                        now,
                        request_id,
                    ),
                )
            except sqlite3.IntegrityError:
                name = f"modelProfiles/{profile.id}"
                raise AlreadyExists(
                    f"{name} already exists", reason="MODEL_PROFILE_EXISTS", metadata={"name": name}
                ) from None
            seq = cur.lastrowid or 0
        created = ModelProfile(
            id=profile.id,
            model_key=profile.model_key,
            display_name=profile.display_name,
            description=profile.description,
            params=profile.params,
            create_time_us=now,
            update_time_us=now,
            seq=seq,
        )
        return created, True

    async def get_model_profile(self, user_id: str, profile_id: str) -> ModelProfile | None:
        row = await self._one(
            f"SELECT {PROFILE_COLS} FROM model_profiles p WHERE p.id = ? AND p.user_id = ?",
            (profile_id, user_id),
        )
        return _profile(row) if row else None

    async def list_model_profiles(
        self, user_id: str, *, limit: int, before_seq: int | None
    ) -> list[ModelProfile]:
        cursor = " AND p.seq < ?" if before_seq is not None else ""
        params: list[Any] = [user_id] + ([before_seq] if before_seq is not None else [])
        rows = await self._all(
            f"SELECT {PROFILE_COLS} FROM model_profiles p WHERE p.user_id = ?{cursor}"
            " ORDER BY p.seq DESC LIMIT ?",
            (*params, limit),
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
        async with self._tx() as db:
            row = await _fetchone(
                db,
                "SELECT revision, params FROM model_profiles WHERE id = ? AND user_id = ?",
                (profile_id, user_id),
            )
            if row is None:
                return None
            _check_etag(expected_etag, profile_id, row[0], f"modelProfiles/{profile_id}")
            changes = dict(changes)
            if "param_fields" in changes:  # some parameters: merged here, in the transaction
                current = Params.from_json(json.loads(row[1]))
                changes["params"] = replace(current, **changes.pop("param_fields"))
            sets = ["update_time = ?", "revision = revision + 1"]
            params: list[Any] = [now_us()]
            for key, value in changes.items():
                if key not in _PROFILE_COLUMNS:
                    raise ValueError(f"cannot update {key}")
                sets.append(f"{key} = ?")
                params.append(json.dumps(value.to_json()) if key == "params" else value)
            await db.execute(
                f"UPDATE model_profiles SET {', '.join(sets)} WHERE id = ? AND user_id = ?",
                (*params, profile_id, user_id),
            )
            row = await _fetchone(
                db, f"SELECT {PROFILE_COLS} FROM model_profiles p WHERE p.id = ?", (profile_id,)
            )
            return _profile(row)

    async def delete_model_profile(
        self, user_id: str, profile_id: str, *, expected_etag: str | None
    ) -> bool:
        async with self._tx() as db:
            row = await _fetchone(
                db,
                "SELECT seq, revision FROM model_profiles WHERE id = ? AND user_id = ?",
                (profile_id, user_id),
            )
            if row is None:
                return False
            _check_etag(expected_etag, profile_id, row[1], f"modelProfiles/{profile_id}")
            # The spaces that link it change (their etags too); the links cascade.
            await db.execute(
                "UPDATE spaces SET update_time = ?, revision = revision + 1,"
                " default_profile_id = CASE WHEN default_profile_id = ? THEN NULL"
                " ELSE default_profile_id END"
                " WHERE user_id = ? AND (default_profile_id = ?"
                " OR seq IN (SELECT space_seq FROM space_profiles WHERE profile_seq = ?))",
                (now_us(), profile_id, user_id, profile_id, row[0]),
            )
            await db.execute("DELETE FROM model_profiles WHERE seq = ?", (row[0],))
            return True

    # -- spaces -----------------------------------------------------------------------

    async def create_space(
        self, user_id: str, space: Space, *, request_id: str | None = None
    ) -> tuple[Space, bool]:
        async with self._tx() as db:
            if request_id:
                row = await _fetchone(
                    db,
                    "SELECT id FROM spaces WHERE user_id = ? AND request_id = ?",
                    (user_id, request_id),
                )
                if row is not None:
                    first = await _load_space(db, user_id, row[0])
                    assert first is not None
                    return first, False
            now = now_us()
            try:
                await db.execute(
                    "INSERT INTO spaces (id, user_id, display_name, description, create_time,"
                    " update_time, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        space.id,
                        user_id,
                        space.display_name,
                        space.description,
                        now,
                        now,
                        request_id,
                    ),
                )
            except sqlite3.IntegrityError:
                name = f"spaces/{space.id}"
                raise AlreadyExists(
                    f"{name} already exists", reason="SPACE_EXISTS", metadata={"name": name}
                ) from None
            created = await _load_space(db, user_id, space.id)
            assert created is not None
            return created, True

    async def get_space(self, user_id: str, space_id: str) -> Space | None:
        async with self._read_lock:
            return await _load_space(self._reader, user_id, space_id)

    async def space_exists(self, user_id: str, space_id: str) -> bool:
        row = await self._one(
            "SELECT 1 FROM spaces WHERE id = ? AND user_id = ?", (space_id, user_id)
        )
        return row is not None

    async def list_spaces(self, user_id: str, *, limit: int, before_seq: int | None) -> list[Space]:
        cursor = " AND s.seq < ?" if before_seq is not None else ""
        params: list[Any] = [user_id] + ([before_seq] if before_seq is not None else [])
        rows = await self._all(
            f"SELECT {SPACE_COLS} FROM spaces s WHERE s.user_id = ?{cursor}"
            " ORDER BY s.seq DESC LIMIT ?",
            (*params, limit),
        )
        async with self._read_lock:
            return await _with_profiles(self._reader, [_space(r) for r in rows])

    async def update_space(
        self,
        user_id: str,
        space_id: str,
        changes: Mapping[str, Any],
        *,
        expected_etag: str | None,
    ) -> Space | None:
        async with self._tx() as db:
            row = await _fetchone(
                db,
                "SELECT seq, revision FROM spaces WHERE id = ? AND user_id = ?",
                (space_id, user_id),
            )
            if row is None:
                return None
            name = f"spaces/{space_id}"
            _check_etag(expected_etag, space_id, row[1], name)
            sets = ["update_time = ?", "revision = revision + 1"]
            params: list[Any] = [now_us()]
            for key, value in changes.items():
                if key not in _SPACE_COLUMNS:
                    raise ValueError(f"cannot update {key}")
                if key == "default_profile_id" and value:
                    profile_seq = await _profile_seq(db, user_id, value)
                    linked = await _fetchone(
                        db,
                        "SELECT 1 FROM space_profiles WHERE space_seq = ? AND profile_seq = ?",
                        (row[0], profile_seq),
                    )
                    if linked is None:
                        profile = f"modelProfiles/{value}"
                        raise FailedPrecondition(
                            f"{profile} is not linked to {name}; link it first"
                            " (LinkModelProfile with make_default)",
                            reason="MODEL_PROFILE_NOT_LINKED",
                            metadata={"space": name, "model_profile": profile},
                        )
                sets.append(f"{key} = ?")
                params.append((value or None) if key == "default_profile_id" else value)
            await db.execute(
                f"UPDATE spaces SET {', '.join(sets)} WHERE seq = ?", (*params, row[0])
            )
            return await _load_space(db, user_id, space_id)

    async def delete_space(
        self, user_id: str, space_id: str, *, expected_etag: str | None, force: bool
    ) -> bool:
        async with self._tx() as db:
            row = await _fetchone(
                db,
                "SELECT seq, revision, (SELECT COUNT(*) FROM conversations c"
                " WHERE c.user_id = s.user_id AND c.space_id = s.id)"
                " FROM spaces s WHERE s.id = ? AND s.user_id = ?",
                (space_id, user_id),
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
                    "DELETE FROM conversations WHERE user_id = ? AND space_id = ?",
                    (user_id, space_id),
                )
            await db.execute("DELETE FROM spaces WHERE seq = ?", (row[0],))
            return True

    async def link_model_profile(
        self, user_id: str, space_id: str, profile_id: str, *, make_default: bool
    ) -> Space | None:
        async with self._tx() as db:
            row = await _fetchone(
                db, "SELECT seq FROM spaces WHERE id = ? AND user_id = ?", (space_id, user_id)
            )
            if row is None:
                return None
            profile_seq = await _profile_seq(db, user_id, profile_id)
            now = now_us()
            cur = await db.execute(
                "INSERT OR IGNORE INTO space_profiles (space_seq, profile_seq, link_time)"
                " VALUES (?, ?, ?)",
                (row[0], profile_seq, now),
            )
            changed = cur.rowcount > 0
            if make_default:
                cur = await db.execute(
                    "UPDATE spaces SET default_profile_id = ?"
                    " WHERE seq = ? AND COALESCE(default_profile_id, '') != ?",
                    (profile_id, row[0], profile_id),
                )
                changed = changed or cur.rowcount > 0
            if changed:  # linking again what is already linked is no change (no new etag)
                await db.execute(
                    "UPDATE spaces SET update_time = ?, revision = revision + 1 WHERE seq = ?",
                    (now, row[0]),
                )
            return await _load_space(db, user_id, space_id)

    async def unlink_model_profile(
        self, user_id: str, space_id: str, profile_id: str
    ) -> Space | None:
        async with self._tx() as db:
            row = await _fetchone(
                db, "SELECT seq FROM spaces WHERE id = ? AND user_id = ?", (space_id, user_id)
            )
            if row is None:
                return None
            profile_seq = await _profile_seq(db, user_id, profile_id)
            cur = await db.execute(
                "DELETE FROM space_profiles WHERE space_seq = ? AND profile_seq = ?",
                (row[0], profile_seq),
            )
            if cur.rowcount:
                await db.execute(
                    "UPDATE spaces SET update_time = ?, revision = revision + 1,"
                    " default_profile_id = CASE WHEN default_profile_id = ? THEN NULL"
                    " ELSE default_profile_id END WHERE seq = ?",
                    (now_us(), profile_id, row[0]),
                )
            return await _load_space(db, user_id, space_id)
