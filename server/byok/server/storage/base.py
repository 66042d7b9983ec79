"""The async storage interface every backend implements.

The core packages depend on this protocol only; the SQLite and PostgreSQL
implementations pass one shared, parametrized test suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DEFAULT_USER_ID = "local"


@dataclass(frozen=True)
class User:
    """A person byok keeps threads for. `local` is the implicit user of local mode."""

    id: str
    name: str
    display_name: str
    disabled: bool
    create_time_us: int


class Store(Protocol):
    async def close(self) -> None:
        """Finishes pending work and releases connections; idempotent."""

    async def ping(self) -> None:
        """Raises if the database cannot answer a trivial query."""

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""
