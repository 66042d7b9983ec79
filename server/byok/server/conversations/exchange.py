"""Export and import formats for conversations: plain data, no gRPC, no SQL.

Export writes the versioned byok JSON document (`FORMAT`, `FORMAT_VERSION`) in slices so
a stream can send it without holding the whole file. Import reads that document or
ChatGPT's `conversations.json`, validates the whole file and returns plain records; the
caller decides ids, de-duplicates by `source_key` and stores them. The format is
described in docs/export-format.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, NoReturn

from byok.server.conversations.model import Conversation, Message, MessageStatus, Role, Usage
from byok.server.errors import FieldViolation, InvalidArgument

FORMAT = "byok.conversations"
FORMAT_VERSION = 1

MAX_TITLE_CHARS = 512
MAX_CONTENT_BYTES = 1 << 20
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096

MALFORMED = "MALFORMED_IMPORT"
UNSUPPORTED_VERSION = "UNSUPPORTED_IMPORT_VERSION"

ImportFormat = Literal["byok", "chatgpt"]

_ROLE_NAMES: dict[Role, str] = {
    Role.SYSTEM: "system",
    Role.USER: "user",
    Role.ASSISTANT: "assistant",
    Role.TOOL: "tool",
}
_ROLES: dict[str, Role] = {name: role for role, name in _ROLE_NAMES.items()}
_STATUS_NAMES: dict[MessageStatus, str] = {
    MessageStatus.COMPLETE: "complete",
    MessageStatus.INCOMPLETE: "incomplete",
}
_STATUSES: dict[str, MessageStatus] = {name: status for status, name in _STATUS_NAMES.items()}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MAX_INT64 = (1 << 63) - 1
# Seconds since the epoch of 10000-01-01: RFC 3339 has four-digit years.
_MAX_EPOCH_SECONDS = 253_402_300_800
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHATGPT_TITLE_ELLIPSIS = "\u2026"


# --- times -------------------------------------------------------------------------------


def format_time(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC with six fraction digits and "Z"."""
    t = _EPOCH + timedelta(microseconds=us)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )


