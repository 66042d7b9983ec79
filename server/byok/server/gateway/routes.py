"""REST routes built from the `google.api.http` options of the byok services.

At start `load_bindings` walks every service of the generated `byok.v1` modules
and turns each HTTP rule (and its `additional_bindings`) into a `Binding` with a
compiled path template. No route is written by hand: an annotated RPC is served
as soon as its generated module exists.

Path templates follow google/api/http.proto:

    Template = "/" Segments [ Verb ] ;  Segment = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;  Verb = ":" LITERAL ;

A bound value is rebuilt from the variable's own segments: wildcards take the
(percent-decoded) text of the URL, literal segments are rewritten from kebab-case
to lowerCamelCase (ADR 0001), so `/api/{name=model-profiles/*}` maps
`/api/model-profiles/abc` to the name `modelProfiles/abc`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# One path segment; ':' is left out so a custom verb never ends up in a bound value.
_SEGMENT = r"[^/:]+"
_MULTI = r".+?"


class TemplateError(ValueError):
    """An annotation whose path template cannot be parsed."""


def kebab_to_camel(text: str) -> str:
    head, *rest = text.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class Variable:
    """`{field.path=segments}`; `parts` are literals or "*" / "**"."""

    field_path: tuple[str, ...]
    parts: tuple[str, ...]

    @property
    def field_name(self) -> str:
        return ".".join(self.field_path)


Part = str | Variable


@dataclass(frozen=True)
class PathTemplate:
    text: str
    parts: tuple[Part, ...]
    verb: str
    regex: re.Pattern[str]
    # Per variable: how to rebuild its value from the regex groups; ints are group
    # indexes, strings are (already camelCased) literal segments.
    builders: tuple[tuple[Variable, tuple[int | str, ...]], ...]

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(v for v, _ in self.builders)

    @property
    def literal_count(self) -> int:
        n = sum(1 for p in self.parts if isinstance(p, str) and p not in ("*", "**"))
        n += sum(1 for v in self.variables for p in v.parts if p not in ("*", "**"))
        return n + (1 if self.verb else 0)

    def match(self, path: str) -> dict[str, str] | None:
        """Bound values by dotted field path, or None if the path does not match."""
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        groups = m.groups()
        values: dict[str, str] = {}
        for variable, pieces in self.builders:
            values[variable.field_name] = "/".join(
                piece if isinstance(piece, str) else unquote(groups[piece]) for piece in pieces
            )
        return values


def parse_template(text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise TemplateError(f"{text!r}: a path template starts with '/'")
    body, verb = text[1:], ""
    # The verb is a ':' after the last '/' and outside braces.
    depth, cut = 0, -1
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ":" and depth == 0:
            cut = i
    if cut >= 0:
        body, verb = body[:cut], body[cut + 1 :]
        if not verb or "/" in verb:
            raise TemplateError(f"{text!r}: bad custom verb")
    parts: list[Part] = []
    for token in _split_top(body, text):
        if token.startswith("{"):
            if not token.endswith("}"):
                raise TemplateError(f"{text!r}: unclosed variable")
            inner = token[1:-1]
            name, eq, segs = inner.partition("=")
            sub = tuple(segs.split("/")) if eq else ("*",)
            if not name or any(not s or "{" in s or "}" in s for s in sub):
                raise TemplateError(f"{text!r}: bad variable {token}")
            parts.append(Variable(tuple(name.split(".")), sub))
        elif not token or "{" in token or "}" in token:
            raise TemplateError(f"{text!r}: bad segment {token!r}")
        else:
            parts.append(token)
    regex, builders = _compile(parts, verb)
    return PathTemplate(text, tuple(parts), verb, regex, builders)


def _split_top(body: str, text: str) -> list[str]:
    """Splits on '/' outside braces."""
    tokens, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"{text!r}: unbalanced braces")
        elif ch == "/" and depth == 0:
            tokens.append(body[start:i])
            start = i + 1
    if depth:
        raise TemplateError(f"{text!r}: unbalanced braces")
    tokens.append(body[start:])
    return tokens


def _compile(
    parts: Sequence[Part], verb: str
) -> tuple[re.Pattern[str], tuple[tuple[Variable, tuple[int | str, ...]], ...]]:
    pieces: list[str] = []
    builders: list[tuple[Variable, tuple[int | str, ...]]] = []
    group = 0
    for part in parts:
        if isinstance(part, Variable):
            sub_pieces: list[str] = []
            build: list[int | str] = []
            for seg in part.parts:
                if seg in ("*", "**"):
                    sub_pieces.append(f"({_SEGMENT if seg == '*' else _MULTI})")
                    build.append(group)
                    group += 1
                else:
                    sub_pieces.append(re.escape(seg))
                    build.append(kebab_to_camel(seg))
            pieces.append("/".join(sub_pieces))
            builders.append((part, tuple(build)))
        elif part == "*":
            pieces.append(_SEGMENT)
        elif part == "**":
            pieces.append(_MULTI)
        else:
            pieces.append(re.escape(part))
    pattern = "/" + "/".join(pieces) + (":" + re.escape(verb) if verb else "")
    return re.compile(pattern), tuple(builders)


@dataclass(frozen=True)
class Binding:
    """One HTTP rule of one RPC, with everything a request needs precomputed."""

    http_method: str  # upper case
    template: PathTemplate
    body: str  # "", "*" or a top-level field name
    response_body: str
    method: MethodDescriptor
    request_cls: Any
    response_cls: Any
    # Filled by __post_init__.
    grpc_path: str = field(init=False)
    server_streaming: bool = field(init=False)
    path_fields: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "grpc_path", f"/{self.method.containing_service.full_name}/{self.method.name}"
        )
        object.__setattr__(self, "server_streaming", bool(self.method.server_streaming))
        object.__setattr__(
            self, "path_fields", frozenset(v.field_name for v in self.template.variables)
        )

    @property
    def request_type(self) -> Descriptor:
        return self.method.input_type

    @property
    def response_type(self) -> Descriptor:
        return self.method.output_type

    @property
    def label(self) -> str:
        return f"{self.http_method} {self.template.text}"


@dataclass(frozen=True)
class Match:
    binding: Binding
    values: dict[str, str]


class RouteTable:
    """Bindings grouped by HTTP method, most specific template first."""

    def __init__(self, bindings: Iterable[Binding]):
        self.bindings: tuple[Binding, ...] = tuple(bindings)
        by_method: dict[str, list[Binding]] = {}
        for b in self.bindings:
            by_method.setdefault(b.http_method, []).append(b)
        self._by_method = {
            m: tuple(sorted(bs, key=lambda b: (-b.template.literal_count, b.template.text)))
            for m, bs in by_method.items()
        }

    def match(self, http_method: str, path: str) -> Match | None:
        for binding in self._by_method.get(http_method, ()):
            values = binding.template.match(path)
            if values is not None:
                return Match(binding, values)
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Methods that would match `path` (for a 405's Allow header)."""
        return sorted(
            m
            for m, bs in self._by_method.items()
            if any(b.template.regex.fullmatch(path) for b in bs)
        )

    def for_method(self, method: MethodDescriptor) -> list[Binding]:
        return [b for b in self.bindings if b.method.full_name == method.full_name]


