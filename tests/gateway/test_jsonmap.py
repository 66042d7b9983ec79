"""jsonmap.py gives exactly what json_format.MessageToDict gives, for every byok message."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf import json_format, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from byok.server.gateway.jsonmap import to_json_object
from byok.server.gateway.routes import service_descriptors

FD = FieldDescriptor


def all_messages() -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}

    def visit(d: Descriptor) -> None:
        if d.full_name in seen or d.GetOptions().map_entry:
            return
        seen[d.full_name] = d
        for fd in d.fields:
            if fd.message_type is not None:
                visit(fd.message_type)
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                value = fd.message_type.fields_by_name["value"]
                if value.message_type is not None:
                    visit(value.message_type)

    for service in service_descriptors():
        for method in service.methods:
            visit(method.input_type)
            visit(method.output_type)
    return list(seen.values())


SCALARS: dict[int, list[Any]] = {
    FD.TYPE_STRING: ["", 'héllo \u2028 "q"'],
    FD.TYPE_BYTES: [b"", b"\x00\xff{}"],
    FD.TYPE_BOOL: [False, True],
    FD.TYPE_INT32: [0, -7, 2**31 - 1],
    FD.TYPE_INT64: [0, -(2**63), 2**53 + 1],
    FD.TYPE_UINT32: [0, 2**32 - 1],
    FD.TYPE_UINT64: [0, 2**64 - 1],
    FD.TYPE_DOUBLE: [0.0, 0.1, -1e300, math.inf, -math.inf],
    FD.TYPE_FLOAT: [0.0, 0.2, 3.4e38, -math.inf],
}


def fill(message: Any, variant: int, depth: int = 0) -> None:
    """Sets every field (variant picks the values), recursing a few levels."""
    descriptor: Descriptor = message.DESCRIPTOR
    for fd in descriptor.fields:
        if (
            fd.containing_oneof is not None
            and fd.containing_oneof.fields[variant % len(fd.containing_oneof.fields)] is not fd
        ):
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            target = getattr(message, fd.name)
            if value_fd.message_type is None:
                target["k1"] = scalar(value_fd, variant)
            elif depth < 2:
                fill(target["k1"], variant, depth + 1)
        elif fd.message_type is not None:
            if depth >= 2:
                continue
            sub: Any
            if fd.message_type.full_name == "google.protobuf.Timestamp":
                sub = timestamp_pb2.Timestamp(seconds=1767225600 + variant, nanos=variant * 1000)
            else:
                sub = message_factory.GetMessageClass(fd.message_type)()
                if fd.message_type.full_name == "google.protobuf.Duration":
                    sub.FromMilliseconds(1500 * variant)
                elif fd.message_type.full_name == "google.protobuf.FieldMask":
                    sub.paths.extend(["a_b", "c"][: variant % 3])
                elif not fd.message_type.full_name.startswith("google.protobuf."):
                    fill(sub, variant, depth + 1)
            if fd.is_repeated:
                getattr(message, fd.name).append(sub)
            else:
                getattr(message, fd.name).CopyFrom(sub)
        elif fd.is_repeated:
            getattr(message, fd.name).extend([scalar(fd, variant), scalar(fd, variant + 1)])
        elif variant or not fd.has_presence:
            setattr(message, fd.name, scalar(fd, variant))


def scalar(fd: FieldDescriptor, variant: int) -> Any:
    if fd.type == FD.TYPE_ENUM:
        assert fd.enum_type is not None
        values = [v.number for v in fd.enum_type.values] + [99]  # 99: an unknown number
        return values[variant % len(values)]
    options = SCALARS.get(fd.type, SCALARS[FD.TYPE_INT32])
    return options[variant % len(options)]


@pytest.mark.parametrize("descriptor", all_messages(), ids=lambda d: d.full_name)
def test_same_as_json_format(descriptor: Descriptor) -> None:
    cls = message_factory.GetMessageClass(descriptor)
    for variant in range(6):
        message = cls()
        if variant and not descriptor.full_name.startswith("google.protobuf."):
            fill(message, variant)
        expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        assert to_json_object(message) == expected, (descriptor.full_name, variant)


def test_well_known_types_at_the_top() -> None:
    assert to_json_object(timestamp_pb2.Timestamp(seconds=0)) == "1970-01-01T00:00:00Z"
    value = struct_pb2.Struct()
    value.update({"a": [1, "x", None]})
    assert to_json_object(value) == {"a": [1.0, "x", None]}


def test_timestamps_exactly_as_json_format() -> None:
    rng = random.Random(7)
    cases = [(0, 0), (253402300799, 999999999), (1767225600, 5_000_000), (1767225600, 123_000)]
    cases += [
        (
            rng.randrange(0, 253402300800),
            rng.choice([0, 1, 10**6, 10**3 * rng.randrange(10**6), rng.randrange(10**9)]),
        )
        for _ in range(2000)
    ]
    for seconds, nanos in cases:
        ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        assert to_json_object(ts) == ts.ToJsonString(), (seconds, nanos)
    before_1970 = timestamp_pb2.Timestamp(seconds=-86400 * 365)
    assert to_json_object(before_1970) == before_1970.ToJsonString() == "1969-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        to_json_object(timestamp_pb2.Timestamp(seconds=253402300800))
