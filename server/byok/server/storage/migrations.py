"""Numbered, versioned schema migrations with upgrade and rollback (yoyo-migrations).

Each backend has its own folder of plain SQL files, `NNNN.name.sql` with a
`NNNN.name.rollback.sql` beside it. A schema change is always a new file: old ones
are never edited once they have landed. See docs/adr/0003-migrations.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yoyo import get_backend, read_migrations

_ROOT = Path(__file__).parent


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def migrations_dir(backend: str) -> Path:
    return _ROOT / backend / "migrations"


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.resolve())


def _open(url: str, backend: str):  # type: ignore[no-untyped-def]
    return get_backend(url), read_migrations(str(migrations_dir(backend)))


def status(url: str, backend: str = "sqlite") -> list[MigrationState]:
    db, migrations = _open(url, backend)
    try:
        applied = {m.id for m in migrations if db.is_applied(m)}
        return [MigrationState(m.id, m.id in applied) for m in migrations]
    finally:
        db.connection.close()


def head(backend: str = "sqlite") -> str:
    return str(list(read_migrations(str(migrations_dir(backend))))[-1].id)


def upgrade(url: str, backend: str = "sqlite") -> list[str]:
    """Applies every pending migration; returns the ids applied."""
    db, migrations = _open(url, backend)
    try:
        with db.lock():
            pending = db.to_apply(migrations)
            db.apply_migrations(pending)
            return [m.id for m in pending]
    finally:
        db.connection.close()


def downgrade(url: str, backend: str = "sqlite", to: str | None = None) -> list[str]:
    """Rolls back the newest migration, or every one after `to` ("zero" = all).

    Returns the ids rolled back, newest first.
    """
    db, migrations = _open(url, backend)
    try:
        with db.lock():
            applied = list(db.to_rollback(migrations))  # newest first
            if to is None:
                chosen = applied[:1]
            elif to == "zero":
                chosen = applied
            else:
                ids = [m.id for m in applied]
                if to not in ids:
                    raise ValueError(f"migration {to!r} is not applied; applied: {', '.join(ids)}")
                chosen = applied[: ids.index(to)]
            db.rollback_migrations(type(migrations)(chosen))
            return [m.id for m in chosen]
    finally:
        db.connection.close()
