"""Finished spans written straight to OTLP protobuf bytes (an `ExportTraceServiceRequest`).

The OTLP exporter builds a Python protobuf message per span, event, key-value and value,
then serialises the tree: about 1.3 ms for a flagship request's 17 spans and 200
key-values, five times the cost of building the spans. The wire format of these few
messages is small and frozen (opentelemetry-proto's `trace.proto`, `common.proto`), so
this writes it directly, bottom-up with `bytes` joins, caching the encoded keys (a few
dozen attribute names recur in every request) and each resource's and scope's bytes.

It mirrors `opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans` field
for field (grouping by resource then scope, the span flags, an always-present status),
so a collector decodes the same message: `tests/engine/telemetry/test_otlp_wire.py`
checks that over generated attribute values. A value the protobuf cannot hold (an int
beyond 64 bits, an unknown type) drops its attribute, as the reference encoder does.

Its pieces (`field`, `text`, `key_value`, `Pairs`, `double_prefix`, `envelope`) are also
what `wire_spans` writes a request's spans with, straight from its records.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = [
    "LENGTHS",
    "Kept",
    "Pairs",
    "TextPairs",
    "double_prefix",
    "encode_spans",
    "envelope",
    "envelope_parts",
    "field",
    "key_value",
    "text",
    "varint",
]

_log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1
_VARINTS = [bytes([n]) for n in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus IS_REMOTE for a remote parent
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32(0x300)
_KINDS = {0: b"\x30\x01", 1: b"\x30\x02", 2: b"\x30\x03", 3: b"\x30\x04", 4: b"\x30\x05"}
"""SpanKind (INTERNAL=0 ... CONSUMER=4 in the API) as the proto's enum (one higher)."""


def varint(n: int) -> bytes:
    """An unsigned varint (a length, a tag, a non-negative number)."""
    if n < 0x80:
        return _VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


LENGTHS = [varint(n) for n in range(1 << 14)]
"""The varint of every length below 16 KiB (one or two bytes): a span or event is that
long, and a list lookup costs a tenth of `_varint`."""


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (LENGTHS[n] if n < 0x4000 else varint(n)) + payload


def text(tag: bytes, value: str) -> bytes:
    """A string field: tag, length, UTF-8."""
    return field(tag, value.encode("utf-8"))


def _value(value: Any) -> bytes:
    """An `AnyValue`'s body; the oneof's field is written even when it holds a default."""
    kind = type(value)  # the exact types first: an isinstance of an ABC is slow
    if kind is str:
        return text(b"\x0a", value)
    if kind is int:
        return _int(value)
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if kind is tuple or kind is list:
        return _array(value)
    return _other(value)


def _array(values: Sequence[Any]) -> bytes:
    return field(b"\x2a", b"".join([field(b"\x0a", _value(v)) for v in values]))


def _other(value: Any) -> bytes:
    """The rarer values: None, booleans, subclasses, bytes, other sequences, mappings."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return text(b"\x0a", value)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _array(value)
    if isinstance(value, Mapping):
        pairs = [field(b"\x0a", _key(str(k)) + field(b"\x12", _value(v))) for k, v in value.items()]
        return field(b"\x32", b"".join(pairs))
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


def _int(value: int) -> bytes:
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"{value} does not fit an int64")
    return b"\x18" + varint(value & _U64)


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """`KeyValue.key`, encoded once per name (attribute names recur in every request)."""
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = text(b"\x0a", key)
        if len(_KEYS) < 4096:  # a bound: keys from payloads are open-ended
            _KEYS[key] = encoded
    return encoded


_PAIRS: dict[tuple[str, Any, type, bytes], bytes] = {}
_CACHED = frozenset({str, bool})
"""Whole key-values are kept for strings and booleans: a status, an outcome, a model
name recur in every request. Keyed with the type, since `True == 1 == 1.0`, and the
field tag of the message holding them."""


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated `KeyValue`s under `tag`; an attribute that cannot be encoded is dropped."""
    if not attributes:
        return b""
    out = []
    for key, value in attributes.items():
        kind = type(value)
        cached = kind in _CACHED
        if cached:
            encoded = _PAIRS.get((key, value, kind, tag))
            if encoded is not None:
                out.append(encoded)
                continue
        try:
            body = _key(key) + field(b"\x12", _value(value))
        except (TypeError, ValueError, UnicodeError) as error:
            _log.warning("span attribute %s not exported: %s", key, error)
            continue
        n = len(body)
        encoded = tag + (_VARINTS[n] if n < 0x80 else varint(n)) + body
        if cached:
            if len(_PAIRS) >= 8192:  # unique values (ids, hashes) would grow it forever
                _PAIRS.clear()
            _PAIRS[(key, value, kind, tag)] = encoded
        out.append(encoded)
    return b"".join(out)


