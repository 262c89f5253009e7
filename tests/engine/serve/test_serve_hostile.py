"""`moat serve` and `moat sim-server` under careless and hostile clients: each gets an error
that names what is wrong, and nothing of it reaches the log as a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.serve import MoatServer
from tests.engine.serve.test_serve import echo_graph
from tests.support.serve_client import http

pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (3, "messages[1].content"),
        ({"text": "hi"}, "messages[1].content"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[1].content[0]"),
        ([{"type": "text", "text": "a"}, "b"], "messages[1].content[1]"),
        ([{"type": "text", "text": 5}], "messages[1].content[0].text"),
    ],
    ids=["number", "object", "image-part", "bare-string-part", "text-not-string"],
)
async def test_a_bad_message_content_is_a_400_naming_the_content_field(
    tmp_path: Path, content: Any, param: str
) -> None:
    body = {"model": "echo", "messages": [USER, {"role": "user", "content": content}]}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param} ")
