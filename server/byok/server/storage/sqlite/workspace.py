"""Spaces and model profiles on SQLite."""

from __future__ import annotations

from byok.server.storage.sqlite.base import SqliteBase


class WorkspaceMixin(SqliteBase):
    pass