def key_value(tag: bytes, key: str, value: Any) -> bytes:
    """One attribute (a `KeyValue` under `tag`); empty when its value cannot be encoded."""
    try:
        body = _key(key) + field(b"\x12", _value(value))
    except (TypeError, ValueError, UnicodeError) as error:
        _log.warning("span attribute %s not exported: %s", key, error)
        return b""
    return field(tag, body)


class Pairs(dict[Any, bytes]):
    """Attribute `key` under `tag`, encoded once per value: `pairs[value]` is a dict lookup
    once the value has been seen (statuses, outcomes, models, node names recur in every
    request). Values of one type per instance, since `True == 1 == 1.0` as keys; at most
    `limit` values are kept (ids and token counts are open-ended), the rest are encoded
    each time."""

    __slots__ = ("key", "limit", "tag")

    def __init__(self, tag: bytes, key: str, limit: int = 1024) -> None:
        super().__init__()
        self.tag = tag
        self.key = key
        self.limit = limit

    def __missing__(self, value: Any) -> bytes:
        encoded = key_value(self.tag, self.key, value)
        if len(self) < self.limit:
            self[value] = encoded
        return encoded


_T = TypeVar("_T")


class Kept(dict[Any, _T]):
    """Encodings built once per key by `build` (at most `limit` keys kept, the rest are
    built each time)."""

    __slots__ = ("build", "limit")

    def __init__(self, build: Callable[[Any], _T], limit: int = 4096) -> None:
        super().__init__()
        self.build = build
        self.limit = limit

    def __missing__(self, key: Any) -> _T:
        encoded = self.build(key)
        if len(self) < self.limit:
            self[key] = encoded
        return encoded


class TextPairs(dict[int, bytes]):
    """String attribute `key` under `tag` for values that do not recur (ids, hashes): the
    bytes before the value's UTF-8 are kept per length, `pairs.of(value)` is then one
    concatenation."""

    __slots__ = ("key", "tag")

    def __init__(self, tag: bytes, key: str) -> None:
        super().__init__()
        self.tag = tag
        self.key = key

    def __missing__(self, size: int) -> bytes:
        encoded = key_value(self.tag, self.key, "\0" * size)
        prefix = encoded[: len(encoded) - size]
        if len(self) < 1024:
            self[size] = prefix
        return prefix

    def of(self, value: str) -> bytes:
        """The `KeyValue` of `value` (empty, as `key_value` gives, when it cannot be encoded)."""
        if type(value) is not str:
            return key_value(self.tag, self.key, value)
        try:
            data = value.encode("utf-8")
        except UnicodeError:  # a lone surrogate: dropped, as `key_value` drops it
            return key_value(self.tag, self.key, value)
        return self[len(data)] + data


