from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from byok.server.conversations.exchange import (
    FORMAT,
    FORMAT_VERSION,
    MAX_CONTENT_BYTES,
    MAX_TITLE_CHARS,
    ExportStats,
    ImportedConversation,
    ImportedMessage,
    detect_format,
    export_chunks,
    format_time,
    parse_import,
    parse_time,
)
from byok.server.conversations.model import Conversation, Message, MessageStatus, Role, Usage
from byok.server.errors import FieldViolation, InvalidArgument

T0 = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z


async def _aiter(items: Iterable[Conversation]) -> AsyncIterator[Conversation]:
    for item in items:
        yield item


async def _export(
    conversations: list[Conversation], stats: ExportStats | None = None
) -> list[bytes]:
    return [chunk async for chunk in export_chunks(_aiter(conversations), T0, stats)]


def _sample_conversations() -> list[Conversation]:
    first = Conversation(
        id="0196a3f2-7c1e-7a00-8b00-00000000abcd",
        title='Füße, 日本語 & emoji 🚀 "quoted" \\ back\nslash',
        metadata={"project": "αβγ", "empty": ""},
        space_id="s1",
        pinned=True,
        archived=False,
        last_model="gpt-4o-mini",
        create_time_us=T0,
        update_time_us=T0 + 5_000_001,
    )
    first.messages = [
        Message(
            id="m1",
            conversation_id=first.id,
            role=Role.SYSTEM,
            content="Be terse.",
            create_time_us=T0,
        ),
        Message(
            id="m2",
            conversation_id=first.id,
            role=Role.USER,
            content="Привет! مرحبا \u0000 nul and \t tab",
            metadata={"client": "cli"},
            create_time_us=T0 + 1,
        ),
        Message(
            id="m3",
            conversation_id=first.id,
            role=Role.ASSISTANT,
            content="Partial answer… 🙂",
            status=MessageStatus.INCOMPLETE,
            incomplete_reason="upstream_error: 502 Bad Gateway",
            model="gpt-4o-mini",
            route="openai-main",
            usage=Usage(prompt_tokens=12, completion_tokens=34),
            latency_us=1_234_567,
            ttft_us=89_001,
            finish_reason="",
            create_time_us=T0 + 2,
        ),
        Message(
            id="m4",
            conversation_id=first.id,
            role=Role.TOOL,
            content='{"result": 42}',
            create_time_us=T0 + 3,
        ),
        Message(
            id="m5",
            conversation_id=first.id,
            role=Role.ASSISTANT,
            content="42.",
            model="claude-x",
            route="anthropic",
            usage=Usage(prompt_tokens=100, completion_tokens=2),
            latency_us=333,
            ttft_us=1,
            finish_reason="stop",
            create_time_us=T0 + 5_000_001,
        ),
    ]
    second = Conversation(id="plain", archived=True, create_time_us=0, update_time_us=0)
    second.messages = []
    return [first, second]


def _expected_message(m: Message) -> ImportedMessage:
    return ImportedMessage(
        role=m.role,
        content=m.content,
        status=m.status,
        incomplete_reason=m.incomplete_reason,
        model=m.model,
        route=m.route,
        usage=m.usage,
        latency_us=m.latency_us,
        ttft_us=m.ttft_us,
        finish_reason=m.finish_reason,
        metadata=m.metadata,
        create_time_us=m.create_time_us,
        source_id=m.id,
    )


# --- export ------------------------------------------------------------------------------


async def test_export_slices_form_one_json_document_with_the_documented_header() -> None:
    stats = ExportStats()
    chunks = await _export(_sample_conversations(), stats)

    assert len(chunks) == 4  # header, two conversations, close
    assert chunks[0] == (
        b'{"format": "byok.conversations", "version": 1, '
        b'"exported_at": "2026-01-01T00:00:00.123456Z", "conversations": ['
    )
    assert not chunks[1].startswith(b",")
    assert chunks[2].startswith(b",")
    assert chunks[3] == b"]}"
    doc = json.loads(b"".join(chunks).decode("utf-8"))
    assert doc["format"] == FORMAT == "byok.conversations"
    assert doc["version"] == FORMAT_VERSION == 1
    assert [c["id"] for c in doc["conversations"]] == [
        "0196a3f2-7c1e-7a00-8b00-00000000abcd",
        "plain",
    ]
    assert (stats.conversation_count, stats.message_count, stats.format_version) == (2, 5, 1)