def parse_time(text: str) -> int:
    """RFC 3339 (any offset, 0-9 fraction digits) to microseconds since the epoch.

    Digits beyond microseconds are truncated. Raises ValueError on anything else.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        local -= offset if m.group(9) == "+" else -offset
    fraction = int((m.group(7) or "0").ljust(6, "0")[:6])
    return (local - _EPOCH) // _ONE_US + fraction


# --- export ------------------------------------------------------------------------------


@dataclass
class ExportStats:
    """What `export_chunks` has written so far; complete once the generator is exhausted."""

    conversation_count: int = 0
    message_count: int = 0
    format_version: int = FORMAT_VERSION


def _message_json(m: Message) -> dict[str, object]:
    return {
        "id": m.id,
        "role": _ROLE_NAMES[m.role],
        "content": m.content,
        "status": _STATUS_NAMES[m.status],
        "incomplete_reason": m.incomplete_reason,
        "model": m.model,
        "route": m.route,
        "usage": {
            "prompt_tokens": m.usage.prompt_tokens,
            "completion_tokens": m.usage.completion_tokens,
        },
        "latency_ms": m.latency_us / 1000,
        "time_to_first_token_ms": m.ttft_us / 1000,
        "finish_reason": m.finish_reason,
        "metadata": dict(m.metadata),
        "create_time": format_time(m.create_time_us),
    }


def conversation_json(c: Conversation) -> dict[str, object]:
    """One conversation of the byok document, as a JSON-ready dict (messages included)."""
    if c.messages is None:
        raise ValueError(f"conversation {c.id!r} was given without its messages")
    return {
        "id": c.id,
        "name": c.name,
        "title": c.title,
        "metadata": dict(c.metadata),
        "space": f"spaces/{c.space_id}" if c.space_id else "",
        "pinned": c.pinned,
        "archived": c.archived,
        "last_model": c.last_model,
        "create_time": format_time(c.create_time_us),
        "update_time": format_time(c.update_time_us),
        "messages": [_message_json(m) for m in c.messages],
    }


def _dump(value: object) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        # An unpaired surrogate has no UTF-8 form; \u escapes keep the document valid.
        return json.dumps(value, ensure_ascii=True, allow_nan=False).encode("ascii")


async def export_chunks(
    conversations: AsyncIterable[Conversation],
    exported_at_us: int,
    stats: ExportStats | None = None,
) -> AsyncIterator[bytes]:
    """Yields the UTF-8 bytes of one byok JSON document in slices.

    The header slice, one slice per conversation (from the second on with a leading
    comma), then the closing slice: their concatenation is the document. Each conversation
    must have `messages` set, oldest first. `stats`, when given, counts what was yielded.
    """
    header = (
        f'{{"format": {json.dumps(FORMAT)}, "version": {FORMAT_VERSION}, '
        f'"exported_at": "{format_time(exported_at_us)}", "conversations": ['
    )
    yield header.encode("utf-8")
    first = True
    async for conversation in conversations:
        body = _dump(conversation_json(conversation))
        if stats is not None:
            stats.conversation_count += 1
            stats.message_count += len(conversation.messages or ())
        yield body if first else b"," + body
        first = False
    yield b"]}"


# --- import: records -----------------------------------------------------------------------


@dataclass
class ImportedMessage:
    role: Role
    content: str
    status: MessageStatus
    incomplete_reason: str
    model: str
    route: str
    usage: Usage
    latency_us: int
    ttft_us: int
    finish_reason: str
    metadata: dict[str, str]
    create_time_us: int
    # The message's id in the file (byok message id, ChatGPT message id); informational.
    source_id: str = ""


@dataclass
class ImportedConversation:
    index: int  # position in the file, from 0
    source_key: str  # identity for de-duplication: "byok:<id>" or "chatgpt:<id>"
    preferred_id: str | None  # byok: the original id (reuse when free); chatgpt: None
    title: str
    metadata: dict[str, str]
    pinned: bool
    archived: bool
    create_time_us: int
    update_time_us: int
    messages: list[ImportedMessage] = field(default_factory=list)

    @property
    def source_id(self) -> str:
        """The conversation's id in the file (ImportFailure.source_id)."""
        return self.source_key.partition(":")[2]


# --- import: errors ------------------------------------------------------------------------


