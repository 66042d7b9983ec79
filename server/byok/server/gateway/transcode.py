"""HTTP request → proto request, proto response → JSON, per the proto3 JSON mapping.

A `Transcoder` is built once per binding. A request message is assembled as one
proto3-JSON document — the body (the whole request for `body: "*"`, else under
the body field), then query parameters, then path values (the path wins) — and
parsed by `json_format.ParseDict`, which accepts lowerCamelCase and original
field names and refuses unknown fields and wrong types.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from byok.server.gateway.jsonmap import to_json_object
from byok.server.gateway.routes import Binding, message_of, resolve_field, type_name

FD = FieldDescriptor
_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_NOT_MUTABLE = frozenset({field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IDENTIFIER})
_FAILED = re.compile(r"Failed to parse (\w+) field: ")
_NO_FIELD = re.compile(r'Message type "[\w.]+" has no field named "([^"]+)" at "([\w.]+)"')
_AT = re.compile(r"\s+at (\w+(?:\.\w+)*)\.*$")


class TranscodeError(Exception):
    """A request the gateway refuses before calling gRPC (answered 400). With a
    `field`, the message reads "<field>: <description>" and the error carries a
    BadRequest field violation."""

    def __init__(
        self, description: str, reason: str = "INVALID_ARGUMENT", field: str | None = None
    ) -> None:
        self.message = f"{field}: {description}" if field else description
        super().__init__(self.message)
        self.reason = reason
        self.field = field
        self.violations: list[tuple[str, str]] = [(field, description)] if field else []


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def message_json(message: Message) -> Any:
    """Proto3 JSON of a response: lowerCamelCase names, fields without presence
    printed even at their default (so `"nextPageToken": ""` is always there)."""
    return to_json_object(message)


def is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and bool(fd.message_type.GetOptions().map_entry)


def is_repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated


def _snake_to_camel(path: str) -> str:
    return ".".join(
        re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split(".")
    )


def scalar_from_text(fd: FieldDescriptor, text: str, name: str) -> Any:
    """A query or path value as the JSON value ParseDict expects for `fd`."""
    t = fd.type
    if t == FD.TYPE_BOOL:
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise TranscodeError(f"expected true or false, got {text!r}", field=name)
    if t == FD.TYPE_ENUM:
        return int(text) if text.lstrip("-").isdigit() else text
    if t == FD.TYPE_MESSAGE:
        full = type_name(fd)
        if full == "google.protobuf.FieldMask":
            return ",".join(_snake_to_camel(p.strip()) for p in text.split(",") if p.strip())
        if full in _STRING_WKT:
            return text
        if full in _WRAPPERS:
            return scalar_from_text(message_of(fd).fields_by_name["value"], text, name)
        raise TranscodeError("a message field cannot be set from a string", field=name)
    return text  # numbers (ParseDict reads strings), strings, base64 bytes


def _slot(doc: dict[str, Any], fd: FieldDescriptor) -> str:
    """The key `fd` already has in `doc` (either spelling), else its proto name."""
    if fd.name in doc:
        return str(fd.name)
    if fd.json_name in doc:
        return str(fd.json_name)
    return str(fd.name)


def _put(doc: dict[str, Any], chain: Sequence[FieldDescriptor], value: Any, *, add: bool) -> None:
    for fd in chain[:-1]:
        key = _slot(doc, fd)
        inner = doc.setdefault(key, {})
        if not isinstance(inner, dict):
            raise TranscodeError("expected an object", field=str(fd.name))
        doc = inner
    key = _slot(doc, chain[-1])
    if add:
        doc.setdefault(key, []).append(value)
    else:
        doc[key] = value


def _parse_error(error: Exception) -> TranscodeError:
    text = str(error).split("\n", 1)[0].strip()
    m = _NO_FIELD.search(text)
    if m:
        prefix = m.group(2).split(".")[1:]
        field = ".".join([*prefix, m.group(1)])
        return TranscodeError("unknown field", "UNKNOWN_FIELD", field)
    path: list[str] = []
    rest = text
    while (f := _FAILED.match(rest)) is not None:
        path.append(f.group(1))
        rest = rest[f.end() :]
    at = _AT.search(rest)
    if at:
        path = at.group(1).split(".")[1:] or path
        rest = rest[: at.start()]
    rest = rest.rstrip(".") or "invalid value"
    field = ".".join(path)
    return TranscodeError(rest, "INVALID_ARGUMENT", field or None)


def _mutable_fields(message: Descriptor) -> dict[str, str]:
    """JSON key (both spellings) → proto name, for fields an update may name."""
    out: dict[str, str] = {}
    for fd in message.fields:
        behaviors = set(fd.GetOptions().Extensions[field_behavior_pb2.field_behavior])
        if behaviors & _NOT_MUTABLE or fd.name == "etag":
            continue
        out[fd.name] = fd.name
        out[fd.json_name] = fd.name
    return out


class Transcoder:
    """Precomputed request/response handling for one binding."""

    def __init__(self, binding: Binding):
        self.binding = binding
        request = binding.request_type
        self.request_cls = binding.request_cls
        self.body = binding.body
        self.path_chains = {
            dotted: resolve_field(request, dotted) for dotted in binding.path_fields
        }
        self._query_cache: dict[str, tuple[list[FieldDescriptor], str]] = {}
        # PATCH with a message body and an unset update_mask: the mask is the body's keys.
        self._mask_fields: dict[str, str] | None = None
        mask = request.fields_by_name.get("update_mask")
        body_fd = request.fields_by_name.get(self.body) if self.body not in ("", "*") else None
        if (
            binding.http_method == "PATCH"
            and mask is not None
            and type_name(mask) == "google.protobuf.FieldMask"
            and body_fd is not None
            and body_fd.message_type is not None
            and not is_map(body_fd)
        ):
            self._mask_fields = _mutable_fields(body_fd.message_type)
        response = binding.response_type
        self.response_key = (
            response.fields_by_name[binding.response_body].json_name
            if binding.response_body
            else ""
        )
        oneof = response.oneofs_by_name.get("event")
        self.event_names: dict[str, str] = (
            {fd.name: fd.json_name for fd in oneof.fields} if oneof is not None else {}
        )

    # -- requests ---------------------------------------------------------------

    def query_field(self, name: str) -> tuple[list[FieldDescriptor], str]:
        """The field chain a query parameter sets, and its dotted proto path."""
        hit = self._query_cache.get(name)
        if hit is not None:
            return hit
        if self.body == "*":
            raise TranscodeError(
                "this method takes every field in the JSON body, not the query",
                "UNKNOWN_FIELD",
                name,
            )
        try:
            chain = resolve_field(self.binding.request_type, name)
        except KeyError:
            raise TranscodeError("unknown query parameter", "UNKNOWN_FIELD", name) from None
        dotted = ".".join(fd.name for fd in chain)
        for fd in chain[:-1]:
            if is_repeated(fd) or type_name(fd) in _STRING_WKT | _WRAPPERS:
                raise TranscodeError("cannot be set by a query parameter", field=name)
        leaf = chain[-1]
        if is_map(leaf) or (
            leaf.type == FD.TYPE_MESSAGE and type_name(leaf) not in _STRING_WKT | _WRAPPERS
        ):
            raise TranscodeError("cannot be set by a query parameter", field=name)
        if dotted in self.binding.path_fields:
            raise TranscodeError("is set by the URL path", field=name)
        if self.body and chain[0].name == self.body:
            raise TranscodeError("belongs in the JSON body", field=name)
        self._query_cache[name] = (chain, dotted)
        return chain, dotted

    def build_request(self, values: dict[str, str], query: bytes, body: bytes) -> Message:
        doc: dict[str, Any] = {}
        if self.body and body.strip():
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise TranscodeError(f"the body is not valid JSON: {exc}", "INVALID_JSON") from None
            if self.body != "*":
                doc[self.body] = parsed
            elif isinstance(parsed, dict):
                doc = parsed
            else:
                raise TranscodeError("the body must be a JSON object", "INVALID_JSON")
        if query:
            seen: set[str] = set()
            for name, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                chain, dotted = self.query_field(name)
                repeated = is_repeated(chain[-1])
                if not repeated and dotted in seen:
                    raise TranscodeError("given more than once", field=name)
                seen.add(dotted)
                _put(doc, chain, scalar_from_text(chain[-1], text, name), add=repeated)
        for dotted, value in values.items():
            chain = self.path_chains[dotted]
            leaf = chain[-1]
            converted = (
                value if leaf.type == FD.TYPE_STRING else scalar_from_text(leaf, value, dotted)
            )
            _put(doc, chain, converted, add=False)
        message: Message = self.request_cls()
        try:
            json_format.ParseDict(doc, message)
        except RecursionError:
            raise TranscodeError("the body nests too deeply", "INVALID_JSON") from None
        except Exception as exc:  # ParseError, and the odd TypeError/ValueError it leaks
            raise _parse_error(exc) from None
        if self._mask_fields is not None:
            self._infer_mask(doc, message)
        return message

    def _infer_mask(self, doc: dict[str, Any], message: Message) -> None:
        if "update_mask" in doc or "updateMask" in doc:
            return
        body = doc.get(self.body)
        if not isinstance(body, dict) or self._mask_fields is None:
            return
        paths = [self._mask_fields[k] for k in body if k in self._mask_fields]
        message.update_mask.paths.extend(paths)  # type: ignore[attr-defined]

    # -- responses --------------------------------------------------------------

    def response_json(self, message: Message) -> bytes:
        data = message_json(message)
        if self.response_key:
            return dumps(data.get(self.response_key))
        return dumps(data)

    def event_name(self, message: Message) -> str:
        """The SSE event: the set field of a `oneof event`, else "message"."""
        if self.event_names:
            kind = message.WhichOneof("event")
            if kind is not None:
                return self.event_names[kind]
        return "message"