async def test_export_writes_every_field_and_utf8_text() -> None:
    body = b"".join(await _export(_sample_conversations()))
    assert "日本語 & emoji 🚀".encode() in body  # not \u escaped
    conv = json.loads(body)["conversations"][0]
    assert list(conv) == [
        "id",
        "name",
        "title",
        "metadata",
        "space",
        "pinned",
        "archived",
        "last_model",
        "create_time",
        "update_time",
        "messages",
    ]
    assert conv["name"] == "conversations/0196a3f2-7c1e-7a00-8b00-00000000abcd"
    assert conv["space"] == "spaces/s1"
    assert conv["update_time"] == "2026-01-01T00:00:05.123457Z"
    assert conv["messages"][2] == {
        "id": "m3",
        "role": "assistant",
        "content": "Partial answer… 🙂",
        "status": "incomplete",
        "incomplete_reason": "upstream_error: 502 Bad Gateway",
        "model": "gpt-4o-mini",
        "route": "openai-main",
        "usage": {"prompt_tokens": 12, "completion_tokens": 34},
        "latency_ms": 1234.567,
        "time_to_first_token_ms": 89.001,
        "finish_reason": "",
        "metadata": {},
        "create_time": "2026-01-01T00:00:00.123458Z",
    }
    other = json.loads(body)["conversations"][1]
    assert other["space"] == ""
    assert other["create_time"] == "1970-01-01T00:00:00.000000Z"
    assert other["messages"] == []


async def test_empty_export_is_a_valid_document() -> None:
    stats = ExportStats()
    doc = json.loads(b"".join(await _export([], stats)))
    assert doc["conversations"] == []
    assert (stats.conversation_count, stats.message_count) == (0, 0)
    assert parse_import(b"".join(await _export([]))) == []


async def test_export_refuses_a_conversation_without_its_messages() -> None:
    with pytest.raises(ValueError, match="without its messages"):
        await _export([Conversation(id="c")])


async def test_export_escapes_an_unpaired_surrogate_instead_of_failing() -> None:
    conv = Conversation(id="c", title="bad \ud800 title")
    conv.messages = []
    body = b"".join(await _export([conv]))
    body.decode("utf-8")  # still valid UTF-8
    assert json.loads(body)["conversations"][0]["title"] == "bad \ud800 title"


# --- byok round trip -----------------------------------------------------------------------


async def test_round_trip_preserves_every_field() -> None:
    conversations = _sample_conversations()
    imported = parse_import(b"".join(await _export(conversations)))

    expected = [
        ImportedConversation(
            index=i,
            source_key=f"byok:{c.id}",
            preferred_id=c.id,
            title=c.title,
            metadata=c.metadata,
            pinned=c.pinned,
            archived=c.archived,
            create_time_us=c.create_time_us,
            update_time_us=c.update_time_us,
            messages=[_expected_message(m) for m in c.messages or []],
        )
        for i, c in enumerate(conversations)
    ]
    assert imported == expected
    assert imported[0].messages[2].status is MessageStatus.INCOMPLETE
    assert imported[0].source_id == "0196a3f2-7c1e-7a00-8b00-00000000abcd"
    assert parse_import(b"".join(await _export(conversations)), "byok") == expected


def test_minimal_hand_written_byok_document_gets_defaults() -> None:
    doc = {
        "format": FORMAT,
        "version": 1,
        "conversations": [
            {"id": "c1", "messages": [{"role": "user", "content": "hi", "status": None}]}
        ],
    }
    [conv] = parse_import(json.dumps(doc).encode())
    assert conv == ImportedConversation(
        index=0,
        source_key="byok:c1",
        preferred_id="c1",
        title="",
        metadata={},
        pinned=False,
        archived=False,
        create_time_us=0,
        update_time_us=0,
        messages=[
            ImportedMessage(
                role=Role.USER,
                content="hi",
                status=MessageStatus.COMPLETE,
                incomplete_reason="",
                model="",
                route="",
                usage=Usage(),
                latency_us=0,
                ttft_us=0,
                finish_reason="",
                metadata={},
                create_time_us=0,
            )
        ],
    )


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.5Z", 500_000),
        ("1970-01-01t00:00:01.123456789z", 1_123_456),
        ("1970-01-01T02:00:00+02:00", 0),
        ("1969-12-31T23:00:00-01:00", 0),
        ("2026-01-01T00:00:00.123456Z", T0),
    ],
)
def test_parse_time_accepts_rfc3339(text: str, us: int) -> None:
    assert parse_time(text) == us


