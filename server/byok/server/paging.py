"""AIP-158 pagination: page sizes and opaque, tamper-evident page tokens.

A token carries the keyset cursor (the sort key of the last item returned) and a
digest of the query it belongs to, so a token reused with another filter or order
is refused instead of silently giving wrong pages. Keyset cursors mean inserts made
while a client pages never make it miss or repeat an item.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from byok.server.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


def _digest(query: Any) -> str:
    blob = json.dumps(query, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_token(cursor: list[Any], query: Any) -> str:
    payload = json.dumps({"c": cursor, "q": _digest(query)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_token(token: str, query: Any) -> list[Any] | None:
    """The cursor of a token made for this same query; None for an empty token."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor, digest = payload["c"], payload["q"]
        if not isinstance(cursor, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this server made") from None
    if digest != _digest(query):
        raise InvalidArgument.field(
            "page_token", "belongs to a request with other parameters (filter, order_by, parent)"
        )
    return cursor


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=_Sequenced)


async def seq_page(
    fetch: Callable[[int, int | None], Awaitable[list[T]]],
    *,
    requested_size: int,
    page_token: str,
    query: Any,
) -> tuple[list[T], str]:
    """One page of a list ordered by storage sequence: `fetch(limit, before_seq)` returns
    up to `limit` rows after the cursor; one extra row tells whether a next page exists."""
    size = page_size(requested_size)
    cursor = decode_token(page_token, query)
    rows = await fetch(size + 1, int(cursor[0]) if cursor else None)
    page = rows[:size]
    token = encode_token([page[-1].seq], query) if len(rows) > size else ""
    return page, token
