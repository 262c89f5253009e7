"""`moat serve --ray`: the serve app on Ray Serve replicas answers the OpenAI client, and
every replica's records reach the one store through the store-writer actor."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.engine.cluster.conftest import RAY_WARNINGS, flagship

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")
from engine.cluster.serving import deploy, parse_autoscale  # noqa: E402

pytestmark = [*RAY_WARNINGS, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_on_ray_answers_the_openai_client_and_stores_every_replica(
    ray_address: str, tmp_path: Path
) -> None:
    from ray import serve

    graph, db = flagship(tmp_path), tmp_path / "s.db"
    url = deploy([str(graph)], db=str(db), host="127.0.0.1", port=_free_port(), replicas=2)
    try:
        client = openai.OpenAI(base_url=url, api_key="any", max_retries=0)
        answers = [
            client.chat.completions.create(
                model="governed-answer",
                messages=[{"role": "user", "content": f"How do I export report {i}?"}],
            )
            for i in range(8)
        ]
        assert all(a.choices[0].message.content for a in answers)
        with sqlite3.connect(db) as conn:  # committed before each answer left
            ids = {row[0] for row in conn.execute("SELECT id FROM requests")}
        assert {a.id.removeprefix("chatcmpl-") for a in answers} <= ids
        # Ray's proxy reads the heads; the replica refuses an over-long one as moat serve does
        many = {f"x-{n}": "v" for n in range(150)}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/models", headers=many))
        assert refused.value.code == 431
        assert json.load(refused.value)["error"]["code"] == "request_header_too_large"
    finally:
        serve.shutdown()
        writer = ray.get_actor("moat-store-writer")
        ray.get(writer.close.remote())
        ray.kill(writer)
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT status, requests_done FROM runs").fetchall()
    assert len(runs) == 2  # one per replica
    assert sum(done for _, done in runs) == 8
    assert {status for status, _ in runs} == {"finished"}


@pytest.mark.parametrize(
    ("flag", "shown"),
    [
        (["--replicas", "5000"], "--replicas 5000"),
        (["--autoscale", "1:5000"], "--autoscale 1:5000"),
    ],
)
def test_more_replicas_than_the_cluster_can_host_are_refused(
    ray_address: str, tmp_path: Path, flag: list[str], shown: str
) -> None:
    graph = str(flagship(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            graph,
            "--ray",
            ray_address,
            "--port",
            "0",
            *flag,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"moat: {shown}: each replica is a process of its own" in done.stderr
    assert "give at most 32 (16 a CPU)" in done.stderr  # the fixture's cluster has 2 CPUs
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("value", "pair"), [("1:4", (1, 4)), ("2:2", (2, 2))])
def test_autoscale_reads_min_and_max(value: str, pair: tuple[int, int]) -> None:
    assert parse_autoscale(value) == pair


@pytest.mark.parametrize("value", ["4:1", "0:3", "x", "2"])
def test_autoscale_refuses_anything_else(value: str) -> None:
    from engine.errors import SpecError

    with pytest.raises(SpecError, match=f"--autoscale {value}: write MIN:MAX"):
        parse_autoscale(value)