@pytest.mark.parametrize("us", [0, 1, T0, 253_402_300_799_999_999])
def test_format_time_round_trips(us: int) -> None:
    assert parse_time(format_time(us)) == us


# --- ChatGPT -------------------------------------------------------------------------------

# A realistic conversations.json: the first conversation has a user edit (the root's user
# message has two children; current_node follows the edited branch); the second has a
# hidden system message, custom instructions, an image part and a tool call.
CHATGPT: list[dict[str, Any]] = [
    {
        "title": "Trip to Lisbon",
        "create_time": 1700000000.25,
        "update_time": 1700000600.5,
        "mapping": {
            "root": {"id": "root", "message": None, "parent": None, "children": ["sys"]},
            "sys": {
                "id": "sys",
                "message": {
                    "id": "sys",
                    "author": {"role": "system", "name": None, "metadata": {}},
                    "create_time": None,
                    "update_time": None,
                    "content": {"content_type": "text", "parts": [""]},
                    "status": "finished_successfully",
                    "end_turn": True,
                    "weight": 0.0,
                    "metadata": {"is_visually_hidden_from_conversation": True},
                    "recipient": "all",
                },
                "parent": "root",
                "children": ["u1", "u1-edit"],
            },
            "u1": {
                "id": "u1",
                "message": {
                    "id": "u1",
                    "author": {"role": "user", "name": None, "metadata": {}},
                    "create_time": 1700000010.0,
                    "content": {"content_type": "text", "parts": ["Plan 3 days in Lisbn"]},
                    "status": "finished_successfully",
                    "end_turn": None,
                    "metadata": {},
                },
                "parent": "sys",
                "children": ["a1"],
            },
            "a1": {
                "id": "a1",
                "message": {
                    "id": "a1",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1700000020.0,
                    "content": {"content_type": "text", "parts": ["Did you mean Lisbon?"]},
                    "status": "finished_successfully",
                    "end_turn": True,
                    "metadata": {"model_slug": "gpt-4"},
                },
                "parent": "u1",
                "children": [],
            },
            "u1-edit": {
                "id": "u1-edit",
                "message": {
                    "id": "u1-edit",
                    "author": {"role": "user", "name": None, "metadata": {}},
                    "create_time": 1700000100.5,
                    "content": {"content_type": "text", "parts": ["Plan 3 days in Lisbon 🇵🇹"]},
                    "status": "finished_successfully",
                    "metadata": {},
                },
                "parent": "sys",
                "children": ["a2"],
            },
            "a2": {
                "id": "a2",
                "message": {
                    "id": "a2",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1700000110.0,
                    "content": {
                        "content_type": "text",
                        "parts": ["Day 1: Alfama.", "Day 2: Belém.", "Day 3: Sintra."],
                    },
                    "status": "finished_successfully",
                    "end_turn": True,
                    "metadata": {
                        "model_slug": "gpt-4o",
                        "finish_details": {"type": "stop", "stop_tokens": [200002]},
                    },
                },
                "parent": "u1-edit",
                "children": [],
            },
        },
        "moderation_results": [],
        "current_node": "a2",
        "plugin_ids": None,
        "conversation_id": "11111111-aaaa-bbbb-cccc-000000000001",
        "default_model_slug": "gpt-4o",
        "id": "11111111-aaaa-bbbb-cccc-000000000001",
    },
    {
        "title": None,
        "create_time": 1710000000.0,
        "update_time": None,
        "mapping": {
            "n0": {"id": "n0", "message": None, "parent": None, "children": ["n1"]},
            "n1": {
                "id": "n1",
                "message": {
                    "id": "n1",
                    "author": {"role": "user"},
                    "create_time": None,
                    "content": {
                        "content_type": "user_editable_context",
                        "user_profile": "I am a chef.",
                        "user_instructions": "",
                    },
                    "status": "finished_successfully",
                    "metadata": {"is_visually_hidden_from_conversation": True},
                },
                "parent": "n0",
                "children": ["n2"],
            },
            "n2": {
                "id": "n2",
                "message": {
                    "id": "n2",
                    "author": {"role": "user"},
                    "create_time": 1710000005.0,
                    "content": {
                        "content_type": "multimodal_text",
                        "parts": [
                            {
                                "content_type": "image_asset_pointer",
                                "asset_pointer": "file-service://file-abc",
                                "size_bytes": 123456,
                                "width": 1024,
                                "height": 768,
                            },
                            "What dish is this?",
                        ],
                    },
                    "status": "finished_successfully",
                    "metadata": {"attachments": [{"id": "file-abc", "name": "dish.jpg"}]},
                },
                "parent": "n1",
                "children": ["n3"],
            },
            "n3": {
                "id": "n3",
                "message": {
                    "id": "n3",
                    "author": {"role": "assistant"},
                    "create_time": 1710000006.0,
                    "content": {"content_type": "code", "language": "unknown", "text": "search()"},
                    "status": "finished_successfully",
                    "metadata": {},
                    "recipient": "browser",
                },
                "parent": "n2",
                "children": ["n4"],
            },
            "n4": {
                "id": "n4",
                "message": {
                    "id": "n4",
                    "author": {"role": "tool", "name": "browser"},
                    "create_time": 1710000007.0,
                    "content": {"content_type": "text", "parts": ["Paella is ..."]},
                    "status": "finished_successfully",
                    "metadata": {},
                },
                "parent": "n3",
                "children": ["n5"],
            },
            "n5": {
                "id": "n5",
                "message": {
                    "id": "n5",
                    "author": {"role": "assistant"},
                    "create_time": None,
                    "content": {"content_type": "text", "parts": ["It looks like paella."]},
                    "status": "in_progress",
                    "metadata": {"finish_details": {"type": "interrupted"}},
                },
                "parent": "n4",
                "children": ["n6"],
            },
            "n6": {
                "id": "n6",
                "message": {
                    "id": "n6",
                    "author": {"role": "assistant"},
                    "create_time": 1710000009.0,
                    "content": {"content_type": "text", "parts": ["   "]},
                    "status": "finished_successfully",
                    "metadata": {},
                },
                "parent": "n5",
                "children": [],
            },
        },
        "current_node": "n6",
        "conversation_id": "22222222-aaaa-bbbb-cccc-000000000002",
        "default_model_slug": "gpt-4o-mini",
        "is_archived": True,
    },
]


