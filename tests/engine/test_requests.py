"""The one request reader: whatever bytes a line holds, it yields one item per non-blank line
and never raises; a line over the size limit is skipped without being held in memory."""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.requests import (
    RequestLimits,
    count_requests,
    decode_request,
    parse_request,
    read_jsonl,
    show_value,
)


def test_a_huge_line_is_skipped_without_being_read_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"prompt": "a"}\n{"prompt": "')
        for _ in range(64):
            fh.write(b"x" * (1 << 17))  # 8 MiB on one line
        fh.write(b'"}\n{"prompt": "b"}\n')
    limits = RequestLimits(max_request_bytes=4096)
    tracemalloc.start()
    try:
        items = list(read_jsonl(path, limits=limits))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # a bound on memory, not a timing: the line is 8 MiB
    assert [item.input for item in items] == [{"prompt": "a"}, None, {"prompt": "b"}]
    assert items[1].error == (
        f"{path}:2: the request is {8 * (1 << 20) + 14} bytes, over the limit of 4096; "
        "shorten it, or raise `limits: {max_request_bytes: ...}` in the graph "
        "(or `moat run --max-request-bytes N`)"
    )
    assert count_requests(path, limits=limits) == 3


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"", b"   ", b"\r", b" \t ", b"{}", b'{"prompt": "x"}', b"[" * 50]),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(chunks=lines, limit=st.integers(1, 40), depth=st.integers(1, 6))
def test_every_non_blank_line_is_one_item_and_counting_agrees(
    chunks: list[bytes], limit: int, depth: int
) -> None:
    data = b"\n".join(chunks)
    assume(not data.startswith(UTF16_BOMS))  # a UTF-16 file: the property below
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        path.write_bytes(data)
        limits = RequestLimits(max_request_bytes=limit, max_depth=depth)
        items = list(read_jsonl(path, limits=limits))
        assert count_requests(path, limits=limits) == len(items)
    expected = [n for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    assert [item.line for item in items] == expected
    assert [item.seq for item in items] == list(range(len(items)))
    for item in items:
        assert (item.input is None) == (item.error is not None)
        if item.error is not None:
            assert item.error.startswith(f"{path}:{item.line}")


UTF16_REQUESTS = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(
            lambda p: json.dumps({"prompt": p}, ensure_ascii=False)
        ),
        st.sampled_from(["", "  ", "\t"]),  # blank lines
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(
    requests=UTF16_REQUESTS,
    encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]),
    ending=st.sampled_from(["\n", "\r\n"]),
    final=st.sampled_from(["", "\n", "\r\n", "\x00"]),
)
def test_a_utf16_file_with_its_bom_gives_one_item_per_request_and_none_for_its_line_ends(
    requests: list[str], encoding: str, ending: str, final: str
) -> None:
    """A UTF-16 file is split at its newline characters: not at each 0x0A byte (the NUL of
    a little-endian `\n` would start the next line, the last on a line of its own, and
    many a character holds a 0x0A byte). Each request is one item, asking for UTF-8."""
    bom = "\ufeff" if encoding != "utf-16" else ""  # the `utf-16` codec writes its own
    text = bom + ending.join(requests) + final
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        path.write_bytes(text.encode(encoding))
        items = list(read_jsonl(path))
        counted = count_requests(path)
    expected = [n for n, line in enumerate(requests, start=1) if line.strip()]
    if not expected:  # nothing but blank lines (and a final NUL): no request at all
        assert items == [] and counted == 0
        return
    assert [item.line for item in items] == expected and counted == len(expected)
    for item in items:
        assert item.error is not None
        assert item.error.endswith("the file looks UTF-16: save it as UTF-8"), item.error


def test_a_utf16_file_ending_in_a_newline_is_as_many_requests_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes('{"prompt": "a"}\n{"prompt": "b"}\n'.encode("utf-16"))  # BOM first
    assert [item.line for item in read_jsonl(path)] == [1, 2]
    assert count_requests(path) == 2


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["\ud800", float("nan"), b"bytes", object()])
    | st.just(5000).map(lambda digits: 10**digits),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_parse_request_never_raises_and_a_good_request_survives_json(value: object) -> None:
    item = parse_request(value, seq=0, limits=RequestLimits(max_depth=4))
    assert (item.input is None) == (item.error is not None)
    if item.input is not None:
        text = json.dumps(item.input, ensure_ascii=False)
        text.encode("utf-8")  # storable and writable as UTF-8
        again = decode_request(text, seq=0, limits=RequestLimits(max_depth=4))
        assert again.error is None