def service_descriptors(package: str = "byok.v1") -> list[ServiceDescriptor]:
    """Every service of every generated `*_pb2` module of `package`."""
    pkg = importlib.import_module(package)
    services: list[ServiceDescriptor] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


def http_rules(method: MethodDescriptor) -> list[http_pb2.HttpRule]:
    """The method's HTTP rule and its additional bindings (empty when unannotated)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def _rule_pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError("an HTTP rule without a method and path")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), str(getattr(rule, kind))


def message_of(fd: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    if fd.message_type is None:
        raise TypeError(f"{fd.full_name} is not a message field")
    return fd.message_type


def type_name(fd: FieldDescriptor) -> str:
    """The full name of a message field's type; "" for other fields."""
    return fd.message_type.full_name if fd.message_type is not None else ""


def resolve_field(message: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """The field chain for a dotted path; accepts proto and lowerCamelCase names."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in dotted.split("."):
        if current is None:
            raise KeyError(dotted)
        fd = current.fields_by_name.get(name) or current.fields_by_camelcase_name.get(name)
        if fd is None:
            raise KeyError(dotted)
        chain.append(fd)
        current = fd.message_type
    return chain


def bindings_for(method: MethodDescriptor) -> Iterator[Binding]:
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    for rule in http_rules(method):
        http_method, path = _rule_pattern(rule)
        where = f"{method.full_name} ({http_method} {path})"
        try:
            template = parse_template(path)
        except TemplateError as exc:
            raise TemplateError(f"{where}: {exc}") from None
        for variable in template.variables:
            try:
                resolve_field(method.input_type, variable.field_name)
            except KeyError:
                raise TemplateError(f"{where}: no request field {variable.field_name!r}") from None
        for name, owner in (
            (rule.body, method.input_type),
            (rule.response_body, method.output_type),
        ):
            if name and name != "*" and name not in owner.fields_by_name:
                raise TemplateError(f"{where}: no field {name!r} in {owner.full_name}")
        yield Binding(
            http_method,
            template,
            rule.body,
            rule.response_body,
            method,
            request_cls,
            response_cls,
        )


def load_bindings(services: Iterable[ServiceDescriptor] | None = None) -> RouteTable:
    """The route table of every annotated method of `services` (default: byok.v1)."""
    bindings: list[Binding] = []
    for service in service_descriptors() if services is None else services:
        for method in service.methods:
            if method.client_streaming:
                continue  # not transcodable; no byok RPC streams from the client
            bindings.extend(bindings_for(method))
    return RouteTable(bindings)