def _msg(role: Role, content: str, time_us: int, source_id: str, **kw: Any) -> ImportedMessage:
    fields: dict[str, Any] = {
        "status": MessageStatus.COMPLETE,
        "incomplete_reason": "",
        "model": "",
        "route": "",
        "usage": Usage(),
        "latency_us": 0,
        "ttft_us": 0,
        "finish_reason": "",
        "metadata": {},
    }
    fields.update(kw)
    return ImportedMessage(
        role=role, content=content, create_time_us=time_us, source_id=source_id, **fields
    )


def test_chatgpt_conversations_parse_to_the_visible_thread() -> None:
    imported = parse_import(json.dumps(CHATGPT).encode())

    assert imported == [
        ImportedConversation(
            index=0,
            source_key="chatgpt:11111111-aaaa-bbbb-cccc-000000000001",
            preferred_id=None,
            title="Trip to Lisbon",
            metadata={},
            pinned=False,
            archived=False,
            create_time_us=1_700_000_000_250_000,
            update_time_us=1_700_000_600_500_000,
            messages=[
                _msg(Role.USER, "Plan 3 days in Lisbon 🇵🇹", 1_700_000_100_500_000, "u1-edit"),
                _msg(
                    Role.ASSISTANT,
                    "Day 1: Alfama.\nDay 2: Belém.\nDay 3: Sintra.",
                    1_700_000_110_000_000,
                    "a2",
                    model="gpt-4o",
                    finish_reason="stop",
                ),
            ],
        ),
        ImportedConversation(
            index=1,
            source_key="chatgpt:22222222-aaaa-bbbb-cccc-000000000002",
            preferred_id=None,
            title="Untitled",
            metadata={},
            pinned=False,
            archived=True,
            create_time_us=1_710_000_000_000_000,
            update_time_us=1_710_000_000_000_000,
            messages=[
                _msg(
                    Role.USER,
                    "What dish is this?",
                    1_710_000_005_000_000,
                    "n2",
                    metadata={"dropped_parts": "1"},
                ),
                _msg(Role.ASSISTANT, "search()", 1_710_000_006_000_000, "n3", model="gpt-4o-mini"),
                _msg(Role.TOOL, "Paella is ...", 1_710_000_007_000_000, "n4"),
                _msg(
                    Role.ASSISTANT,
                    "It looks like paella.",
                    1_710_000_000_000_000,  # no create_time: the conversation's
                    "n5",
                    model="gpt-4o-mini",
                    status=MessageStatus.INCOMPLETE,
                    incomplete_reason="cancelled",
                    finish_reason="interrupted",
                ),
            ],
        ),
    ]
    assert imported[1].source_id == "22222222-aaaa-bbbb-cccc-000000000002"
    assert parse_import(json.dumps(CHATGPT).encode(), "chatgpt") == imported