@settings(max_examples=150, deadline=None)
@given(text=st.text() | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_decode_request_never_raises(text: str) -> None:
    item = decode_request(text, seq=0, source="--json")
    assert (item.input is None) == (item.error is not None)
    assert item.error is None or item.error.startswith("--json:")


def test_values_are_shown_as_the_graph_language_writes_them() -> None:
    assert show_value(None) == "none"
    assert show_value([True, False, {"a": None}]) == "[true, false, {'a': none}]"
    assert show_value("x" * 100) == repr("x" * 100)[:57] + "..."


_SCHEMAS = [
    {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "tenant": {"type": "string", "default": "public"},
        },
    },
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 5},
            "x": {"type": ["number", "null"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
            "mode": {"enum": ["a", "b", 1, True, None]},
            "flag": {"type": "boolean"},
        },
    },
    {"type": "object", "properties": {"deep": {"type": "object", "required": ["k"]}}},
    {},
]
_VALIDATORS = [jsonschema.Draft202012Validator(schema) for schema in _SCHEMAS]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 8) | st.floats(-2, 9) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["prompt", "tenant", "n", "x", "tags", "mode", "flag", "deep", "k"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(index=st.integers(0, len(_SCHEMAS) - 1), value=_JSON)
def test_the_fast_schema_check_never_accepts_what_jsonschema_rejects(
    index: int, value: object
) -> None:
    from engine.requests import surely_valid

    check = surely_valid(_SCHEMAS[index])
    assert check is not None  # every schema above is of the kinds it knows
    if check(value):
        assert _VALIDATORS[index].is_valid(value)


def test_the_fast_schema_check_accepts_common_requests_and_leaves_the_rest_to_jsonschema() -> None:
    from engine.requests import BatchItem, InputValidator, surely_valid

    check = surely_valid(_SCHEMAS[0])
    assert check is not None
    assert check({"prompt": "hi", "tenant": "t"})
    assert not check({"prompt": ""}) and not check({"tenant": "t"})
    assert surely_valid({"type": "object", "patternProperties": {}}) is None
    validator = InputValidator(_SCHEMAS[0])
    assert validator.validate(BatchItem(0, {"prompt": "hi"})) == (
        {"prompt": "hi", "tenant": "public"},
        None,
    )
    data, error = validator.validate(BatchItem(0, {"prompt": ""}))
    assert data is None and error == "request: input prompt: '' should be non-empty"


_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(
    st.one_of(
        st.dictionaries(st.text(max_size=8), _scalars, max_size=6),
        st.dictionaries(st.text(max_size=4), st.lists(_scalars, max_size=2), max_size=2),
        st.lists(_scalars, max_size=3),
        _scalars,
    ),
    st.integers(min_value=0, max_value=3),
)
def test_the_flat_request_path_measures_what_the_walk_measures(value: Any, depth: int) -> None:
    from engine.requests import RequestLimits, _flat_size, _walk

    limits = RequestLimits(max_depth=depth)
    flat = _flat_size(value, limits)
    if flat is not None:  # taken only where the walk finds no problem, with the same bound
        assert _walk(value, limits) == (None, flat)
    plain = isinstance(value, dict) and depth >= 1
    if plain and all(isinstance(v, str | int | bool | type(None)) for v in value.values()):
        ascii_only = all(k.isascii() for k in value) and all(
            v.isascii() for v in value.values() if isinstance(v, str)
        )
        assert (flat is not None) == ascii_only


@settings(max_examples=150, deadline=None)
@given(
    value=st.dictionaries(
        st.sampled_from(["prompt", "tenant", "_labels", "turn_index", "conversation_id", "x"]),
        st.none() | st.integers() | st.text(max_size=5) | st.dictionaries(st.text(), st.integers()),
    ),
    declared=st.frozensets(st.sampled_from(["turn_index", "conversation_id", "prompt"])),
)
def test_a_plain_request_is_split_as_any_mapping_is(
    value: dict[str, Any], declared: frozenset[str]
) -> None:
    from types import MappingProxyType

    from engine.requests import _split

    fast = _split(value, seq=3, line=None, source="request", declared=declared)
    general = _split(MappingProxyType(value), seq=3, line=None, source="request", declared=declared)
    assert fast == general
    assert fast.input is not value  # the caller's mapping is never the input itself


@given(
    st.one_of(
        st.lists(st.text()),
        st.dictionaries(st.text(), st.integers()),
        st.booleans(),
        st.floats(allow_nan=False),
    )
)
def test_a_tenant_that_is_not_a_name_is_invalid_input_whatever_the_schema(tenant: Any) -> None:
    from engine.requests import BatchItem, InputValidator

    validator = InputValidator({"type": "object", "properties": {"prompt": {"type": "string"}}})
    item = BatchItem(0, {"prompt": "hi", "tenant": tenant}, line=4, source="in.jsonl")
    data, error = validator.validate(item)
    assert data is None
    assert error is not None and error.startswith("in.jsonl:4: input tenant: must be a string")
    for name in ("acme", 42):
        named, fine = validator.validate(BatchItem(1, {"prompt": "hi", "tenant": name}))
        assert fine is None and named is not None and named["tenant"] == name


@given(st.text(max_size=300))
def test_a_tenant_string_is_a_name_any_store_log_or_label_can_carry(tenant: str) -> None:
    from engine.requests import BatchItem, InputValidator

    validator = InputValidator({"type": "object", "properties": {"prompt": {"type": "string"}}})
    data, error = validator.validate(BatchItem(0, {"prompt": "hi", "tenant": tenant}, line=2))
    plain = tenant.strip() and len(tenant) <= 256
    plain = plain and not any(ord(c) < 32 or ord(c) == 127 for c in tenant)
    if plain:
        assert error is None and data is not None and data["tenant"] == tenant
    else:
        assert data is None and error is not None and error.startswith("request:2: input tenant:")


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(["conversation_id", "turn_index", "parent_request_id"]),
    value=st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
def test_a_meta_field_is_one_the_request_row_can_hold_or_the_request_is_invalid(
    key: str, value: Any
) -> None:
    """Meta fields go to the request row's columns: a value they cannot hold would fail
    the store's write of every request committed with it."""
    item = parse_request({"prompt": "hi", key: value}, seq=0, line=3, source="in.jsonl")
    if item.error is not None:
        assert item.error.startswith(f"in.jsonl:3: `{key}` must be")
        return
    recorded = item.meta[key]
    if key == "turn_index":
        assert recorded is None or (type(recorded) is int and 0 <= recorded < 1 << 63)
    else:
        assert recorded is None or type(recorded) is str


def test_an_integer_id_is_recorded_as_its_digits() -> None:
    item = parse_request({"prompt": "hi", "conversation_id": 42, "turn_index": 0}, seq=0)
    assert item.error is None
    assert item.meta == {"conversation_id": "42", "turn_index": 0}