def _show(value: object, limit: int = 60) -> str:
    """A short JSON rendering of a bad value for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _top_error(field: str, description: str, *, reason: str = MALFORMED) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}",
        violations=[FieldViolation(field=field, description=description)],
        reason=reason,
    )


def _join(base: str, path: str) -> str:
    if not path:
        return base
    return base + path if path.startswith("[") else f"{base}.{path}"


class _Record:
    """Where a record sits in the file; raises InvalidArgument naming it precisely."""

    def __init__(self, index: int, field_prefix: str) -> None:
        self.index = index
        self.field_prefix = field_prefix
        self.source_id = ""

    def fail(self, path: str, description: str) -> NoReturn:
        label = f"conversations[{self.index}]"
        if self.source_id:
            label += f" (id {_show(self.source_id)})"
        where = f"{label}: {path}" if path else label
        raise InvalidArgument(
            f"{where}: {description}",
            violations=[
                FieldViolation(field=_join(self.field_prefix, path), description=description)
            ],
            reason=MALFORMED,
            metadata={"record": str(self.index), "source_id": self.source_id},
        )

    # Typed field readers. `None` (JSON null) counts as absent for optional fields.

    def obj(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"must be an object, got {_kind(value)}")
        return value

    def text(self, value: object, path: str, *, default: str | None = "") -> str:
        if value is None and default is not None:
            return default
        if not isinstance(value, str):
            if value is None:
                self.fail(path, "missing")
            self.fail(path, f"must be a string, got {_kind(value)}")
        if _SURROGATE.search(value):
            self.fail(path, "contains an unpaired UTF-16 surrogate")
        return value

    def flag(self, value: object, path: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {_show(value)}")
        return value

    def count(self, value: object, path: str) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {_show(value)}")
        if not 0 <= value <= _MAX_INT64:
            self.fail(path, f"{value} is out of range (0 to 2^63-1)")
        return value

    def millis(self, value: object, path: str) -> int:
        """Milliseconds (a JSON number) to whole microseconds."""
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number of milliseconds, got {_show(value)}")
        if not 0 <= value * 1000 <= _MAX_INT64:
            self.fail(path, f"{value} is out of range")
        return round(value * 1000)

    def time(self, value: object, path: str) -> int:
        if value is None:
            return 0
        if not isinstance(value, str):
            self.fail(path, f"must be an RFC 3339 timestamp string, got {_kind(value)}")
        try:
            return parse_time(value)
        except (ValueError, OverflowError):
            self.fail(path, f"{_show(value)} is not an RFC 3339 timestamp")

    def metadata(self, value: object, path: str) -> dict[str, str]:
        if value is None:
            return {}
        entries = self.obj(value, path)
        if len(entries) > MAX_METADATA_ENTRIES:
            self.fail(path, f"has {len(entries)} entries; at most {MAX_METADATA_ENTRIES}")
        out: dict[str, str] = {}
        for key, item in entries.items():
            item_path = f"{path}[{_show(key)}]"
            if len(key) > MAX_METADATA_KEY_CHARS:
                self.fail(
                    item_path, f"key has {len(key)} characters; at most {MAX_METADATA_KEY_CHARS}"
                )
            if _SURROGATE.search(key):
                self.fail(item_path, "key contains an unpaired UTF-16 surrogate")
            text = self.text(item, item_path, default=None)
            if len(text) > MAX_METADATA_VALUE_CHARS:
                self.fail(
                    item_path,
                    f"value has {len(text)} characters; at most {MAX_METADATA_VALUE_CHARS}",
                )
            out[key] = text
        return out

    def content(self, value: str, path: str) -> str:
        size = len(value.encode("utf-8"))
        if size > MAX_CONTENT_BYTES:
            self.fail(path, f"is {size} bytes of UTF-8; at most {MAX_CONTENT_BYTES} (1 MiB)")
        return value


# --- import: entry points --------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _load(data: bytes) -> object:
    if not data:
        raise _top_error("data", "is empty; expected a JSON document")
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _top_error("data", f"is not UTF-8 (invalid byte at offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise _top_error(
            "data", f"is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except (ValueError, RecursionError) as e:
        raise _top_error("data", f"is not acceptable JSON: {e}") from None


def detect_format(doc: object) -> ImportFormat:
    """ "byok" for a byok export document, "chatgpt" for a ChatGPT conversations.json."""
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] == FORMAT:
            return "byok"
        raise _top_error(
            "data.format", f"{_show(doc['format'])} is not a known format; expected {FORMAT!r}"
        )
    if isinstance(doc, list):
        return "chatgpt"
    raise _top_error(
        "data",
        f"is {_kind(doc)} that is neither a byok export (an object with "
        f'"format": "{FORMAT}") nor a ChatGPT conversations.json (an array of conversations)',
    )


def parse_import(
    data: bytes, fmt: Literal["auto", "byok", "chatgpt"] = "auto"
) -> list[ImportedConversation]:
    """Parses and validates a whole file; raises InvalidArgument at the first bad record."""
    doc = _load(data)
    if fmt == "auto":
        fmt = detect_format(doc)
    if fmt == "byok":
        return _parse_byok(doc)
    if fmt == "chatgpt":
        return _parse_chatgpt(doc)
    raise ValueError(f"unknown import format {fmt!r}")


# --- import: byok ----------------------------------------------------------------------------


def _parse_byok(doc: object) -> list[ImportedConversation]:
    if not isinstance(doc, dict):
        raise _top_error("data", f"must be a byok export document (an object), got {_kind(doc)}")
    if doc.get("format") != FORMAT:
        raise _top_error("data.format", f"must be {FORMAT!r}, got {_show(doc.get('format'))}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _top_error("data.version", f"must be a positive integer, got {_show(version)}")
    if version > FORMAT_VERSION:
        raise _top_error(
            "data.version",
            f"version {version} is not supported; this server reads version {FORMAT_VERSION}",
            reason=UNSUPPORTED_VERSION,
        )
    exported_at = doc.get("exported_at")
    if exported_at is not None:
        try:
            parse_time(exported_at if isinstance(exported_at, str) else "")
        except (ValueError, OverflowError):
            raise _top_error(
                "data.exported_at", f"{_show(exported_at)} is not an RFC 3339 timestamp"
            ) from None
    items = doc.get("conversations")
    if not isinstance(items, list):
        raise _top_error("data.conversations", f"must be an array, got {_kind(items)}")
    out: list[ImportedConversation] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        rec = _Record(index, f"data.conversations[{index}]")
        conversation = _byok_conversation(rec, item)
        first = seen.setdefault(conversation.source_key, index)
        if first != index:
            rec.fail("id", f"{_show(rec.source_id)} repeats conversations[{first}]")
        out.append(conversation)
    return out


def _byok_conversation(rec: _Record, item: object) -> ImportedConversation:
    obj = rec.obj(item, "")
    cid = rec.text(obj.get("id"), "id", default=None)
    if not _ID.fullmatch(cid):
        rec.fail("id", f"{_show(cid)} is not 1-63 lowercase letters, digits or hyphens")
    rec.source_id = cid
    name = obj.get("name")
    if name is not None and name != f"conversations/{cid}":
        rec.fail("name", f'{_show(name)} does not match the id; expected "conversations/{cid}"')
    title = rec.text(obj.get("title"), "title")
    if len(title) > MAX_TITLE_CHARS:
        rec.fail("title", f"has {len(title)} characters; at most {MAX_TITLE_CHARS}")
    metadata = rec.metadata(obj.get("metadata"), "metadata")
    space = rec.text(obj.get("space"), "space")
    if space and not re.fullmatch(r"spaces/[^/]+", space):
        rec.fail("space", f'{_show(space)} is not "spaces/{{id}}" or empty')
    pinned = rec.flag(obj.get("pinned"), "pinned")
    archived = rec.flag(obj.get("archived"), "archived")
    rec.text(obj.get("last_model"), "last_model")
    create_time_us = rec.time(obj.get("create_time"), "create_time")
    update_time_us = rec.time(obj.get("update_time"), "update_time")
    raw_messages = obj.get("messages")
    if not isinstance(raw_messages, list):
        rec.fail("messages", "missing" if raw_messages is None else "must be an array")
    messages = [_byok_message(rec, f"messages[{i}]", m) for i, m in enumerate(raw_messages)]
    return ImportedConversation(
        index=rec.index,
        source_key=f"byok:{cid}",
        preferred_id=cid,
        title=title,
        metadata=metadata,
        pinned=pinned,
        archived=archived,
        create_time_us=create_time_us,
        update_time_us=update_time_us,
        messages=messages,
    )


def _byok_message(rec: _Record, path: str, item: object) -> ImportedMessage:
    obj = rec.obj(item, path)
    mid = rec.text(obj.get("id"), f"{path}.id")
    role_name = obj.get("role")
    if role_name not in _ROLES:
        if role_name is None:
            rec.fail(f"{path}.role", "missing")
        rec.fail(f"{path}.role", f"{_show(role_name)} is not one of {', '.join(_ROLES)}")
    status_name = obj.get("status")
    if status_name is None:
        status_name = "complete"
    if status_name not in _STATUSES:
        rec.fail(f"{path}.status", f"{_show(status_name)} is not one of {', '.join(_STATUSES)}")
    content = rec.content(
        rec.text(obj.get("content"), f"{path}.content", default=None), f"{path}.content"
    )
    usage_obj = obj.get("usage")
    usage = Usage()
    if usage_obj is not None:
        u = rec.obj(usage_obj, f"{path}.usage")
        usage = Usage(
            prompt_tokens=rec.count(u.get("prompt_tokens"), f"{path}.usage.prompt_tokens"),
            completion_tokens=rec.count(
                u.get("completion_tokens"), f"{path}.usage.completion_tokens"
            ),
        )
    return ImportedMessage(
        role=_ROLES[str(role_name)],
        content=content,
        status=_STATUSES[str(status_name)],
        incomplete_reason=rec.text(obj.get("incomplete_reason"), f"{path}.incomplete_reason"),
        model=rec.text(obj.get("model"), f"{path}.model"),
        route=rec.text(obj.get("route"), f"{path}.route"),
        usage=usage,
        latency_us=rec.millis(obj.get("latency_ms"), f"{path}.latency_ms"),
        ttft_us=rec.millis(obj.get("time_to_first_token_ms"), f"{path}.time_to_first_token_ms"),
        finish_reason=rec.text(obj.get("finish_reason"), f"{path}.finish_reason"),
        metadata=rec.metadata(obj.get("metadata"), f"{path}.metadata"),
        create_time_us=rec.time(obj.get("create_time"), f"{path}.create_time"),
        source_id=mid,
    )


# --- import: ChatGPT -------------------------------------------------------------------------


def _parse_chatgpt(doc: object) -> list[ImportedConversation]:
    if not isinstance(doc, list):
        raise _top_error(
            "data", f"must be a ChatGPT conversations.json (an array), got {_kind(doc)}"
        )
    out: list[ImportedConversation] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(doc):
        rec = _Record(index, f"data[{index}]")
        conversation = _chatgpt_conversation(rec, item)
        first = seen.setdefault(conversation.source_key, index)
        if first != index:
            rec.fail("id", f"{_show(rec.source_id)} repeats conversations[{first}]")
        out.append(conversation)
    return out


def _epoch_seconds(rec: _Record, value: object, path: str) -> int | None:
    """ChatGPT times: float seconds since the epoch, or null."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        rec.fail(path, f"must be seconds since the epoch (a number) or null, got {_show(value)}")
    if not 0 <= value < _MAX_EPOCH_SECONDS:
        rec.fail(path, f"{value} is out of range")
    return round(value * 1_000_000)