def test_chatgpt_long_title_is_truncated_not_refused() -> None:
    doc = json.loads(json.dumps(CHATGPT[:1]))
    doc[0]["title"] = "x" * 600
    [conv] = parse_import(json.dumps(doc).encode())
    assert len(conv.title) == MAX_TITLE_CHARS
    assert conv.title.endswith("…")


def test_chatgpt_without_create_times_uses_zero() -> None:
    doc = json.loads(json.dumps(CHATGPT[1:]))
    doc[0]["create_time"] = None
    [conv] = parse_import(json.dumps(doc).encode())
    assert conv.create_time_us == conv.update_time_us == 0
    assert conv.messages[3].create_time_us == 0


def test_chatgpt_voice_transcripts_are_kept() -> None:
    doc = json.loads(json.dumps(CHATGPT[:1]))
    content = doc[0]["mapping"]["u1-edit"]["message"]["content"]
    content["parts"] = [
        {"content_type": "audio_transcription", "text": "Plan three days"},
        {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://x"},
    ]
    [conv] = parse_import(json.dumps(doc).encode())
    assert conv.messages[0].content == "Plan three days"
    assert conv.messages[0].metadata == {"dropped_parts": "1"}


# --- detection -----------------------------------------------------------------------------


async def test_detect_format() -> None:
    byok_doc = json.loads(b"".join(await _export(_sample_conversations())))
    assert detect_format(byok_doc) == "byok"
    assert detect_format(CHATGPT) == "chatgpt"
    assert detect_format([]) == "chatgpt"
    for doc in [{"conversations": []}, "text", 3, None]:
        with pytest.raises(InvalidArgument, match="neither a byok export"):
            detect_format(doc)
    with pytest.raises(InvalidArgument, match='"other" is not a known format'):
        detect_format({"format": "other"})


async def test_explicit_format_must_match_the_content() -> None:
    with pytest.raises(InvalidArgument, match="must be a byok export document"):
        parse_import(json.dumps(CHATGPT).encode(), "byok")
    with pytest.raises(InvalidArgument, match=r"must be a ChatGPT conversations.json"):
        parse_import(b"".join(await _export([])), "chatgpt")


# --- malformed input -------------------------------------------------------------------------


def _byok(*conversations: dict[str, Any], version: int = 1) -> bytes:
    doc = {"format": FORMAT, "version": version, "conversations": list(conversations)}
    return json.dumps(doc).encode()


def _conv(cid: str, *messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": cid, "title": "t", "messages": list(messages), **fields}


def _refusal(data: bytes, fmt: Any = "auto") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_import(data, fmt)
    return info.value


def test_bad_role_names_the_first_bad_record_precisely() -> None:
    ok = {"role": "user", "content": "hi"}
    data = _byok(
        _conv("a", ok),
        _conv("b", ok),
        _conv("c", ok),
        _conv("abc", *[ok] * 7, {"role": "robot", "content": "x"}),
        _conv("later", {"role": "alien", "content": "x"}),
    )
    err = _refusal(data)
    assert err.message == (
        'conversations[3] (id "abc"): messages[7].role: '
        '"robot" is not one of system, user, assistant, tool'
    )
    assert err.violations == [
        FieldViolation(
            field="data.conversations[3].messages[7].role",
            description='"robot" is not one of system, user, assistant, tool',
        )
    ]
    assert err.reason == "MALFORMED_IMPORT"
    assert err.metadata == {"record": "3", "source_id": "abc"}
    assert err.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "data: is empty"),
        (b"{not json", "data: is not JSON: Expecting property name"),
        (b"\xff\xfe[]", "data: is not UTF-8 (invalid byte at offset 0)"),
        (b"[NaN]", "data: is not acceptable JSON: NaN is not valid JSON"),
        (b'"just a string"', "data: is a string that is neither a byok export"),
        (b"42", "data: is a number that is neither a byok export"),
        (b'{"conversations": []}', "data: is an object that is neither a byok export"),
        (
            b'{"format": "byok.conversations", "version": 2, "conversations": []}',
            "data.version: version 2 is not supported; this server reads version 1",
        ),
        (
            b'{"format": "byok.conversations", "version": "1", "conversations": []}',
            'data.version: must be a positive integer, got "1"',
        ),
        (
            b'{"format": "byok.conversations", "version": 1, "conversations": {}}',
            "data.conversations: must be an array, got an object",
        ),
        (
            b'{"format": "byok.conversations", "version": 1, "exported_at": "yesterday",'
            b' "conversations": []}',
            'data.exported_at: "yesterday" is not an RFC 3339 timestamp',
        ),
    ],
)
def test_unreadable_files_are_refused_clearly(data: bytes, message: str) -> None:
    err = _refusal(data)
    assert err.message.startswith(message), err.message
    assert len(err.violations) == 1


