"""A long-running batch or server settles the heap: the collector stops walking what was
alive at the start, and gets its settings back at the end; freed heap pages go back to the
system."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.collector import THRESHOLDS, settled_heap, trimmer
from engine.graph.spec import ModelSpec
from tests.support.fast_graphs import fast_copy


def test_a_settled_heap_freezes_what_is_alive_and_restores_the_collector_after() -> None:
    before = gc.get_threshold()
    alive = [[] for _ in range(3)]  # tracked containers
    with settled_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == THRESHOLDS
        young = {id(x) for x in gc.get_objects()}
        assert not young & {id(x) for x in alive}  # out of the collector's sight
    assert gc.get_freeze_count() == 0
    assert {id(x) for x in alive} <= {id(x) for x in gc.get_objects()}
    assert gc.get_threshold() == before


def test_a_settled_heap_imports_what_an_openai_model_will_need_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "engine.models.openai_provider", raising=False)
    spec = ModelSpec(provider="openai", model="m", base_url="http://127.0.0.1:9")
    with settled_heap([spec]):
        assert "engine.models.openai_provider" in sys.modules


def test_moat_run_answers_with_the_heap_settled_and_leaves_it_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, tuple[int, int, int]]] = []
    real = gc.set_threshold

    def watched(*thresholds: int) -> None:
        seen.append((gc.get_freeze_count(), thresholds))
        real(*thresholds)

    monkeypatch.setattr(gc, "set_threshold", watched)
    before = gc.get_threshold()
    graph = fast_copy("cascade", tmp_path)
    code = main(["run", str(graph), "--prompt", "hello", "--db", str(tmp_path / "t.db"), "--quiet"])
    assert code == 0
    assert seen[0][1] == THRESHOLDS and seen[0][0] > 0  # settled before the batch
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, before)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or trimmer() is None, reason="glibc's malloc_trim"
)
def test_trimming_gives_freed_pages_below_live_ones_back() -> None:
    # 4 KB blocks come from malloc's heap (below its mmap threshold); keeping every 64th
    # alive pins the heap's top, so freeing the rest leaves ~60 MiB resident and free
    blocks = [bytes(4000) for _ in range(16_000)]
    kept = blocks[::64]
    del blocks
    before = _rss_kib()
    trim = trimmer()
    assert trim is not None
    trim()
    assert before - _rss_kib() > 30_000, "freed heap pages stayed resident"
    assert len(kept) == 250
