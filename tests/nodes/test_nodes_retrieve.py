"""The `retrieve` node and the embedders: top-k by similarity, per-request memo, corpus formats,
and the folder a corpus that request data names must stay in."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

from engine import Graph, SpecError, load_graph
from nodes._support.embed import HashingEmbedder, cosine, get_embedder, qcosine, quantize
from nodes.retrieve import INDEXES, INLINE_SEARCH, RetrieveNode
from tests.support.nodes_fakes import FakeRuntime, run_node
from tests.support.sched_nodes import run

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


ROOTED_GRAPH = """\
moat: 1
name: rooted
input:
  type: object
  properties: {{prompt: {{type: string}}, corpus: {{type: string}}, root: {{type: string}}}}
  required: [prompt]
nodes:
  docs:
    type: retrieve
    with: {{query: "{{{{ input.prompt }}}}", k: 1, {with_}}}
output:
  text: docs.passages[0].text
"""


def rooted(home: Path, with_: str) -> Graph:
    """A graph file in `home` whose `docs` node has `with_` beside its query."""
    (home / "g.yaml").write_text(ROOTED_GRAPH.format(with_=with_))
    return load_graph(home / "g.yaml")


def rooted_tree(tmp_path: Path) -> Path:
    """project/ (the graph's folder) with data/a.txt and a link to ../secret.txt beside it;
    shared/b.txt and secret.txt outside it."""
    home = tmp_path / "project"
    (home / "data").mkdir(parents=True)
    (home / "data" / "a.txt").write_text("Roth IRAs grow tax free.")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "b.txt").write_text("Cats purr when content.")
    (tmp_path / "secret.txt").write_text("the launch code is 0000")
    (home / "data" / "link.txt").symlink_to(tmp_path / "secret.txt")
    return home


async def test_a_corpus_request_data_names_must_stay_in_the_graph_folder(tmp_path: Path) -> None:
    home = rooted_tree(tmp_path)
    graph = rooted(home, 'corpus: "{{ input.corpus }}"')
    result, _ = await run(graph, {"prompt": "Roth", "corpus": "data/a.txt"})
    assert result.output == {"text": "Roth IRAs grow tax free."}
    for given, resolved in [
        ("/etc/passwd", "/etc/passwd"),
        ("../secret.txt", tmp_path / "secret.txt"),
        ("data/../../secret.txt", tmp_path / "secret.txt"),
        ("data/link.txt", tmp_path / "secret.txt"),  # a symlink is followed, then judged
    ]:
        result, _ = await run(graph, {"prompt": "code", "corpus": given})
        assert result.status == "failed" and result.output is None
        assert result.error == (
            f"node 'docs': `corpus` {given!r}, made by an expression, resolves to "
            f"'{os.path.realpath(resolved)}', outside the graph file's folder "
            f"'{os.path.realpath(home)}'; a path request data or a policy chooses must stay "
            "inside it: name a file there, or set `corpus_root:` to the folder such files "
            "live in"
        )


async def test_a_corpus_root_written_in_the_graph_bounds_what_requests_choose(
    tmp_path: Path,
) -> None:
    home = rooted_tree(tmp_path)
    graph = rooted(home, 'corpus: "{{ input.corpus }}", corpus_root: ../shared')
    result, _ = await run(graph, {"prompt": "cats", "corpus": "../shared/b.txt"})
    assert result.output == {"text": "Cats purr when content."}
    result, _ = await run(graph, {"prompt": "Roth", "corpus": "data/a.txt"})
    assert result.status == "failed"
    assert result.error is not None and "outside `corpus_root` '" in result.error
    assert f"{os.path.realpath(tmp_path / 'shared')}'" in result.error


async def test_a_corpus_written_in_the_graph_may_be_anywhere(tmp_path: Path) -> None:
    home = rooted_tree(tmp_path)
    for corpus in ("../shared/b.txt", str(tmp_path / "shared" / "b.txt")):
        result, _ = await run(rooted(home, f"corpus: {corpus}"), {"prompt": "cats"})
        assert result.output == {"text": "Cats purr when content."}, result.error


async def test_a_corpus_root_a_request_chooses_is_refused(tmp_path: Path) -> None:
    home = rooted_tree(tmp_path)
    graph = rooted(home, 'corpus: "{{ input.corpus }}", corpus_root: "{{ input.root }}"')
    result, _ = await run(graph, {"prompt": "code", "corpus": "/etc/passwd", "root": "/"})
    assert result.error == (
        "node 'docs': `corpus_root` '/' was made by an expression; write the folder itself in "
        "the graph (requests may not choose where files are read from)"
    )


def test_a_corpus_root_that_is_no_folder_is_refused_at_check(tmp_path: Path) -> None:
    home = rooted_tree(tmp_path)
    (home / "g.yaml").write_text(
        ROOTED_GRAPH.format(with_='corpus: "{{ input.corpus }}", corpus_root: data/a.txt')
    )
    with pytest.raises(SpecError) as caught:
        load_graph(home / "g.yaml")
    assert str(caught.value).startswith(f"{home / 'g.yaml'}:10:90: node 'docs': with.corpus_root: ")
    assert f"'{home / 'data' / 'a.txt'}' is not a folder; name the folder" in str(caught.value)