def _chatgpt_title(value: str) -> str:
    value = _SURROGATE.sub("\ufffd", value)
    if not value.strip():
        return "Untitled"
    if len(value) > MAX_TITLE_CHARS:
        return value[: MAX_TITLE_CHARS - 1] + _CHATGPT_TITLE_ELLIPSIS
    return value


def _chatgpt_conversation(rec: _Record, item: object) -> ImportedConversation:
    obj = rec.obj(item, "")
    cid_field = "id" if obj.get("id") is not None else "conversation_id"
    cid = obj.get(cid_field)
    if not isinstance(cid, str) or not cid:
        rec.fail(
            cid_field, "missing" if cid is None else f"must be a non-empty string, got {_show(cid)}"
        )
    rec.source_id = cid
    raw_title = obj.get("title")
    if raw_title is not None and not isinstance(raw_title, str):
        rec.fail("title", f"must be a string or null, got {_kind(raw_title)}")
    title = _chatgpt_title(raw_title or "")
    create_s = _epoch_seconds(rec, obj.get("create_time"), "create_time")
    update_s = _epoch_seconds(rec, obj.get("update_time"), "update_time")
    create_time_us = create_s if create_s is not None else update_s or 0
    update_time_us = update_s if update_s is not None else create_time_us
    default_model = obj.get("default_model_slug")
    if not isinstance(default_model, str):
        default_model = ""
    archived = obj.get("is_archived") is True

    mapping = rec.obj(obj.get("mapping"), "mapping")
    current = obj.get("current_node")
    if not isinstance(current, str):
        rec.fail("current_node", "missing" if current is None else "must be a string")
    if current not in mapping:
        rec.fail("current_node", f"{_show(current)} is not a node of mapping")
    # Walk from the current node up to the root: the branch the user last saw.
    path: list[str] = []
    seen: set[str] = set()
    node_id: str | None = current
    while node_id is not None:
        seen.add(node_id)
        path.append(node_id)
        node_path = f"mapping[{_show(node_id, 200)}]"
        node = rec.obj(mapping[node_id], node_path)
        parent = node.get("parent")
        if parent is not None:
            if not isinstance(parent, str):
                rec.fail(f"{node_path}.parent", f"must be a node id or null, got {_show(parent)}")
            if parent not in mapping:
                rec.fail(f"{node_path}.parent", f"{_show(parent)} is not a node of mapping")
            if parent in seen:
                rec.fail(f"{node_path}.parent", f"{_show(parent)} makes a cycle")
        node_id = parent
    path.reverse()

    messages: list[ImportedMessage] = []
    for node_id in path:
        node_path = f"mapping[{_show(node_id, 200)}]"
        on_path = mapping[node_id]
        assert isinstance(on_path, dict)
        message = _chatgpt_message(
            rec, f"{node_path}.message", on_path.get("message"), default_model, create_time_us
        )
        if message is not None:
            message.source_id = message.source_id or node_id
            messages.append(message)
    return ImportedConversation(
        index=rec.index,
        source_key=f"chatgpt:{cid}",
        preferred_id=None,
        title=title,
        metadata={},
        pinned=False,
        archived=archived,
        create_time_us=create_time_us,
        update_time_us=update_time_us,
        messages=messages,
    )


