"""`Pipeline.run_batch` from plain dicts, and the in-memory window of a store-less pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.api import Pipeline
from engine.events import RequestRecord
from engine.store.store import Store

pytestmark = pytest.mark.anyio

GRAPH = """
moat: 1
name: echo
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string, minLength: 1}}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""


def write_graph(folder: Path) -> Path:
    graph = folder / "echo.yaml"
    graph.write_text(GRAPH)
    return graph


async def test_a_batch_of_plain_dicts_starts_and_finishes_its_own_run(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    seen: list[RequestRecord] = []
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        summary = await pipe.run_batch(
            [{"prompt": "a"}, {"prompt": ""}, {"prompt": None}, {"prompt": "d"}],
            concurrency=2,
            on_record=seen.append,
        )
    assert (summary.total, summary.done) == (4, 4)
    assert summary.by_status == {"ok": 2, "invalid_input": 2}
    assert sorted(r.seq for r in seen) == [0, 1, 2, 3]
    errors = {r.seq: r.error for r in seen}
    assert errors[2] == "request: input prompt: none is not of type 'string'"
    with Store.open(db, readonly=True) as store:
        run = store.require_run(summary.run_id)
        assert (run["status"], run["requests_total"], run["requests_done"]) == ("finished", 4, 4)


async def test_a_hostile_dict_is_an_invalid_input_not_a_crash(tmp_path: Path) -> None:
    deep: object = "x"
    for _ in range(2000):
        deep = [deep]
    async with Pipeline(write_graph(tmp_path), db=None) as pipe:
        summary = await pipe.run_batch(
            [{"prompt": "ok"}, {"prompt": "a", "n": deep}, {"prompt": "\udc80"}, {"prompt": "b"}]
        )
        results = {r.seq: r for r in pipe.memory.requests()}
    assert summary.by_status == {"ok": 2, "invalid_input": 2}
    assert "nested more than 64 levels deep" in str(results[1].error)
    assert (
        results[2].error == "request: input prompt has a lone surrogate (\\ud800-\\udfff), not text"
    )


async def test_a_store_less_pipeline_keeps_a_bounded_window_of_records(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    async with Pipeline(graph, db=None, memory_records=30) as pipe:
        await pipe.run_batch([{"prompt": f"q{i}"} for i in range(40)])
        assert len(pipe.memory.items) == 30
        assert pipe.memory.items[-1] == pipe.memory.requests()[-1]  # the latest are kept
    async with Pipeline(graph, db=None) as default:
        assert default.memory.items.maxlen == 100_000


async def test_a_request_whose_record_comes_after_its_cleanup_is_still_counted(
    tmp_path: Path,
) -> None:
    # A cache hit cancels the speculative draft: the request's record is emitted only once
    # that cleanup is done, after the request itself returned.
    from tests.support.fast_graphs import fast_copy

    prompt = {"prompt": "What is VAT?"}
    async with Pipeline(fast_copy("governed-answer", tmp_path), db=tmp_path / "t.db") as pipe:
        first = await pipe.run_batch([prompt])
        seen: list[RequestRecord] = []
        again = await pipe.run_batch([prompt], on_record=seen.append)
    assert first.by_status == again.by_status == {"ok": 1}
    assert [r.output["decision"] for r in seen if r.output] == ["cached"]


async def test_a_single_request_run_counts_its_request(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        result = await pipe.run({"prompt": "hello"})
    with Store.open(db, readonly=True) as store:
        (run,) = store.list_runs()
    assert result.request_id.startswith(run["id"])
    assert (run["status"], run["requests_done"]) == ("finished", 1)
