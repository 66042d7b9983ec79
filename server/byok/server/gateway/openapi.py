"""An OpenAPI 3.1 document generated from the same bindings the gateway serves.

Paths use one `{param}` per wildcard of a bound resource name, named after the
collection before it (`/api/{name=conversations/*}` → `/api/conversations/{conversation}`,
which the gateway binds to `name`). Schemas follow the proto3 JSON mapping:
lowerCamelCase properties, enums as string enums, int64 as decimal strings
(integers are accepted too), bytes as base64, Timestamp/Duration/FieldMask as
strings, maps as `additionalProperties`. Descriptions come from the proto
comments when the descriptors carry source info (generation with
`--include_source_info`); otherwise from the field behaviors only.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Mapping
from typing import Any

from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from byok.server.gateway.routes import (
    Binding,
    RouteTable,
    Variable,
    kebab_to_camel,
    message_of,
    type_name,
)
from byok.server.gateway.transcode import is_map, is_repeated

FD = FieldDescriptor
REF = "#/components/schemas/"
ERROR_SCHEMA = "byok.gateway.Error"
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": ["string", "integer"], "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": ["string", "integer"], "format": "int64", "pattern": r"^[0-9]+$", "minimum": 0}
_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_INT32: _INT32,
    FD.TYPE_SINT32: _INT32,
    FD.TYPE_SFIXED32: _INT32,
    FD.TYPE_UINT32: _UINT32,
    FD.TYPE_FIXED32: _UINT32,
    FD.TYPE_INT64: _INT64,
    FD.TYPE_SINT64: _INT64,
    FD.TYPE_SFIXED64: _INT64,
    FD.TYPE_UINT64: _UINT64,
    FD.TYPE_FIXED64: _UINT64,
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'A duration in seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated lowerCamelCase field paths, e.g. "title,pinned".',
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
}
_WRAPPER_SCALARS = {
    f"google.protobuf.{n}Value": t
    for n, t in (
        ("Double", FD.TYPE_DOUBLE),
        ("Float", FD.TYPE_FLOAT),
        ("Int64", FD.TYPE_INT64),
        ("UInt64", FD.TYPE_UINT64),
        ("Int32", FD.TYPE_INT32),
        ("UInt32", FD.TYPE_UINT32),
        ("Bool", FD.TYPE_BOOL),
        ("String", FD.TYPE_STRING),
        ("Bytes", FD.TYPE_BYTES),
    )
}
_BEHAVIOR_NOTES = {
    field_behavior_pb2.REQUIRED: "Required.",
    field_behavior_pb2.OUTPUT_ONLY: "Output only.",
    field_behavior_pb2.INPUT_ONLY: "Input only.",
    field_behavior_pb2.IMMUTABLE: "Immutable.",
    field_behavior_pb2.IDENTIFIER: "The resource name.",
}
_QUERY_DEPTH = 3
# Well-known types a query parameter can carry (as their JSON string).
_QUERY_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


# -- proto comments (source info) ----------------------------------------------


def packaged_comments(package: str = "byok.v1") -> dict[str, str]:
    """Proto comments from descriptor sets with source info (`*.binpb`) shipped in
    `package`. Generated `_pb2` modules never carry comments (protoc's Python
    output strips source info), so this is where descriptions come from."""
    merged: dict[str, str] = {}
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return merged
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".binpb") and entry.is_file():
            merged.update(descriptor_set_comments(entry.read_bytes()))
    return merged


def descriptor_set_comments(data: bytes) -> dict[str, str]:
    """The comments of every file of a serialized FileDescriptorSet."""
    merged: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        merged.update(comments_of(file))
    return merged


def comments_of(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """Leading comments of messages, fields, enums, values, services and methods,
    by full name ("byok.v1.Conversation.title"). Empty without source info."""
    by_path = {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in proto.source_code_info.location
        if loc.leading_comments.strip()
    }
    if not by_path:
        return {}
    out: dict[str, str] = {}
    prefix = f"{proto.package}." if proto.package else ""

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        name = scope + e.name
        _note(out, name, by_path.get(path))
        for i, v in enumerate(e.value):
            _note(out, f"{name}.{v.name}", by_path.get((*path, 2, i)))

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        name = scope + m.name
        _note(out, name, by_path.get(path))
        for i, f in enumerate(m.field):
            _note(out, f"{name}.{f.name}", by_path.get((*path, 2, i)))
        for i, nested in enumerate(m.nested_type):
            message(nested, (*path, 3, i), name + ".")
        for i, e in enumerate(m.enum_type):
            enum(e, (*path, 4, i), name + ".")

    for i, m in enumerate(proto.message_type):
        message(m, (4, i), prefix)
    for i, e in enumerate(proto.enum_type):
        enum(e, (5, i), prefix)
    for i, s in enumerate(proto.service):
        name = prefix + s.name
        _note(out, name, by_path.get((6, i)))
        for j, rpc in enumerate(s.method):
            _note(out, f"{name}.{rpc.name}", by_path.get((6, i, 2, j)))
    return out


def _note(out: dict[str, str], name: str, comment: str | None) -> None:
    if comment:
        out[name] = " ".join(line.strip() for line in comment.splitlines()).strip()


# -- schemas --------------------------------------------------------------------


class _Schemas:
    """components/schemas, filled as messages and enums are referenced."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.schemas: dict[str, Any] = {}
        self.comments = comments

    def note(self, descriptor: Any) -> str:
        """The proto comment of a descriptor, or ""."""
        return self.comments.get(descriptor.full_name, "")

    def ref(self, descriptor: Descriptor | EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages terminate
            if isinstance(descriptor, EnumDescriptor):
                self.schemas[name] = self._enum(descriptor)
            else:
                self.schemas[name] = self.message(descriptor)
        return {"$ref": REF + name}

    def _enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        lines = [self.note(enum)] if self.note(enum) else []
        for value in enum.values:
            note = self.comments.get(f"{enum.full_name}.{value.name}", "")
            if note:
                lines.append(f"- `{value.name}`: {note}")
        schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.values]}
        if lines:
            schema["description"] = "\n".join(lines)
        return schema

    def message(self, message: Descriptor, *, leave_out: Iterable[str] = ()) -> dict[str, Any]:
        skip = set(leave_out)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for fd in message.fields:
            if fd.name in skip:
                continue
            schema = self.field(fd)
            behaviors = set(fd.GetOptions().Extensions[field_behavior_pb2.field_behavior])
            notes = [self.note(fd)] if self.note(fd) else []
            notes += [_BEHAVIOR_NOTES[b] for b in sorted(behaviors) if b in _BEHAVIOR_NOTES]
            if notes:
                schema = {**schema, "description": " ".join(notes)}
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema = {**schema, "readOnly": True}
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema = {**schema, "writeOnly": True}
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(fd.json_name)
            properties[fd.json_name] = schema
        out: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            out["required"] = required
        if self.note(message):
            out["description"] = self.note(message)
        return out

    def field(self, fd: FieldDescriptor) -> dict[str, Any]:
        if is_map(fd):
            value = message_of(fd).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if is_repeated(fd):
            return {"type": "array", "items": self.single(fd)}
        return self.single(fd)

    def single(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.type == FD.TYPE_ENUM:
            assert fd.enum_type is not None
            return self.ref(fd.enum_type)
        if fd.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            return self.of_message(message_of(fd))
        return dict(_SCALARS[fd.type])

    def of_message(self, message: Descriptor) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in _WRAPPER_SCALARS:
            return dict(_SCALARS[_WRAPPER_SCALARS[name]])
        return self.ref(message)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every error: the gRPC status mapped to HTTP (see docs/rest.md).",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status code."},
                    "message": {"type": "string"},
                    "status": {
                        "type": "string",
                        "description": 'The canonical gRPC code name, e.g. "NOT_FOUND".',
                    },
                    "details": {
                        "type": "array",
                        "description": "google.rpc details: ErrorInfo, BadRequest, RetryInfo.",
                        "items": {
                            "type": "object",
                            "properties": {"@type": {"type": "string"}},
                            "required": ["@type"],
                        },
                    },
                },
                "required": ["code", "message", "status", "details"],
            }
        },
        "required": ["error"],
    }


