"""Numbered, versioned schema migrations with upgrade and rollback (yoyo-migrations).

Each backend has its own folder of plain SQL files, `NNNN.name.sql` with a
`NNNN.name.rollback.sql` beside it. A schema change is always a new file: old ones
are never edited once they have landed. See docs/adr/0003-migrations.md.

The backend comes from the URL: `sqlite:///path` or `postgresql://user@host/db`
(`postgres://` and `postgresql+psycopg://` too). On PostgreSQL every command runs under
a session advisory lock, so replicas that start together migrate one after the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoyo import get_backend, read_migrations
from yoyo.connections import parse_uri

_ROOT = Path(__file__).parent
_POSTGRES_SCHEMES = ("postgresql", "postgres")
# pg_advisory_lock key held while migrating: "byokmigr" in ASCII.
POSTGRES_LOCK_KEY = int.from_bytes(b"byokmigr", "big")


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def migrations_dir(backend: str) -> Path:
    return _ROOT / backend / "migrations"


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.resolve())


def backend_of(url: str) -> str:
    """The migrations folder for a database URL: "sqlite" or "postgres"."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme.partition("+")[0] in _POSTGRES_SCHEMES:
        return "postgres"
    raise ValueError(f"unsupported database URL scheme {scheme!r}; use sqlite or postgresql")


def postgres_url(url: str) -> str:
    """The yoyo URL (psycopg 3 driver) for any postgres/postgresql[+driver] URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower().partition("+")[0] not in _POSTGRES_SCHEMES:
        raise ValueError("expected a postgresql://user:password@host:port/database URL")
    return "postgresql+psycopg://" + rest


@contextlib.contextmanager
def postgres_lock(url: str) -> Iterator[None]:
    """Holds the migration advisory lock on its own connection (waits for it)."""
    import psycopg  # only needed with PostgreSQL

    uri = parse_uri(postgres_url(url))
    params: dict[str, Any] = {k: v for k, v in uri.args.items() if k != "schema"}
    for key, value in (
        ("dbname", uri.database),
        ("user", uri.username),
        ("password", uri.password),
        ("host", uri.hostname),
        ("port", uri.port),
    ):
        if value is not None:
            params[key] = value
    with psycopg.connect(autocommit=True, **params) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (POSTGRES_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (POSTGRES_LOCK_KEY,))


@contextlib.contextmanager
def _open(url: str, backend: str | None) -> Iterator[tuple[Any, Any]]:
    backend = backend or backend_of(url)
    postgres = backend_of(url) == "postgres"
    with postgres_lock(url) if postgres else contextlib.nullcontext():
        db = get_backend(postgres_url(url) if postgres else url)
        try:
            yield db, read_migrations(str(migrations_dir(backend)))
        finally:
            db.connection.close()


def status(url: str, backend: str | None = None) -> list[MigrationState]:
    with _open(url, backend) as (db, migrations):
        applied = {m.id for m in migrations if db.is_applied(m)}
        return [MigrationState(m.id, m.id in applied) for m in migrations]


def head(backend: str = "sqlite") -> str:
    return str(list(read_migrations(str(migrations_dir(backend))))[-1].id)


def upgrade(url: str, backend: str | None = None) -> list[str]:
    """Applies every pending migration; returns the ids applied."""
    with _open(url, backend) as (db, migrations), db.lock():
        pending = db.to_apply(migrations)
        db.apply_migrations(pending)
        return [m.id for m in pending]


def downgrade(url: str, backend: str | None = None, to: str | None = None) -> list[str]:
    """Rolls back the newest migration, or every one after `to` ("zero" = all).

    Returns the ids rolled back, newest first.
    """
    with _open(url, backend) as (db, migrations), db.lock():
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
