"""Request bodies `moat serve` reads one way only: a key twice in one object is refused
(a proxy in front may read the other one), so are NaN and Infinity (not JSON, though
Python's reader takes them), and a body sent as a form says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.serve import MoatServer
from engine.serve._http import _decode
from engine.serve.wire import ApiError
from engine.store.store import Store
from tests.engine.serve.test_serve import echo_graph
from tests.support.serve_client import http

pytestmark = pytest.mark.anyio

MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"model": "other", "model": "echo", ' + MESSAGES + "}", "model"),
        ('{"model": "echo", ' + MESSAGES + ', "messages": []}', "messages"),
        (
            '{"model": "echo", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
            "role",
        ),
    ],
    ids=["model", "messages", "nested-role"],
)
async def test_a_key_twice_in_one_object_is_a_400_naming_it(
    tmp_path: Path, raw: str, key: str
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", content=raw.encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (key, "invalid_json")
    assert error["message"] == (
        f"the request body has the key '{key}' twice in one object; JSON readers differ on "
        "which one counts, so send each key once"
    )


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1E+400"])
@pytest.mark.parametrize("field", ["temperature", "x_unknown"])
async def test_nan_or_infinity_anywhere_is_a_400_saying_the_body_is_not_json(
    tmp_path: Path, number: str, field: str
) -> None:
    db = tmp_path / "moat.db"
    raw = f'{{"model": "echo", {MESSAGES}, "{field}": {number}}}'
    async with MoatServer([echo_graph(tmp_path)], db=db) as server, http(server) as web:
        response = await web.post("/chat/completions", content=raw.encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (None, "invalid_json")
    assert error["message"].startswith("the request body is not valid JSON: ")
    assert number in error["message"] and "send a finite number" in error["message"]
    with Store.open(db, readonly=True) as store:
        assert store.query("SELECT id FROM requests") == []


async def test_a_form_body_is_a_400_saying_it_was_sent_as_a_form(tmp_path: Path) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        form = await web.post("/chat/completions", data={"model": "echo"})
        plain = await web.post(
            "/chat/completions",
            content=b'{"model": "echo", ' + MESSAGES.encode() + b"}",
            headers={"content-type": "text/plain"},
        )
    assert form.status_code == 400
    assert form.json()["error"]["message"] == (
        "the request body is not JSON (line 1, column 1: Expecting value); it was sent as "
        "application/x-www-form-urlencoded: send a JSON object as application/json"
    )
    assert plain.status_code == 200  # JSON is read whatever its Content-Type says


FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_a_body_with_each_key_once_reads_as_any_json_reader_reads_it(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert _decode(raw) == json.loads(raw)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), JSON, min_size=1), st.data())
def test_a_body_with_a_key_twice_is_refused_wherever_the_object_is(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    inner = json.dumps(obj)[:-1] + f", {json.dumps(key)}: 1}}"
    raw = data.draw(st.sampled_from([inner, f'{{"a": [{inner}]}}', f"[1, {inner}]"]))
    with pytest.raises(ApiError) as caught:
        _decode(raw.encode())
    assert caught.value.status == 400 and caught.value.param == key[:100]
