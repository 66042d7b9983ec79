"""Persistence behind one async interface (`Store`); SQL never leaves this package."""

from byok.server.storage.base import Store, User

__all__ = ["Store", "User"]
