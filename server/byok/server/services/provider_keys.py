"""The provider-key RPCs of ModelService: Set/List/DeleteProviderKey.

A mixin so the ModelService servicer (routes and profiles) stays one class per
service while this part keeps its own module. Keys go in, never out.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from byok.server.accounts.provider_keys import ProviderKeys
from byok.server.rpc.calls import user_of
from byok.server.services.convert import timestamp
from byok.server.storage.accounts import ProviderKeyRecord
from byok.v1 import models_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def provider_key_pb(record: ProviderKeyRecord) -> models_pb2.ProviderKey:
    return models_pb2.ProviderKey(
        name=f"providerKeys/{record.provider}",
        provider=record.provider,
        last4=record.last4,
        create_time=timestamp(record.create_time_us),
        update_time=timestamp(record.update_time_us),
    )


class ProviderKeysMixin:
    provider_keys: ProviderKeys

    async def SetProviderKey(
        self, request: models_pb2.SetProviderKeyRequest, context: Context
    ) -> models_pb2.ProviderKey:
        record = await self.provider_keys.set(user_of(context), request.provider, request.key)
        return provider_key_pb(record)

    async def ListProviderKeys(
        self, request: models_pb2.ListProviderKeysRequest, context: Context
    ) -> models_pb2.ListProviderKeysResponse:
        records = await self.provider_keys.list(user_of(context))
        return models_pb2.ListProviderKeysResponse(
            provider_keys=[provider_key_pb(r) for r in records]
        )

    async def DeleteProviderKey(
        self, request: models_pb2.DeleteProviderKeyRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.provider_keys.delete(user_of(context), request.name)
        return empty_pb2.Empty()