def test_unsupported_version_has_its_own_reason() -> None:
    err = _refusal(_byok(version=2))
    assert err.reason == "UNSUPPORTED_IMPORT_VERSION"
    assert err.violations[0].field == "data.version"


def test_utf8_bom_is_accepted() -> None:
    assert parse_import(b"\xef\xbb\xbf" + _byok(_conv("a"))) != []


BIG = "é" * (MAX_CONTENT_BYTES // 2 + 1)  # fewer than 1 Mi characters, over 1 MiB of UTF-8


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ({"title": "no id", "messages": []}, "conversations[1]: id: missing"),
        (_conv("Bad_ID"), 'id: "Bad_ID" is not 1-63 lowercase letters, digits or hyphens'),
        (_conv("c", {"role": "user"}), "messages[0].content: missing"),
        (_conv("c", {"content": "x"}), "messages[0].role: missing"),
        (_conv("c", {"role": "user", "content": 5}), "messages[0].content: must be a string"),
        (
            _conv("c", {"role": "user", "content": "x", "status": "done"}),
            'messages[0].status: "done" is not one of complete, incomplete',
        ),
        (
            _conv("c", {"role": "user", "content": BIG}),
            f"messages[0].content: is {len(BIG.encode())} bytes of UTF-8; at most 1048576",
        ),
        (_conv("c", title="x" * 513), "title: has 513 characters; at most 512"),
        (
            _conv("c", metadata={f"k{i}": "v" for i in range(65)}),
            "metadata: has 65 entries; at most 64",
        ),
        (_conv("c", metadata={"k" * 129: "v"}), "key has 129 characters; at most 128"),
        (_conv("c", metadata={"k": "v" * 4097}), 'metadata["k"]: value has 4097 characters'),
        (_conv("c", metadata={"k": 1}), 'metadata["k"]: must be a string, got a number'),
        (_conv("c", pinned="yes"), 'pinned: must be true or false, got "yes"'),
        (_conv("c", create_time="2026-13-01T00:00:00Z"), "create_time: "),
        (_conv("c", create_time=1700000000), "create_time: must be an RFC 3339 timestamp"),
        (_conv("c", name="conversations/other"), 'name: "conversations/other" does not match'),
        (_conv("c", space="nope"), 'space: "nope" is not "spaces/{id}" or empty'),
        (_conv("c", messages=None), "messages: missing"),
        (
            _conv("c", {"role": "user", "content": "x", "usage": {"prompt_tokens": -1}}),
            "messages[0].usage.prompt_tokens: -1 is out of range",
        ),
        (
            _conv("c", {"role": "user", "content": "x", "latency_ms": "fast"}),
            'messages[0].latency_ms: must be a number of milliseconds, got "fast"',
        ),
        (
            _conv("c", {"role": "user", "content": "bad \ud800"}),
            "messages[0].content: contains an unpaired UTF-16 surrogate",
        ),
    ],
)
def test_malformed_byok_records_are_refused(conversation: Any, message: str) -> None:
    err = _refusal(_byok(_conv("fine"), conversation))
    assert err.message.startswith("conversations[1]"), err.message
    assert message in err.message, err.message
    assert err.metadata["record"] == "1"
    assert err.violations[0].field.startswith("data.conversations[1]")


