"""The `retrieve` node and the embedders: top-k by similarity, per-request memo, corpus formats."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from nodes._support.embed import HashingEmbedder, cosine, get_embedder, qcosine, quantize
from nodes.retrieve import INDEXES, INLINE_SEARCH, RetrieveNode
from tests.support.nodes_fakes import FakeRuntime, run_node

pytestmark = pytest.mark.anyio

PASSAGES = [
    "The Eiffel Tower is in Paris and was finished in 1889.",
    "Bread needs flour, water, salt and yeast.",
    {"id": "py", "text": "Python decorators wrap functions to add behaviour."},
]


def test_hashing_embedder_is_normalised_stable_and_similarity_ordered() -> None:
    e = HashingEmbedder()
    a, b, c = e.embed(["reset my password", "reset the password", "bake sourdough bread"])
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-9)
    assert cosine(a, b) > 0.5 > 0.2 > cosine(a, c)
    assert e.embed_one("") == [0.0] * 256
    assert abs(qcosine(quantize(a), quantize(b)) - cosine(a, b)) < 0.02
    assert get_embedder("hashing") is get_embedder("hashing")
    with pytest.raises(ValueError, match="unknown embedder 'bert'; use 'hashing'"):
        get_embedder("bert")


async def test_top_k_passages_best_first() -> None:
    out = await run_node(
        RetrieveNode(), {"query": "how do decorators work in Python", "passages": PASSAGES, "k": 2}
    )
    assert [p.id for p in out.passages] == ["py", "0"] or out.passages[0].id == "py"
    assert out.top_score == out.passages[0].score > out.passages[1].score


async def test_memoised_per_request_and_index_built_once() -> None:
    node = RetrieveNode()
    rt = FakeRuntime()
    cfg = {"query": "bread recipe", "passages": PASSAGES, "k": 1}
    first = await run_node(node, cfg, rt)
    second = await run_node(node, cfg, rt)
    assert first == second and first.passages[0].id == "1"
    assert [reused for _, reused in rt.memo_log] == [False, True]
    assert len(node._indexes) == 1
    await run_node(node, {**cfg, "query": "tower"}, FakeRuntime())
    assert len(node._indexes) == 1


async def test_min_score_drops_weak_passages() -> None:
    out = await run_node(
        RetrieveNode(), {"query": "quantum chromodynamics", "passages": PASSAGES, "min_score": 0.5}
    )
    assert out.passages == [] and out.top_score == 0.0


@pytest.mark.parametrize("suffix", [".jsonl", ".yaml", ".txt"])
async def test_corpus_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"corpus{suffix}"
    texts = ["Cats purr when content.", "Rust has no garbage collector."]
    if suffix == ".jsonl":
        path.write_text(
            "\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts))
        )
    elif suffix == ".yaml":
        path.write_text("passages:\n" + "".join(f"  - {t}\n" for t in texts))
    else:
        path.write_text("\n\n".join(texts))
    out = await run_node(
        RetrieveNode(), {"query": "garbage collector in Rust", "corpus": str(path), "k": 1}
    )
    assert out.passages[0].text == texts[1]


async def test_missing_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read corpus"):
        await run_node(RetrieveNode(), {"query": "q", "corpus": str(tmp_path / "none.jsonl")})
    with pytest.raises(ValueError, match="needs `corpus`"):
        await run_node(RetrieveNode(), {"query": "q"})


async def test_passages_each_request_brings_are_kept_for_the_latest_few_only() -> None:
    # `passages: "{{ input.docs }}"`: a new corpus a request, which no later one reuses
    node = RetrieveNode()
    for n in range(INDEXES * 3):
        cfg = {"query": "bread", "passages": [f"Bread number {n}.", "Cats purr."], "k": 1}
        out = await run_node(node, cfg, FakeRuntime())
        assert out.passages[0].text == f"Bread number {n}."
    assert len(node._indexes) == INDEXES


async def test_a_corpus_file_edited_while_serving_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("Cats purr when content.\n\nRust has no garbage collector.")
    node = RetrieveNode()
    cfg = {"query": "garbage collector", "corpus": str(path), "k": 1}
    assert (await run_node(node, cfg, FakeRuntime())).passages[0].text.startswith("Rust")
    path.write_text("Cats purr when content.\n\nGo has a concurrent garbage collector now.")
    assert (await run_node(node, cfg, FakeRuntime())).passages[0].text.startswith("Go has")


async def test_a_large_corpus_is_indexed_and_searched_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    embed = HashingEmbedder.embed

    def noted(self: HashingEmbedder, texts: list[str]) -> list[list[float]]:
        threads.append(threading.current_thread().name)
        return embed(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", noted)
    passages = [f"Passage {i} about topic {i % 7}." for i in range(INLINE_SEARCH + 1)]
    out = await run_node(
        RetrieveNode(), {"query": "topic 3", "passages": passages, "k": 2}, FakeRuntime()
    )
    assert len(out.passages) == 2
    main = threading.main_thread().name
    assert threads[0] != main  # the index of 1,001 passages
    assert threads[1] == main  # the query: one text
