"""Resource ids: UUIDv7 (sortable by creation) made by the server, or chosen by the caller."""

from __future__ import annotations

import os
import re
import time
import uuid

from byok.server.errors import InvalidArgument

_CALLER_ID = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$")


MAX_ID_LENGTH = 128  # server ids are 36 characters, caller-chosen ones at most 63


def new_id() -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, then random bits (RFC 9562)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def check_caller_id(field: str, value: str) -> str:
    """AIP-122 style ids: 1-63 of a-z, 0-9 and '-', starting with a letter."""
    if not _CALLER_ID.match(value):
        raise InvalidArgument.field(
            field, "must be 1-63 lowercase letters, digits or hyphens, starting with a letter"
        )
    return value


def parse_name(name: str, *collections: str, field: str = "name") -> list[str]:
    """Splits `conversations/a/messages/b` by the expected collections; returns the ids.

    Raises InvalidArgument when the name does not have that shape.
    """
    parts = name.split("/")
    shape = "/".join(f"{c}/{{id}}" for c in collections)
    if len(parts) != 2 * len(collections) or any(
        parts[2 * i] != c or not parts[2 * i + 1] for i, c in enumerate(collections)
    ):
        raise InvalidArgument.field(field, f"{name!r} is not a resource name of the form {shape}")
    ids = [parts[2 * i + 1] for i in range(len(collections))]
    if any(len(part) > MAX_ID_LENGTH for part in ids):
        raise InvalidArgument.field(field, f"has an id longer than {MAX_ID_LENGTH} characters")
    return ids