def _chatgpt_parts(rec: _Record, path: str, content: Mapping[str, object]) -> tuple[str, int]:
    """The visible text of a ChatGPT content object and how many parts were dropped."""
    parts = content.get("parts")
    if parts is None:
        text = content.get("text")
        if text is None:
            return "", 0  # a content type with no text (context, thoughts, ...)
        if not isinstance(text, str):
            rec.fail(f"{path}.text", f"must be a string, got {_kind(text)}")
        return text, 0
    if not isinstance(parts, list):
        rec.fail(f"{path}.parts", f"must be an array, got {_kind(parts)}")
    texts: list[str] = []
    dropped = 0
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif (
            isinstance(part, dict)
            and part.get("content_type") == "audio_transcription"
            and isinstance(part.get("text"), str)
        ):
            texts.append(str(part["text"]))  # voice mode: the spoken words
        else:
            dropped += 1  # images, audio, files
    return "\n".join(texts), dropped


def _chatgpt_message(
    rec: _Record, path: str, value: object, default_model: str, conversation_time_us: int
) -> ImportedMessage | None:
    if value is None:
        return None
    msg = rec.obj(value, path)
    meta = msg.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("is_visually_hidden_from_conversation") is True:
        return None
    author = rec.obj(msg.get("author"), f"{path}.author")
    role_name = author.get("role")
    if role_name not in _ROLES:
        if role_name is None:
            rec.fail(f"{path}.author.role", "missing")
        rec.fail(f"{path}.author.role", f"{_show(role_name)} is not one of {', '.join(_ROLES)}")
    role = _ROLES[str(role_name)]
    raw_content = msg.get("content")
    if raw_content is None:
        rec.fail(f"{path}.content", "missing")
    text, dropped = _chatgpt_parts(rec, f"{path}.content", rec.obj(raw_content, f"{path}.content"))
    text = _SURROGATE.sub("\ufffd", text)
    if not text.strip():
        return None
    rec.content(text, f"{path}.content")

    status = MessageStatus.COMPLETE
    incomplete_reason = ""
    raw_status = msg.get("status")
    if isinstance(raw_status, str) and raw_status != "finished_successfully":
        status, incomplete_reason = MessageStatus.INCOMPLETE, f"chatgpt: {raw_status}"
    finish_reason = ""
    finish = meta.get("finish_details")
    finish_type = finish.get("type") if isinstance(finish, dict) else None
    if isinstance(finish_type, str):
        finish_reason = "length" if finish_type == "max_tokens" else finish_type
        if finish_type == "interrupted":
            status, incomplete_reason = MessageStatus.INCOMPLETE, "cancelled"
    model = ""
    if role is Role.ASSISTANT:
        slug = meta.get("model_slug")
        model = slug if isinstance(slug, str) and slug else default_model
    create_s = _epoch_seconds(rec, msg.get("create_time"), f"{path}.create_time")
    mid = msg.get("id")
    return ImportedMessage(
        role=role,
        content=text,
        status=status,
        incomplete_reason=incomplete_reason,
        model=model,
        route="",
        usage=Usage(),
        latency_us=0,
        ttft_us=0,
        finish_reason=finish_reason,
        metadata={"dropped_parts": str(dropped)} if dropped else {},
        create_time_us=create_s if create_s is not None else conversation_time_us,
        source_id=mid if isinstance(mid, str) else "",
    )
