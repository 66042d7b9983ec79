"""Users' own provider keys, encrypted at rest with AES-GCM under BYOK_MASTER_KEY.

The associated data binds each ciphertext to its user and provider, so a ciphertext
copied to another row does not decrypt. Keys are never returned or logged: only the
provider and the last 4 characters leave this module, except to the provider call.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Collection

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from byok.server.errors import FailedPrecondition, InvalidArgument, NotFound
from byok.server.storage.accounts import AccountStore, ProviderKeyRecord

_PROVIDER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_KEY_LENGTH = 4096


def parse_master_key(text: str) -> bytes:
    """BYOK_MASTER_KEY: 32 bytes, base64 (standard or URL-safe)."""
    try:
        raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_")
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"must be 32 bytes of base64 (got {len(raw)} bytes)")
    return raw


def new_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


class ProviderKeys:
    def __init__(
        self, store: AccountStore, master_key: bytes | None, providers: Collection[str]
    ) -> None:
        self.store = store
        self._aead = AESGCM(master_key) if master_key else None
        self.providers = sorted(set(providers) - {"local"})

    def _check_provider(self, provider: str) -> str:
        name = provider.strip().lower()
        if not _PROVIDER.match(name) or name not in self.providers:
            known = ", ".join(self.providers) or "none configured"
            raise InvalidArgument.field(
                "provider", f"{provider!r} is not a configured provider; known: {known}"
            )
        return name

    async def set(self, user_id: str, provider: str, key: str) -> ProviderKeyRecord:
        name = self._check_provider(provider)
        if self._aead is None:
            raise FailedPrecondition(
                "this server stores no provider keys: it has no BYOK_MASTER_KEY "
                "(generate one with `byok-server master-key`)",
                reason="MASTER_KEY_MISSING",
            )
        key = key.strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument.field("key", f"must be 1-{MAX_KEY_LENGTH} characters")
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, key.encode(), f"{user_id}:{name}".encode())
        record = ProviderKeyRecord(name, nonce, ciphertext, key[-4:], 0, 0)
        return await self.store.put_provider_key(user_id, record)

    async def list(self, user_id: str) -> list[ProviderKeyRecord]:
        return await self.store.list_provider_keys(user_id)

    async def delete(self, user_id: str, name: str) -> None:
        provider = name.removeprefix("providerKeys/")
        if name == provider or not await self.store.delete_provider_key(user_id, provider):
            raise NotFound.resource(name)

    async def plaintext(self, user_id: str, provider: str) -> str | None:
        """The caller's key for a provider, for the upstream call only."""
        if self._aead is None:
            return None
        record = await self.store.get_provider_key(user_id, provider)
        if record is None:
            return None
        aad = f"{user_id}:{provider}".encode()
        return self._aead.decrypt(record.nonce, record.ciphertext, aad).decode()
