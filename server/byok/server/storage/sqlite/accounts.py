"""Users, API keys and users' provider keys on SQLite."""

from __future__ import annotations

from byok.server.storage.sqlite.base import SqliteBase


class AccountsMixin(SqliteBase):
    pass
