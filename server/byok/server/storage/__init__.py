"""Persistence behind one async interface (`Store`); SQL never leaves this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from byok.server.storage.accounts import AccountStore
from byok.server.storage.base import ImportRecord, Store, User
from byok.server.storage.workspace import WorkspaceStore

if TYPE_CHECKING:
    from byok.server.config import Settings

__all__ = ["FullStore", "ImportRecord", "Store", "User", "open_store"]


class FullStore(Store, AccountStore, WorkspaceStore, Protocol):
    """Everything a byok server keeps: conversations, accounts, workspaces."""


async def open_store(settings: Settings) -> FullStore:
    """The configured backend, its schema brought to head: PostgreSQL when
    BYOK_DATABASE_URL is set (several replicas can share it), else SQLite in the data
    folder (the embedded default)."""
    if settings.database_url is not None:
        from byok.server.storage.postgres import PostgresStore

        return await PostgresStore.open(settings.database_url.get_secret_value())
    from byok.server.storage.sqlite import SqliteStore

    return await SqliteStore.open(
        settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )
