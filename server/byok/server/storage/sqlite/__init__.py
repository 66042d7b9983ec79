"""The embedded default backend: SQLite through aiosqlite."""

from byok.server.storage.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