# -- paths ----------------------------------------------------------------------


def singular(collection: str) -> str:
    """`model-profiles` → `model_profile`: the path parameter of a wildcard."""
    word = collection.replace("-", "_")
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def openapi_path(binding: Binding) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a binding and its path parameters."""
    segments: list[str] = []
    params: list[dict[str, Any]] = []
    used: set[str] = set()
    for part in binding.template.parts:
        if isinstance(part, Variable):
            previous = ""
            shown: list[str] = []
            names: list[tuple[str, str]] = []
            for seg in part.parts:
                if seg in ("*", "**"):
                    name = _unique(singular(previous) if previous else part.field_path[-1], used)
                    names.append((name, seg))
                    segments.append("{" + name + "}")
                    shown.append("{" + name + "}")
                else:
                    previous = seg
                    segments.append(seg)
                    shown.append(kebab_to_camel(seg))
            where = f"Part of `{part.field_name}` = `{'/'.join(shown)}`."
            params.extend(_path_param(name, seg, where) for name, seg in names)
        elif part in ("*", "**"):
            name = _unique("segment", used)
            segments.append("{" + name + "}")
            params.append(_path_param(name, part, "An unbound path segment."))
        else:
            segments.append(part)
    path = "/" + "/".join(segments)
    if binding.template.verb:
        path += ":" + binding.template.verb
    return path, params


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}{n}", n + 1
    used.add(candidate)
    return candidate


def _path_param(name: str, segment: str, description: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if segment == "*":
        schema["pattern"] = "^[^/:]+$"
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query_params(binding: Binding, schemas: _Schemas) -> list[dict[str, Any]]:
    if binding.body == "*":
        return []
    out: list[dict[str, Any]] = []

    def walk(message: Descriptor, proto_prefix: str, json_prefix: str, depth: int) -> None:
        for fd in message.fields:
            proto_path = proto_prefix + fd.name
            json_path = json_prefix + fd.json_name
            if proto_path in binding.path_fields or (not proto_prefix and fd.name == binding.body):
                continue
            if any(p.startswith(proto_path + ".") for p in binding.path_fields):
                continue  # a message holding a path-bound field: its other fields are rare
            if is_map(fd):
                continue
            full = type_name(fd)
            if full and full not in _QUERY_WKT and full not in _WRAPPER_SCALARS:
                if full not in _WELL_KNOWN and not is_repeated(fd) and depth < _QUERY_DEPTH:
                    walk(message_of(fd), proto_path + ".", json_path + ".", depth + 1)
                continue
            behaviors = set(fd.GetOptions().Extensions[field_behavior_pb2.field_behavior])
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                continue
            param: dict[str, Any] = {
                "name": json_path,
                "in": "query",
                "required": field_behavior_pb2.REQUIRED in behaviors and not proto_prefix,
                "schema": schemas.field(fd),
            }
            if schemas.note(fd):
                param["description"] = schemas.note(fd)
            if is_repeated(fd):
                param["style"] = "form"
                param["explode"] = True
            out.append(param)

    walk(binding.request_type, "", "", 0)
    return out


def _operation(binding: Binding, schemas: _Schemas, operation_id: str) -> dict[str, Any]:
    method = binding.method
    service = method.containing_service
    _, params = openapi_path(binding)
    described = schemas.note(method)
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [service.name],
        "summary": described.split(". ")[0].rstrip(".") if described else method.name,
        "description": (described + "\n\n" if described else "")
        + f"gRPC: `{service.full_name}/{method.name}`.",
        "parameters": params + _query_params(binding, schemas),
    }
    request = binding.request_type
    if binding.body == "*":
        leave_out = {f.split(".")[0] for f in binding.path_fields if "." not in f}
        schema = (
            schemas.message(request, leave_out=leave_out) if leave_out else schemas.ref(request)
        )
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    elif binding.body:
        schema = schemas.field(request.fields_by_name[binding.body])
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    response = binding.response_type
    if binding.response_body:
        ok = schemas.field(response.fields_by_name[binding.response_body])
    else:
        ok = schemas.of_message(response)
    if binding.server_streaming:
        op["description"] += (
            "\n\nA server stream: SSE with `Accept: text/event-stream` (one `event: <kind>` "
            "and `data: <message JSON>` per message, `: heartbeat` comments), otherwise "
            'NDJSON (one `{"result": <message>}` line per message, `{"error": ...}` last '
            "on failure). Each message is a `" + response.full_name + "`."
        )
        op["x-byok-stream-message"] = ok
        content: dict[str, Any] = {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        }
        description = "A stream of " + response.full_name
    else:
        content = {"application/json": {"schema": ok}}
        description = "OK"
    op["responses"] = {
        "200": {"description": description, "content": content},
        "4XX": {"$ref": "#/components/responses/Error"},
        "5XX": {"$ref": "#/components/responses/Error"},
    }
    return op


def build_openapi(
    routes: RouteTable,
    *,
    title: str = "byok REST API",
    version: str = "v1",
    comments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The document; `comments` (full name → text) default to `packaged_comments()`."""
    schemas = _Schemas(packaged_comments() if comments is None else comments)
    paths: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    tags: dict[str, str] = {}
    for binding in routes.bindings:
        method = binding.method
        service = method.containing_service
        tags.setdefault(service.name, schemas.note(service))
        base = f"{service.name}_{method.name}"
        counts[base] = counts.get(base, 0) + 1
        operation_id = base if counts[base] == 1 else f"{base}_{counts[base]}"
        path, _ = openapi_path(binding)
        paths.setdefault(path, {})[binding.http_method.lower()] = _operation(
            binding, schemas, operation_id
        )
    schemas.schemas[ERROR_SCHEMA] = _error_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The byok gRPC API transcoded to REST/JSON by the google.api.http "
                "annotations; see docs/rest.md."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": n, **({"description": d} if d else {})} for n, d in tags.items()],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "responses": {
                "Error": {
                    "description": "An error",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait (429 and 503 with RetryInfo).",
                            "schema": {"type": "integer"},
                        },
                    },
                    "content": {"application/json": {"schema": {"$ref": REF + ERROR_SCHEMA}}},
                }
            },
        },
    }
