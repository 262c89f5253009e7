"""The sync wire format and the bandwidth cap."""

from __future__ import annotations

import gzip

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.sync import TokenBucket, WireError, decode_batch, encode_batch
from engine.sync.codec import MAX_BATCH_BYTES

BATCH = b'{"v":1,"origin":"ab","table":"runs","columns":%s,"rows":[%s]}'

values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.binary(max_size=40),
)


@given(rows=st.lists(st.lists(values, min_size=3, max_size=3), max_size=20))
@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_a_batch_round_trips(codec: str, rows: list[list[object]]) -> None:
    body, raw = encode_batch("ab12", "node_runs", ["a", "b", "c"], rows, codec)
    payload = decode_batch(body, codec)
    assert payload.rows == rows
    assert (payload.origin, payload.table, payload.columns) == ("ab12", "node_runs", list("abc"))
    assert raw >= len(b'{"v":1}')


def test_a_body_that_inflates_past_the_limit_is_refused() -> None:
    bomb = gzip.compress(b" " * (MAX_BATCH_BYTES + 10))
    with pytest.raises(WireError, match="inflates past"):
        decode_batch(bomb, "gzip")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"v": 2}', "protocol version 1"),
        (b'{"v":1,"origin":"a-b","table":"t","columns":[],"rows":[]}', "alphanumeric"),
        (b'{"v":1,"origin":"ab","table":"t","columns":["x"],"rows":[[1,2]]}', "one value per"),
        (b"not json", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (BATCH % (b'["x"]', b"[" + b"9" * 5000 + b"]"), r"Exceeds the limit \(4300 digits\)"),
        (BATCH % (b'["x"]', b'[{"$b64": 5}]'), r"`\$b64` value is not base64"),
        (BATCH % (b'["x"]', b'[{"$b64": "no!"}]'), r"`\$b64` value is not base64"),
        (BATCH % (b'["x","y"]', b'[1, {"a": 1}]'), r"rows\[0\], column 'y': a JSON object"),
        (BATCH % (b'["x"]', b"[[1]]"), "column 'x': a JSON array"),
        (BATCH % (b'["x"]', b'["\\ud800"]'), "column 'x': text with a lone surrogate"),
        (BATCH % (b'["x"]', b"[9223372036854775808]"), "an integer beyond 64 bits"),
        (BATCH % (b'["x","x"]', b"[1, 2]"), r"names \['x'\] more than once"),
    ],
    ids=[
        "version",
        "origin",
        "row-width",
        "not-json",
        "deep",
        "digits",
        "b64-type",
        "b64-text",
        "object",
        "array",
        "surrogate",
        "int64",
        "columns-twice",
    ],
)
def test_a_malformed_batch_says_what_is_wrong(body: bytes, message: str) -> None:
    """Each is a `WireError` (the server's 400), never another exception (its 500)."""
    with pytest.raises(WireError, match=message):
        decode_batch(body, "identity")


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        ("zstd", r"body is cut short: its zstd frame inflates to \d+ of its \d+ bytes; send the"),
        ("gzip", r"body is cut short: its gzip stream stops after \d+ bytes, short of its end"),
    ],
)
def test_a_body_cut_short_says_so(codec: str, message: str) -> None:
    """It was "body is not JSON: Expecting ...", or went through when only the end of the
    stream (a checksum) was missing."""
    body, _ = encode_batch("ab12", "node_runs", ["a"], [[i] for i in range(5000)], codec)
    for cut in (len(body) // 2, len(body) - 4):
        with pytest.raises(WireError, match=message):
            decode_batch(body[:cut], codec)


def test_an_unknown_encoding_is_named() -> None:
    with pytest.raises(WireError, match="'br' is not supported"):
        decode_batch(b"", "br")


@pytest.mark.anyio
async def test_the_bucket_holds_the_average_rate_to_its_cap() -> None:
    bucket = TokenBucket(rate=20_000, burst=1_000)  # starts empty
    start = anyio.current_time()
    for _ in range(10):
        await bucket.take(1_000)
    elapsed = anyio.current_time() - start
    assert elapsed >= 10_000 / 20_000 * 0.95


@pytest.mark.anyio
async def test_a_batch_larger_than_the_burst_still_goes_out_whole() -> None:
    bucket = TokenBucket(rate=100_000, burst=1_000)
    waited = await bucket.take(6_000)
    assert waited == pytest.approx(0.06, rel=0.05)


def test_kbps_means_kilobits() -> None:
    assert TokenBucket.from_kbps(256).rate == 32_000