def double_prefix(tag: bytes, key: str) -> bytes:
    """What precedes the 8 bytes of a double attribute `key` under `tag`: the value is then
    `double_prefix(tag, key) + struct.pack("<d", value)`, one concatenation."""
    body = _key(key) + b"\x12\x09\x21"
    return tag + varint(len(body) + 8) + body


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    if status is None:
        return b""
    body = b""
    if status.description:
        body += text(b"\x12", status.description)
    code = status.status_code.value
    if code:
        body += b"\x18" + varint(code)
    return field(b"\x7a", body)


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None  # a finished span always has one
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    state = context.trace_state
    if state:
        parts.append(text(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items())))
    parent = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(text(b"\x2a", span.name))
    parts.append(_KINDS[span.kind.value])
    if span.start_time:
        parts.append(b"\x39" + _FIXED64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _FIXED64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _FIXED64(event.timestamp) if event.timestamp else b""
        body += text(b"\x12", event.name) + _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + varint(event.dropped_attributes)
        parts.append(field(b"\x5a", body))
    if span.dropped_events:
        parts.append(b"\x60" + varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        body += _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + varint(link.dropped_attributes)
        body += b"\x35" + _FIXED32(0x300 if linked.is_remote else 0x100)
        parts.append(field(b"\x6a", body))
    if span.dropped_links:
        parts.append(b"\x70" + varint(span.dropped_links))
    parts.append(_status(span))
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


class _Headers:
    """Each resource's and scope's encoded bytes, kept: they are the same for every batch."""

    def __init__(self) -> None:
        self.resources: dict[Resource, bytes] = {}
        self.scopes: dict[InstrumentationScope | None, bytes] = {}

    def resource(self, resource: Resource) -> bytes:
        encoded = self.resources.get(resource)
        if encoded is None:
            encoded = field(b"\x0a", _attributes(b"\x0a", resource.attributes))
            if len(self.resources) < 64:
                self.resources[resource] = encoded
        return encoded

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        encoded = self.scopes.get(scope)
        if encoded is None:
            body = b""
            if scope is not None:
                if scope.name:
                    body += text(b"\x0a", scope.name)
                if scope.version:
                    body += text(b"\x12", scope.version)
                body += _attributes(b"\x1a", scope.attributes)
            encoded = field(b"\x0a", body)  # its schema url is ScopeSpans', added there
            if len(self.scopes) < 64:
                self.scopes[scope] = encoded
        return encoded


_HEADERS = _Headers()


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised `ExportTraceServiceRequest` of `spans`."""
    # by identity: hashing a Resource serialises its attributes to JSON, per span; equal
    # resources that are distinct objects are merged below
    grouped: dict[int, dict[InstrumentationScope | None, list[bytes]]] = {}
    resources: dict[int, Resource] = {}
    for span in spans:
        resource = span.resource
        scopes = grouped.get(id(resource))
        if scopes is None:
            scopes = grouped[id(resource)] = {}
            resources[id(resource)] = resource
        scopes.setdefault(span.instrumentation_scope or None, []).append(
            field(b"\x12", _span(span))
        )
    if len(resources) > 1:
        grouped = _merge(grouped, resources)
    out = []
    for key, scopes in grouped.items():
        resource = resources[key]
        body = [_HEADERS.resource(resource)]
        for scope, encoded in scopes.items():
            scope_spans = _HEADERS.scope(scope) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_spans += text(b"\x1a", scope.schema_url)
            body.append(field(b"\x12", scope_spans))
        if resource.schema_url:
            body.append(text(b"\x1a", resource.schema_url))
        out.append(field(b"\x0a", b"".join(body)))
    return b"".join(out)


def envelope(resource: Resource, scope: InstrumentationScope, spans: bytes) -> bytes:
    """The serialised `ExportTraceServiceRequest` of encoded `Span` fields (`ScopeSpans.spans`,
    tag 2 each) that share `resource` and `scope`: the batch a span builder posts."""
    return b"".join(envelope_parts(resource, scope, [spans]))


def envelope_parts(
    resource: Resource, scope: InstrumentationScope, spans: Sequence[bytes]
) -> list[bytes]:
    """`envelope` of the concatenation of `spans`, as pieces to join once: the spans are not
    copied until then."""
    size = sum(map(len, spans))
    scope_head = _HEADERS.scope(scope)
    scope_tail = text(b"\x1a", scope.schema_url) if scope.schema_url else b""
    scope_size = len(scope_head) + size + len(scope_tail)
    resource_head = _HEADERS.resource(resource)
    resource_tail = text(b"\x1a", resource.schema_url) if resource.schema_url else b""
    body_size = len(resource_head) + 1 + len(varint(scope_size)) + scope_size + len(resource_tail)
    return [
        b"\x0a",
        varint(body_size),
        resource_head,
        b"\x12",
        varint(scope_size),
        scope_head,
        *spans,
        scope_tail,
        resource_tail,
    ]


def _merge(
    grouped: dict[int, dict[InstrumentationScope | None, list[bytes]]],
    resources: dict[int, Resource],
) -> dict[int, dict[InstrumentationScope | None, list[bytes]]]:
    """Equal resources held by distinct objects as one group, as the reference encoder has."""
    first: dict[Resource, int] = {}
    merged: dict[int, dict[InstrumentationScope | None, list[bytes]]] = {}
    for key, scopes in grouped.items():
        into = merged.setdefault(first.setdefault(resources[key], key), {})
        for scope, encoded in scopes.items():
            into.setdefault(scope, []).extend(encoded)
    return merged
