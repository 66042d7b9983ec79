"""Persistence behind one async interface (`Store`); SQL never leaves this package."""

from byok.server.storage.base import ImportRecord, Store, User

__all__ = ["ImportRecord", "Store", "User"]
