"""A small AIP-160 subset: `field op value` comparisons joined by AND.

Each List/Search method declares which fields it accepts, with their kind and
operators; anything else is INVALID_ARGUMENT naming the problem. The result is a
list of typed `Condition`s that storage turns into parameterized SQL.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from byok.server.errors import InvalidArgument

MAX_FILTER_LENGTH = 2000


class Kind(enum.Enum):
    STRING = "string"
    BOOL = "bool"
    TIME = "time"  # RFC 3339 string → microseconds since the epoch
    ENUM = "enum"


@dataclass(frozen=True)
class FieldSpec:
    kind: Kind
    ops: frozenset[str]
    enum_values: dict[str, int] | None = None


EQUALITY = frozenset({"=", "!="})
ORDERING = frozenset({"<", "<=", ">", ">=", "="})


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str | int | bool


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|!=|=|<|>)
      | (?P<word>[A-Za-z0-9_.:+\-]+)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise InvalidArgument.field("filter", f"cannot parse near {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def parse_time(text: str, field: str = "filter") -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument.field(field, f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise InvalidArgument.field(field, f"{text!r} needs a time zone, e.g. Z")
    return int(moment.timestamp() * 1_000_000)


def parse_filter(text: str, fields: dict[str, FieldSpec]) -> list[Condition]:
    """Parses `a = "x" AND b > "2026-01-01T00:00:00Z"` against the allowed fields."""
    text = text.strip()
    if not text:
        return []
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument.field("filter", f"is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    conditions: list[Condition] = []
    i = 0
    allowed = ", ".join(sorted(fields))
    while True:
        if i + 3 > len(tokens):
            raise InvalidArgument.field("filter", "expected `field operator value`")
        (k1, name), (k2, op), (k3, raw) = tokens[i : i + 3]
        if k1 != "word" or k2 != "op" or k3 not in ("word", "string"):
            raise InvalidArgument.field("filter", f"expected `field operator value` at {name!r}")
        spec = fields.get(name)
        if spec is None:
            raise InvalidArgument.field("filter", f"unknown field {name!r}; allowed: {allowed}")
        if op not in spec.ops:
            ops = " ".join(sorted(spec.ops))
            raise InvalidArgument.field("filter", f"{name} takes the operators {ops}, not {op}")
        value = raw[1:-1].replace('\\"', '"') if k3 == "string" else raw
        conditions.append(Condition(name, op, _convert(name, spec, value)))
        i += 3
        if i == len(tokens):
            return conditions
        if tokens[i] != ("word", "AND"):
            raise InvalidArgument.field(
                "filter", f"expected AND after {name} {op} {raw} (only AND is supported)"
            )
        i += 1


def _convert(name: str, spec: FieldSpec, value: str) -> str | int | bool:
    if spec.kind is Kind.BOOL:
        if value not in ("true", "false"):
            raise InvalidArgument.field("filter", f"{name} takes true or false, not {value!r}")
        return value == "true"
    if spec.kind is Kind.TIME:
        return parse_time(value)
    if spec.kind is Kind.ENUM:
        assert spec.enum_values is not None
        if value not in spec.enum_values:
            names = ", ".join(spec.enum_values)
            raise InvalidArgument.field("filter", f"{name} takes one of {names}, not {value!r}")
        return spec.enum_values[value]
    return value
