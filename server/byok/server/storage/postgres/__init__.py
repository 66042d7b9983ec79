"""The shared-database backend: PostgreSQL through asyncpg (see docs/postgres.md)."""

from byok.server.storage.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
