"""The async Python client against the real server."""

from __future__ import annotations

import pytest

from byok.client import AsyncClient, ByokError, chat_request
from tests.support.servers import RunningServer


async def test_async_client_pages_streams_and_raises_byok_errors(server: RunningServer) -> None:
    async with AsyncClient(server.grpc_target) as byok:
        names = {(await byok.create_conversation(f"t{i}")).name for i in range(5)}
        listed = [c.name async for c in byok.list_conversations(page_size=2)]
        assert sorted(listed) == sorted(names) and len(listed) == 5  # 3 pages, each once
        await byok.create_message(listed[0], "a searchable walrus")
        hits = [h async for h in byok.search("walrus")]
        assert [h.conversation for h in hits] == [listed[0]]

        kinds = [
            e.WhichOneof("event")
            async for e in byok.stream_chat(chat_request("Say hi.", max_tokens=4))
        ]
        assert kinds[0] == "started" and kinds[-1] == "done" and "delta" in kinds

        with pytest.raises(ByokError) as info:
            await byok.get_conversation("nope")
        assert info.value.code == "NOT_FOUND" and info.value.reason == "RESOURCE_NOT_FOUND"
