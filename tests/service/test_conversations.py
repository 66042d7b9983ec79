"""ConversationService end to end on a real grpc.aio server over SQLite."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from byok.v1 import conversations_pb2 as pb
from byok.v1 import conversations_pb2_grpc, spaces_pb2, spaces_pb2_grpc
from tests.support.rpc import rpc_error

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub = conversations_pb2_grpc.ConversationServiceAsyncStub
CODE = grpc.StatusCode


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return conversations_pb2_grpc.ConversationServiceStub(channel)


async def new_thread(stub: Stub, title: str = "", **kw: object) -> pb.Conversation:
    return await stub.CreateConversation(
        pb.CreateConversationRequest(conversation=pb.Conversation(title=title, **kw))  # type: ignore[arg-type]
    )


async def say(
    stub: Stub, conv: str, text: str, role: int = pb.ROLE_USER, **kw: object
) -> pb.Message:
    return await stub.CreateMessage(
        pb.CreateMessageRequest(parent=conv, message=pb.Message(role=role, content=text, **kw))  # type: ignore[arg-type]
    )


async def test_create_get_update_delete_with_etags(stub: Stub) -> None:
    conv = await new_thread(stub, "Trip plans", metadata={"tag": "travel"})
    assert conv.name.startswith("conversations/") and conv.etag
    assert conv.create_time.seconds > 0 and conv.create_time == conv.update_time

    got = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert got.title == "Trip plans" and got.metadata["tag"] == "travel"

    updated = await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(
                name=conv.name, title="Japan trip", pinned=True, etag=conv.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "pinned"]),
        )
    )
    assert updated.title == "Japan trip" and updated.pinned and updated.metadata["tag"] == "travel"
    assert updated.etag != conv.etag

    with rpc_error(CODE.ABORTED) as err:  # stale etag
        await stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(name=conv.name, title="x", etag=conv.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
        )
    assert err.reason == "ETAG_MISMATCH"

    with rpc_error(CODE.FAILED_PRECONDITION) as err:  # pinned needs force
        await stub.DeleteConversation(pb.DeleteConversationRequest(name=conv.name))
    assert err.reason == "CONVERSATION_PINNED"
    await stub.DeleteConversation(pb.DeleteConversationRequest(name=conv.name, force=True))
    with rpc_error(CODE.NOT_FOUND) as err:
        await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert err.metadata["name"] == conv.name


async def test_request_id_makes_create_idempotent_and_caller_ids(stub: Stub) -> None:
    req = pb.CreateConversationRequest(
        conversation=pb.Conversation(title="once"),
        request_id="6f1c9a7e-1111-4222-8333-444455556666",
    )
    first, again = await stub.CreateConversation(req), await stub.CreateConversation(req)
    assert first.name == again.name
    mine = await stub.CreateConversation(
        pb.CreateConversationRequest(conversation=pb.Conversation(), conversation_id="my-notes")
    )
    assert mine.name == "conversations/my-notes"
    with rpc_error(CODE.ALREADY_EXISTS):
        await stub.CreateConversation(
            pb.CreateConversationRequest(conversation=pb.Conversation(), conversation_id="my-notes")
        )
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.CreateConversation(
            pb.CreateConversationRequest(conversation=pb.Conversation(), conversation_id="Bad Id!")
        )
    assert err.violations[0][0] == "conversation_id"


async def test_messages_append_list_get_update_delete_and_counters(stub: Stub) -> None:
    conv = await new_thread(stub, "maths")
    await say(stub, conv.name, "what is 2+2?")
    reply = await say(
        stub,
        conv.name,
        "4",
        role=pb.ROLE_ASSISTANT,
        model="gpt-4o-mini",
        route="FAST",
        finish_reason="stop",
        usage={"prompt_tokens": 10, "completion_tokens": 1},
    )
    got = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert [m.content for m in got.messages] == ["what is 2+2?", "4"]
    assert got.message_count == 2 and got.last_model == "gpt-4o-mini"
    assert got.usage.prompt_tokens == 10 and got.usage.total_tokens == 11
    basic = await stub.GetConversation(
        pb.GetConversationRequest(name=conv.name, view=pb.CONVERSATION_VIEW_BASIC)
    )
    assert len(basic.messages) == 0 and basic.message_count == 2

    one = await stub.GetMessage(pb.GetMessageRequest(name=reply.name))
    assert one.route == "FAST" and one.status == pb.MESSAGE_STATUS_COMPLETE
    edited = await stub.UpdateMessage(
        pb.UpdateMessageRequest(
            message=pb.Message(name=reply.name, content="four", etag=reply.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["content"]),
        )
    )
    assert edited.content == "four" and edited.etag != reply.etag
    await stub.DeleteMessage(pb.DeleteMessageRequest(name=reply.name))
    after = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert after.message_count == 1 and after.usage.total_tokens == 0
    with rpc_error(CODE.NOT_FOUND):
        await stub.GetMessage(pb.GetMessageRequest(name=reply.name))
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.CreateMessage(
            pb.CreateMessageRequest(parent=conv.name, message=pb.Message(content="no role"))
        )
    assert err.violations[0][0] == "message.role"


async def test_message_pages_oldest_first_and_walk_while_appending(stub: Stub) -> None:
    conv = await new_thread(stub)
    for i in range(7):
        await say(stub, conv.name, f"m{i}")
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListMessages(
            pb.ListMessagesRequest(parent=conv.name, page_size=3, page_token=token)
        )
        seen += [m.content for m in page.messages]
        await say(stub, conv.name, f"late{len(seen)}")  # inserts while paging
        token = page.next_page_token
        if not token:
            break
    assert seen[:7] == [f"m{i}" for i in range(7)]
    assert len(seen) == len(set(seen))  # nothing repeated
    newest = await stub.ListMessages(
        pb.ListMessagesRequest(parent=conv.name, page_size=1, order_by="create_time desc")
    )
    assert newest.messages[0].content.startswith("late")


async def test_conversation_list_walk_no_loss_no_repeat_with_inserts(stub: Stub) -> None:
    names = [(await new_thread(stub, f"t{i}")).name for i in range(12)]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListConversations(
            pb.ListConversationsRequest(page_size=5, page_token=token)
        )
        seen += [c.name for c in page.conversations]
        await new_thread(stub, "inserted meanwhile")  # newer: sorts before the cursor
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(names)
    assert seen == list(reversed(names))  # newest-updated first
    assert all(not c.messages for c in page.conversations)  # metadata only

    oldest = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=1, order_by="create_time")
    )
    assert oldest.conversations[0].name == names[0]
    with rpc_error(CODE.INVALID_ARGUMENT) as err:  # a token belongs to its query
        await stub.ListConversations(
            pb.ListConversationsRequest(
                page_size=5,
                page_token=page.next_page_token
                or (
                    await stub.ListConversations(pb.ListConversationsRequest(page_size=1))
                ).next_page_token,
                order_by="create_time",
            )
        )
    assert err.violations[0][0] == "page_token"


async def test_list_filters(stub: Stub, channel: grpc.aio.Channel) -> None:
    await spaces_pb2_grpc.SpaceServiceStub(channel).CreateSpace(
        spaces_pb2.CreateSpaceRequest(space=spaces_pb2.Space(display_name="Work"), space_id="work")
    )
    a = await new_thread(stub, "a", pinned=True, space="spaces/work")
    b = await new_thread(stub, "b", archived=True)
    c = await new_thread(stub, "c")

    async def names(filter: str) -> set[str]:
        resp = await stub.ListConversations(pb.ListConversationsRequest(filter=filter))
        return {x.name for x in resp.conversations}

    assert await names("") == {a.name, c.name}  # archived hidden unless asked
    assert await names("archived = true") == {b.name}
    assert await names("pinned = true") == {a.name}
    assert await names('space = "spaces/work"') == {a.name}
    assert await names(f'create_time >= "{_rfc3339(c)}"') == {c.name}
    assert await names('update_time < "2000-01-01T00:00:00Z"') == set()
    for bad, field_hint in [
        ("colour = red", "unknown field"),
        ("pinned = maybe", "true or false"),
        ('create_time > "yesterday"', "RFC 3339"),
        ("pinned = true OR archived = true", "AND"),
        ("pinned >", "field operator value"),
    ]:
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await stub.ListConversations(pb.ListConversationsRequest(filter=bad))
        assert err.violations[0][0] == "filter" and field_hint in err.message, err.message


def _rfc3339(conv: pb.Conversation) -> str:
    return conv.create_time.ToJsonString()


async def test_search_words_phrases_prefix_filters_and_consistency(stub: Stub) -> None:
    rust = await new_thread(stub, "Rust lifetimes")
    cook = await new_thread(stub, "Cooking")
    await say(stub, rust.name, "How do lifetimes work with borrowed references?")
    answer = await say(
        stub, rust.name, "A borrowed reference cannot outlive its owner.", role=pb.ROLE_ASSISTANT
    )
    await say(stub, cook.name, "How long do I boil an egg?")

    async def search(query: str, **kw: object) -> list[pb.SearchResult]:
        resp = await stub.SearchMessages(
            pb.SearchMessagesRequest(parent=kw.pop("parent", "conversations/-"), query=query, **kw)  # type: ignore[arg-type]
        )
        return list(resp.results)

    hits = await search("borrowed")
    assert {h.message.name for h in hits} >= {answer.name}
    assert all("[borrowed]" in h.snippet.lower() for h in hits)
    assert hits[0].score > 0 and hits[0].conversation == rust.name
    assert hits[0].conversation_title == "Rust lifetimes"
    assert [h.message.content for h in await search('"cannot outlive"')] == [answer.content]
    assert len(await search("bor*")) == 2
    assert len(await search("how")) == 2
    assert [
        h.message.content for h in await search("how", filter="role = ROLE_USER", parent=cook.name)
    ] == ["How long do I boil an egg?"]
    assert await search("borrowed", filter="role = ROLE_SYSTEM") == []
    assert len(await search("cooking")) == 1  # the thread title is searched too
    by_time = await search("how", order_by="create_time desc")
    assert by_time[0].message.content.startswith("How long") and by_time[0].score == 0

    # the index follows edits and deletes
    await stub.UpdateMessage(
        pb.UpdateMessageRequest(
            message=pb.Message(name=answer.name, content="Owners outlive references."),
            update_mask=field_mask_pb2.FieldMask(paths=["content"]),
        )
    )
    assert [h.message.name for h in await search("outlive")] == [answer.name]
    assert await search('"cannot outlive"') == []
    await stub.DeleteMessage(pb.DeleteMessageRequest(name=answer.name))
    assert await search("outlive") == []
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=cook.name, title="Eggs"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        )
    )
    assert await search("cooking") == [] and len(await search("eggs")) == 1
    await stub.DeleteConversation(pb.DeleteConversationRequest(name=cook.name))
    assert await search("egg*") == []

    for bad in ['"unbalanced', "AND", "nosuchcolumn: x"]:
        with rpc_error(CODE.INVALID_ARGUMENT) as err:
            await search(bad)
        assert err.violations[0][0] == "query", err.message
    with rpc_error(CODE.NOT_FOUND):
        await search("x", parent="conversations/nope")


async def test_search_pages_are_stable(stub: Stub) -> None:
    conv = await new_thread(stub)
    for i in range(9):
        await say(stub, conv.name, f"apple number {i} " + "apple " * (i % 3))
    for order in ("relevance", "create_time desc"):
        seen: list[str] = []
        token = ""
        while True:
            resp = await stub.SearchMessages(
                pb.SearchMessagesRequest(
                    parent="conversations/-",
                    query="apple",
                    page_size=4,
                    page_token=token,
                    order_by=order,
                )
            )
            seen += [r.message.name for r in resp.results]
            await say(stub, conv.name, "apple inserted later")
            token = resp.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)), order
        if order == "relevance":
            assert len(seen) == 9  # the snapshot excludes later inserts


async def test_limits_and_bad_input(stub: Stub) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_thread(stub, "x" * 513)
    assert err.violations == [("conversation.title", "is longer than 512 characters")]
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await new_thread(stub, metadata={f"k{i}": "v" for i in range(65)})
    assert err.violations[0][0] == "conversation.metadata"
    conv = await new_thread(stub)
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await say(stub, conv.name, "x" * (1024 * 1024 + 1))
    assert err.violations[0][0] == "message.content"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.ListConversations(pb.ListConversationsRequest(page_size=-1))
    assert err.violations[0][0] == "page_size"
    big = await stub.ListConversations(pb.ListConversationsRequest(page_size=5000))
    assert len(big.conversations) == 1  # capped, not refused
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.GetConversation(pb.GetConversationRequest(name="threads/x"))
    assert "conversations/{id}" in err.message
    with rpc_error(CODE.INVALID_ARGUMENT):
        await stub.ListConversations(pb.ListConversationsRequest(page_token="garbage!"))
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.UpdateConversation(pb.UpdateConversationRequest(conversation=conv))
    assert err.violations[0][0] == "update_mask"
    with rpc_error(CODE.NOT_FOUND):
        await stub.DeleteConversation(pb.DeleteConversationRequest(name="conversations/nope"))
    # SQL-looking input is data, never SQL
    odd = await new_thread(stub, "'); DROP TABLE messages; --")
    assert (await stub.GetConversation(pb.GetConversationRequest(name=odd.name))).title.startswith(
        "');"
    )


async def test_export_then_import_elsewhere_and_twice_no_duplicates(stub: Stub) -> None:
    conv = await new_thread(stub, "Keep me", metadata={"k": "v"})
    await say(stub, conv.name, "héllo 👋")
    await say(
        stub,
        conv.name,
        "partial",
        role=pb.ROLE_ASSISTANT,
        status=pb.MESSAGE_STATUS_INCOMPLETE,
        incomplete_reason="cancelled",
        model="m1",
    )
    events = [e async for e in stub.ExportConversations(pb.ExportConversationsRequest())]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].summary.conversation_count == 1 and events[-1].summary.message_count == 2
    document = b"".join(e.data for e in events if e.WhichOneof("event") == "data")
    parsed = json.loads(document)
    assert parsed["format"] == "byok.conversations" and parsed["version"] == 1

    # importing into the server that exported it: nothing new
    again = await stub.ImportConversations(pb.ImportConversationsRequest(data=document))
    assert (again.created_count, again.skipped_count, again.failed_count) == (0, 1, 0)

    await stub.DeleteConversation(pb.DeleteConversationRequest(name=conv.name))
    first = await stub.ImportConversations(pb.ImportConversationsRequest(data=document))
    assert (first.created_count, first.skipped_count) == (1, 0)
    assert list(first.conversations) == [conv.name]  # the original id comes back
    twice = await stub.ImportConversations(pb.ImportConversationsRequest(data=document))
    assert (twice.created_count, twice.skipped_count) == (0, 1)
    restored = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert [m.content for m in restored.messages] == ["héllo 👋", "partial"]
    assert restored.messages[1].status == pb.MESSAGE_STATUS_INCOMPLETE
    assert restored.last_model == "m1" and restored.metadata["k"] == "v"
    with rpc_error(CODE.NOT_FOUND):
        async for _ in stub.ExportConversations(
            pb.ExportConversationsRequest(names=["conversations/nope"])
        ):
            pass


CHATGPT = [
    {
        "id": "cg-1",
        "title": "Egg timing",
        "create_time": 1700000000.0,
        "update_time": 1700000100.0,
        "current_node": "n3",
        "mapping": {
            "n0": {"id": "n0", "message": None, "parent": None, "children": ["n1"]},
            "n1": {
                "id": "n1",
                "parent": "n0",
                "children": ["n2"],
                "message": {
                    "id": "n1",
                    "author": {"role": "user"},
                    "create_time": 1700000001.0,
                    "content": {"content_type": "text", "parts": ["How long to boil an egg?"]},
                },
            },
            "n2": {
                "id": "n2",
                "parent": "n1",
                "children": ["n3"],
                "message": {
                    "id": "n2",
                    "author": {"role": "assistant"},
                    "create_time": 1700000002.0,
                    "metadata": {"model_slug": "gpt-4o"},
                    "content": {"content_type": "text", "parts": ["About 7 minutes."]},
                },
            },
            "n3": {
                "id": "n3",
                "parent": "n2",
                "children": [],
                "message": {
                    "id": "n3",
                    "author": {"role": "user"},
                    "create_time": 1700000003.0,
                    "content": {"content_type": "text", "parts": ["Thanks!"]},
                },
            },
        },
    }
]


async def test_import_chatgpt_twice_and_malformed_imports_nothing(stub: Stub) -> None:
    data = json.dumps(CHATGPT).encode()
    first = await stub.ImportConversations(pb.ImportConversationsRequest(data=data))
    assert (first.created_count, first.skipped_count, first.failed_count) == (1, 0, 0)
    second = await stub.ImportConversations(
        pb.ImportConversationsRequest(data=data, format=pb.IMPORT_FORMAT_CHATGPT)
    )
    assert (second.created_count, second.skipped_count) == (0, 1)
    conv = await stub.GetConversation(pb.GetConversationRequest(name=first.conversations[0]))
    assert conv.title == "Egg timing" and conv.last_model == "gpt-4o"
    assert [m.content for m in conv.messages] == [
        "How long to boil an egg?",
        "About 7 minutes.",
        "Thanks!",
    ]
    assert conv.create_time.seconds == 1700000000
    hits = await stub.SearchMessages(
        pb.SearchMessagesRequest(parent="conversations/-", query="boil")
    )
    assert len(hits.results) == 1

    bad = json.loads(data)
    bad.append(json.loads(json.dumps(CHATGPT[0])) | {"id": "cg-2"})
    bad[1]["mapping"]["n2"]["message"]["author"]["role"] = "robot"
    with rpc_error(CODE.INVALID_ARGUMENT) as err:
        await stub.ImportConversations(pb.ImportConversationsRequest(data=json.dumps(bad).encode()))
    assert "[1]" in err.message and "robot" in err.message
    listed = await stub.ListConversations(pb.ListConversationsRequest())
    assert len(listed.conversations) == 1  # nothing half-imported
    with rpc_error(CODE.INVALID_ARGUMENT):
        await stub.ImportConversations(pb.ImportConversationsRequest(data=b"not json"))


async def test_concurrent_appends_keep_every_message(stub: Stub) -> None:
    conv = await new_thread(stub)
    await asyncio.gather(*(say(stub, conv.name, f"c{i}") for i in range(40)))
    got = await stub.GetConversation(pb.GetConversationRequest(name=conv.name))
    assert got.message_count == 40 and sorted(m.content for m in got.messages) == sorted(
        f"c{i}" for i in range(40)
    )