def test_message_that_is_not_an_object_is_refused() -> None:
    err = _refusal(_byok({"id": "c", "messages": ["hello"]}))
    assert err.message == 'conversations[0] (id "c"): messages[0]: must be an object, got a string'
    assert err.violations[0].field == "data.conversations[0].messages[0]"


def test_duplicate_ids_in_one_file_are_refused() -> None:
    err = _refusal(_byok(_conv("a"), _conv("b"), _conv("a")))
    assert err.message == 'conversations[2] (id "a"): id: "a" repeats conversations[0]'


def _chatgpt_with(edit: Any) -> bytes:
    doc = json.loads(json.dumps(CHATGPT))
    edit(doc)
    return json.dumps(doc).encode()


def _set(doc: Any, path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


_DELETE = object()
_A2 = [1, "mapping", "n2", "message"]


@pytest.mark.parametrize(
    ("path", "value", "message", "field"),
    [
        (
            [*_A2, "author", "role"],
            "robot",
            'mapping["n2"].message.author.role: "robot" is not one of system, user, assistant, '
            "tool",
            'data[1].mapping["n2"].message.author.role',
        ),
        (
            [*_A2, "content"],
            _DELETE,
            'mapping["n2"].message.content: missing',
            'data[1].mapping["n2"].message.content',
        ),
        (
            [*_A2, "content", "parts"],
            "text",
            'mapping["n2"].message.content.parts: must be an array, got a string',
            'data[1].mapping["n2"].message.content.parts',
        ),
        (
            [1, "current_node"],
            "gone",
            'current_node: "gone" is not a node of mapping',
            "data[1].current_node",
        ),
        ([1, "current_node"], None, "current_node: missing", "data[1].current_node"),
        (
            [1, "mapping", "n0", "parent"],
            "n5",
            'mapping["n0"].parent: "n5" makes a cycle',
            'data[1].mapping["n0"].parent',
        ),
        (
            [1, "mapping", "n3", "parent"],
            "missing-node",
            'mapping["n3"].parent: "missing-node" is not a node of mapping',
            'data[1].mapping["n3"].parent',
        ),
        ([1, "mapping"], [], "mapping: must be an object, got an array", "data[1].mapping"),
        (
            [*_A2, "content", "parts"],
            ["x" * (MAX_CONTENT_BYTES + 1)],
            'mapping["n2"].message.content: is 1048577 bytes of UTF-8; at most 1048576 (1 MiB)',
            'data[1].mapping["n2"].message.content',
        ),
        (
            [*_A2, "create_time"],
            "yesterday",
            'mapping["n2"].message.create_time: must be seconds since the epoch',
            'data[1].mapping["n2"].message.create_time',
        ),
        ([1, "title"], 7, "title: must be a string or null, got a number", "data[1].title"),
    ],
)
def test_malformed_chatgpt_records_are_refused(
    path: list[Any], value: Any, message: str, field: str
) -> None:
    err = _refusal(_chatgpt_with(lambda doc: _set(doc, path, value)))
    prefix = 'conversations[1] (id "22222222-aaaa-bbbb-cccc-000000000002"): '
    assert err.message.startswith(prefix + message), err.message
    assert err.violations[0].field == field
    assert err.metadata == {"record": "1", "source_id": "22222222-aaaa-bbbb-cccc-000000000002"}


def test_chatgpt_conversation_without_an_id_is_refused() -> None:
    def edit(doc: Any) -> None:
        del doc[0]["id"]
        del doc[0]["conversation_id"]

    err = _refusal(_chatgpt_with(edit))
    assert err.message == "conversations[0]: conversation_id: missing"
    assert err.metadata == {"record": "0", "source_id": ""}


def test_chatgpt_abandoned_branches_are_not_validated() -> None:
    data = _chatgpt_with(lambda doc: _set(doc, [0, "mapping", "a1", "message", "author"], None))
    assert len(parse_import(data)[0].messages) == 2


def test_chatgpt_non_object_conversation_is_refused() -> None:
    err = _refusal(b'[{"id": "x", "mapping": {"r": {}}, "current_node": "r"}, 5]')
    assert err.message == "conversations[1]: must be an object, got a number"
    assert err.violations[0].field == "data[1]"
