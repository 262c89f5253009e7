"""The flagship never caches an answer no model gave readably, and still caches the rest.

A request whose answer the sim cuts off at the cascade's `max_tokens` (a topic too long to
fit) is answered with the words the model wrote before the cut, never the raw JSON around
them, and is not stored: the next ask of the same prompt is answered afresh, not from the
cache. Runs on trio's mock clock, so the sim's latencies (and the soft deadline they pass)
cost no wall time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trio.testing import MockClock

from engine import MemorySink, RequestResult
from engine.api import Pipeline

pytestmark = pytest.mark.anyio

FLAGSHIP = Path(__file__).resolve().parents[2] / "graphs" / "governed-answer.yaml"
CUT_OFF = "What does " + "abcdefghij" * 300 + " mean?"
"""A prompt whose answer names its 3,000-letter topic: longer than the cascade's 400 tokens."""


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


async def _ask_twice(prompt: str, run_id: str) -> tuple[list[RequestResult], MemorySink]:
    sink = MemorySink()
    async with Pipeline(FLAGSHIP, db=None, sink=sink) as pipe:
        results = []
        for seq in range(2):
            results.append(await pipe.run({"prompt": prompt}, run_id=run_id, seq=seq))
            await pipe.settle()  # the answer is stored after the request, off its path
    return results, sink


def _steps(sink: MemorySink, request_id: str, node: str) -> list[list[str]]:
    return [
        e.reason_codes
        for e in sink.events(request_id)
        if e.stage == node and e.event_type == "CASCADE_STEP"
    ]


async def test_an_answer_the_sim_cut_off_is_shown_as_words_and_never_cached() -> None:
    (first, again), sink = await _ask_twice(CUT_OFF, "unreadable")
    # both accepted, so only the answer's readability keeps them out of the cache: the
    # first without deliberation (past the soft deadline), the second after one cycle
    assert [(r.output or {}).get("decision") for r in (first, again)] == ["accept", "accept"]
    assert [(r.output or {}).get("cycles") for r in (first, again)] == [0, 1]
    for result in (first, again):
        assert result.status == "ok" and result.output is not None
        assert _steps(sink, result.request_id, "answer") == [["TRUNCATED"]]
        answer = result.output["answer"]  # the words before the cut, e.g. "Short answer on abc…"
        assert not answer.startswith("{") and "abcdefghij" * 10 in answer
        assert result.output["stored"] is False
        assert "CACHE_STORED" not in sink.event_types(result.request_id)
    assert "CACHE_HIT" not in sink.event_types(again.request_id)


async def test_a_readable_answer_is_still_cached_and_answers_the_next_ask() -> None:
    (first, again), sink = await _ask_twice("What is 0 plus 7?", "readable")
    assert first.output is not None and again.output is not None
    assert _steps(sink, first.request_id, "answer") == [["CONFIDENT"]]
    assert (first.output["decision"], first.output["stored"]) == ("accept", True)
    assert "CACHE_STORED" in sink.event_types(first.request_id)
    assert (again.output["decision"], again.output["answer"]) == (
        "cached", first.output["answer"],
    )  # fmt: skip
