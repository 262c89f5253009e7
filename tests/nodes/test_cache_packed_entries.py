"""A cache entry keeps its slots, vector, template and string value packed into one bytes
object, and the MinHash index keeps each member's band keys packed: what goes in comes back
out unchanged, and the comparisons made on the packed form are the plain ones."""

from __future__ import annotations

import operator
from array import array
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nodes._support.lsh import _pack_keys, _unpack_keys
from nodes._support.semcache import Entry, SemanticCache, packed_slots

_strings = st.text() | st.text(alphabet="\x00\x01\x02\x03\x04")
"""Any code points (lone surrogates included), and strings of length-prefix-like bytes."""
_slots = st.lists(_strings, max_size=5).map(tuple)
_vectors = st.tuples(
    st.lists(st.integers(-128, 127), max_size=300).map(lambda v: array("b", v)),
    st.floats(allow_nan=False),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=8,
)
_times = st.floats(allow_nan=False)


@st.composite
def _fields(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "key": draw(_strings),
        "scope": draw(_strings),
        "template": draw(_strings),
        "slots": draw(_slots),
        "value": draw(_json),
        "negative": draw(st.booleans()),
        "vector": draw(_vectors),
        "ttl_s": draw(_times),
        "expires_at": draw(_times),
        "hits": draw(st.integers(0, 10**6)),
        "size": draw(st.integers(0, 10**9)),
        "stored_at": draw(_times),
    }


@given(_fields())
def test_a_packed_entry_gives_back_every_field_it_was_made_of(fields: dict[str, Any]) -> None:
    entry = Entry(**fields)
    for name, expected in fields.items():
        got = getattr(entry, name)
        assert type(got) is type(expected), name
        assert got == expected, name
    assert entry == Entry(**fields)
    assert entry.record() == {
        k: list(v) if k == "slots" else v for k, v in fields.items() if k not in ("vector", "size")
    }


@given(_fields(), _slots)
def test_the_packed_slot_check_is_slot_equality(
    fields: dict[str, Any], other: tuple[str, ...]
) -> None:
    entry = Entry(**fields)
    assert entry.has_slots(packed_slots(fields["slots"]))
    assert entry.has_slots(packed_slots(other)) == (other == fields["slots"])


@given(_fields(), st.lists(st.floats(-1.0, 1.0), max_size=300))
def test_the_packed_similarity_is_the_plain_scaled_dot_product(
    fields: dict[str, Any], query: list[float]
) -> None:
    q8, scale = fields["vector"]
    expected = float(sum(map(operator.mul, query, q8)) * scale)
    assert Entry(**fields).similarity(query).hex() == expected.hex()


_keys = st.lists(st.tuples(st.integers(0, 255), st.integers(-(2**63), 2**63 - 1)), max_size=32).map(
    tuple
)


@given(_keys)
def test_packed_band_keys_unpack_to_the_same_keys_in_order(
    keys: tuple[tuple[int, int], ...],
) -> None:
    assert tuple(_unpack_keys(_pack_keys(keys))) == keys


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), _strings, _json), max_size=12))
def test_what_the_cache_stores_is_what_an_exact_lookup_answers(
    stores: list[tuple[str, str, Any]],
) -> None:
    cache = SemanticCache("answers", clock=lambda: 1000.0)
    latest: dict[tuple[str, str], Any] = {}
    for tenant, text, value in stores:
        cache.store(tenant, text, value, scope="s")
        latest[(tenant, cache.lookup(tenant, text, scope="s", threshold=1.0).key)] = value
    for tenant, text, _ in stores:
        found = cache.lookup(tenant, text, scope="s", threshold=1.0)
        assert found.entry is not None and found.exact
        expected = latest[(tenant, found.key)]
        assert type(found.entry.value) is type(expected)
        assert found.entry.value == expected
