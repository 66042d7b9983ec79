"""Proto3 JSON for responses, several times faster than `json_format.MessageToDict`.

Gives what `MessageToDict(m, always_print_fields_with_no_presence=True)` gives
(tests/gateway/test_jsonmap.py compares the two over every byok message): lowerCamelCase
names, fields without presence printed at their default, int64 as strings, bytes as
base64, enums by name, float as its shortest repr, NaN/Infinity as strings,
Timestamp/Duration/FieldMask as their JSON strings. Other well-known types are
left to json_format. The per-type plan is built once, on first use.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

FD = FieldDescriptor
Convert = Callable[[Any], Any]
Encoder = Callable[[Message], Any]
_INT64 = frozenset(
    {FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_SINT64, FD.TYPE_FIXED64, FD.TYPE_SFIXED64}
)
_AS_STRING = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_SINGLE, _REPEATED, _MAP = 0, 1, 2
_TIMESTAMP_MAX = 253402300799  # 9999-12-31T23:59:59Z
_encoders: dict[str, Encoder] = {}


def to_json_object(message: Message) -> Any:
    """The proto3 JSON value of `message` (a dict, or a string for Timestamp & co)."""
    return encoder(cast(Descriptor, message.DESCRIPTOR))(message)


def encoder(descriptor: Descriptor) -> Encoder:
    found = _encoders.get(descriptor.full_name)
    if found is None:
        found = _encoders[descriptor.full_name] = _compile(descriptor)
    return found


def _double(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _float(value: float) -> Any:
    if math.isfinite(value):
        return type_checkers.ToShortestFloat(value)
    return _double(value)


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _map_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _key_converter(fd: FieldDescriptor) -> Convert | None:
    return None if fd.type == FD.TYPE_STRING else _map_key


def _converter(fd: FieldDescriptor) -> Convert | None:
    """How one value of `fd` becomes JSON; None when it already is."""
    t = fd.type
    if t in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
        assert fd.message_type is not None
        sub = fd.message_type

        def message(value: Message, _sub: Descriptor = sub) -> Any:
            return encoder(_sub)(value)

        return message
    if t == FD.TYPE_ENUM:
        assert fd.enum_type is not None
        if fd.enum_type.full_name == "google.protobuf.NullValue":
            return lambda _: None
        names = {v.number: v.name for v in fd.enum_type.values}
        return lambda value: names.get(value, value)
    if t in _INT64:
        return str
    if t == FD.TYPE_DOUBLE:
        return _double
    if t == FD.TYPE_FLOAT:
        return _float
    if t == FD.TYPE_BYTES:
        return _bytes
    return None  # string, bool, 32-bit ints


def _timestamp(message: Message) -> str:
    """Timestamp.ToJsonString(), without its datetime arithmetic on the common path."""
    seconds: int = message.seconds  # type: ignore[attr-defined]
    nanos: int = message.nanos  # type: ignore[attr-defined]
    if not (0 <= seconds <= _TIMESTAMP_MAX and 0 <= nanos < 1_000_000_000):
        return message.ToJsonString()  # type: ignore[attr-defined,no-any-return]
    t = time.gmtime(seconds)
    text = (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _compile(descriptor: Descriptor) -> Encoder:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamp
    if name in _AS_STRING:
        return lambda message: message.ToJsonString()  # type: ignore[attr-defined]
    if name == "google.protobuf.Empty":
        return lambda _: {}
    if name.startswith("google.protobuf."):
        return lambda message: json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True
        )
    # Set fields come from ListFields(); unset fields without presence are printed
    # at their default: scalars from a template, repeated and map fields as [] / {}.
    plans: dict[int, tuple[str, int, Any]] = {}
    scalar_defaults: dict[str, Any] = {}
    empty_lists: list[str] = []
    empty_maps: list[str] = []
    for fd in descriptor.fields:
        key = fd.json_name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            entry = fd.message_type
            convs = (
                _key_converter(entry.fields_by_name["key"]),
                _converter(entry.fields_by_name["value"]),
            )
            plans[fd.number] = (key, _MAP, convs)
            empty_maps.append(key)
        elif fd.is_repeated:
            plans[fd.number] = (key, _REPEATED, _converter(fd))
            empty_lists.append(key)
        else:
            convert = _converter(fd)
            plans[fd.number] = (key, _SINGLE, convert)
            if not fd.has_presence:
                default = fd.default_value
                scalar_defaults[key] = default if convert is None else convert(default)

    def encode(message: Message) -> dict[str, Any]:
        out = dict(scalar_defaults)
        for key in empty_lists:
            out[key] = []
        for key in empty_maps:
            out[key] = {}
        for fd, value in message.ListFields():
            key, kind, convert = plans[fd.number]
            if kind == _SINGLE:
                out[key] = value if convert is None else convert(value)
            elif kind == _REPEATED:
                out[key] = list(value) if convert is None else [convert(v) for v in value]
            else:
                to_key, to_value = convert
                out[key] = {
                    (k if to_key is None else _map_key(k)): (v if to_value is None else to_value(v))
                    for k, v in value.items()
                }
        return out

    return encode
