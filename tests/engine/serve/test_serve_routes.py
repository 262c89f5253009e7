"""`moat serve`'s routes besides chat: retrieving one model, paths with a trailing slash
(answered, never redirected), and `/metrics`, open to scrapes unless `--metrics-auth`."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from engine.serve import KeyRing, MoatServer, ShapingLimits, hash_key
from engine.serve.sim_app import SimServer
from engine.serve.workers import worker_spec
from tests.engine.serve.test_serve import echo_graph
from tests.engine.serve.test_serve_hostile import SIM, sim_http
from tests.support.serve_client import client, http

pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "hi"}


def second_graph(dest: Path) -> Path:
    path = dest / "other.yaml"
    path.write_text(echo_graph(dest).read_text().replace("name: echo", "name: other"))
    return path


async def test_retrieving_a_served_graph_gives_the_model_object_the_list_gives(
    tmp_path: Path,
) -> None:
    graphs = [echo_graph(tmp_path), second_graph(tmp_path)]
    async with MoatServer(graphs, db=None) as server, client(server) as oai:
        listed = {model.id: model for model in (await oai.models.list()).data}
        retrieved = [await oai.models.retrieve(name) for name in ("echo", "other")]
    assert [model.id for model in retrieved] == ["echo", "other"]
    assert retrieved == [listed["echo"], listed["other"]]
    assert retrieved[0].object == "model" and retrieved[0].owned_by == "moat"


async def test_retrieving_an_unknown_model_is_a_404_naming_it_and_the_served_ones(
    tmp_path: Path,
) -> None:
    graphs = [echo_graph(tmp_path), second_graph(tmp_path)]
    async with MoatServer(graphs, db=None) as server, client(server) as oai:
        with pytest.raises(openai.NotFoundError) as caught:
            await oai.models.retrieve("gpt-4o")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "no graph is served as 'gpt-4o'; served: echo, other"


async def test_with_keys_retrieving_a_model_needs_a_key_and_tells_nothing_without_one(
    tmp_path: Path,
) -> None:
    keys = KeyRing({hash_key("sk-acme"): "acme"})
    server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys)
    async with server, http(server) as web:
        known = await web.get("/models/echo")
        unknown = await web.get("/models/secret")
        keyed = await web.get("/models/echo", headers={"authorization": "Bearer sk-acme"})
    assert known.status_code == unknown.status_code == 401
    assert known.json() == unknown.json()
    assert keyed.status_code == 200 and keyed.json()["id"] == "echo"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_chat_path_with_a_trailing_slash_is_answered_not_redirected(
    tmp_path: Path, stream: bool
) -> None:
    body = {"model": "echo", "messages": [USER], "stream": stream}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        slashed = await web.post("/chat/completions/", json=body)
        plain = await web.post("/chat/completions", json=body)
    assert slashed.status_code == 200 and "location" not in slashed.headers
    assert slashed.headers["content-type"] == plain.headers["content-type"]
    assert "hi | turns: 0 | public" in slashed.text


@pytest.mark.parametrize("path", ["/models/", "/models/echo/"])
async def test_a_models_path_with_a_trailing_slash_is_answered_not_redirected(
    tmp_path: Path, path: str
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        slashed = await web.get(path)
        plain = await web.get(path.rstrip("/"))
    assert slashed.status_code == 200 and "location" not in slashed.headers
    assert slashed.json() == plain.json()


async def test_an_unknown_path_with_a_trailing_slash_is_a_404_in_openai_s_shape(
    tmp_path: Path,
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/completions/", json={"model": "echo", "prompt": "hi"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["code"] == "http_404"


# -- moat sim-server ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "takes"),
    [
        ("GET", "/chat/completions", "/v1/chat/completions takes POST"),
        ("PUT", "/chat/completions", "/v1/chat/completions takes POST"),
        ("POST", "/models", "/v1/models takes GET or HEAD"),
        ("DELETE", "/models/echo", "/v1/models/echo takes GET or HEAD"),
    ],
)
async def test_a_wrong_method_is_a_405_saying_which_methods_the_path_takes(
    tmp_path: Path, method: str, path: str, takes: str
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.request(method, path)
    assert response.status_code == 405
    error = response.json()["error"]
    assert error["message"] == f"{method} /v1{path}: Method Not Allowed; {takes}"
    assert error["code"] == "http_405"


async def test_an_unknown_path_of_any_length_is_repeated_shortened_in_its_404(
    tmp_path: Path,
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.get("/" + "a" * 20_000)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message.startswith("GET /v1/aaa") and len(message) < 250
    assert "...: Not Found; moat serves POST /v1/chat/completions" in message


async def test_the_sim_server_retrieves_its_models_and_answers_404_for_no_model() -> None:
    async with (
        sim_http(SimServer(time_scale=0)) as web,
        openai.AsyncOpenAI(base_url=SIM, api_key="any", http_client=web, max_retries=0) as oai,
    ):
        listed = (await oai.models.list()).data
        retrieved = [await oai.models.retrieve(model.id) for model in listed]
        empty = await web.get("/models/%20")
    assert retrieved == listed
    assert empty.status_code == 404 and empty.json()["error"]["type"] == "invalid_request_error"


# -- /metrics ---------------------------------------------------------------------------------


async def test_with_keys_metrics_are_open_to_scrapes_unless_asked_otherwise(
    tmp_path: Path,
) -> None:
    keys = KeyRing({hash_key("sk-acme"): "acme"})
    open_server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys)
    async with open_server, http(open_server) as web:
        scraped = await web.get("http://moat.test/metrics")
    keyed_server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys, metrics_auth=True)
    async with keyed_server, http(keyed_server) as web:
        refused = await web.get("http://moat.test/metrics")
        wrong = await web.get("http://moat.test/metrics", headers={"authorization": "Bearer x"})
        allowed = await web.get(
            "http://moat.test/metrics", headers={"authorization": "Bearer sk-acme"}
        )
    assert scraped.status_code == 200 and "moat_requests_in_flight" in scraped.text
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert "echo" not in refused.text
    assert allowed.status_code == 200 and allowed.text.startswith("# HELP")


def test_worker_processes_ask_for_a_key_on_metrics_as_their_parent_does() -> None:
    spec = worker_spec(
        ["echo.yaml"],
        db=None,
        keys=KeyRing({hash_key("sk-acme"): "acme"}),
        limits=ShapingLimits(),
        workers=2,
        models={},
        commit_wait=True,
        grace_s=1,
        seed=0,
        allow_unpriced=False,
        metrics_auth=True,
    )
    assert spec["metrics_auth"] is True
