"""The request detail screen of a graph with two loops: a card per cycle of each loop, and
each loop's body drawn with its own node runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from textual.widgets import DataTable, Static, Tree
from textual.widgets.tree import TreeNode

from tests.engine.report.test_report_loops import TWO_LOOPS, run_graph
from tui import MoatApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_loops(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A store holding one request of the two-loop graph, run on `sim`."""
    yield run_graph(tmp_path, TWO_LOOPS)
    structlog.reset_defaults()  # `moat run` bound structlog to the captured stderr


def _walk(node: TreeNode[str]) -> Iterator[TreeNode[str]]:
    yield node
    for child in node.children:
        yield from _walk(child)


async def test_two_loops_show_a_card_per_cycle_of_each_loop(two_loops: tuple[Path, str]) -> None:
    db, request_id = two_loops
    app = MoatApp(db, refresh_s=0)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.open_request(request_id)
        await pilot.pause()
        while any(not worker.is_finished for worker in app.workers):
            await app.workers.wait_for_complete()
            await pilot.pause()
        cards = list(app.screen.query(".cycle-card").results(Static))
        assert [card.border_title for card in cards] == [
            "cycle 1 · b",
            "cycle 2 · b",
            "cycle 1 · a",
            "cycle 2 · a",
        ]
        assert "skipped     extra" in str(cards[0].render())
        assert "skipped     -" in str(cards[2].render())
        # each loop's body is drawn from its own runs: `b`'s skipped `extra` in cycle 1
        labels = [str(node.label) for node in _walk(app.screen.query_one("#graph-tree", Tree).root)]
        assert [label.split(" ")[0] for label in labels[1:]] == [
            "a", "cycle", "step", "cycle", "step",
            "b", "cycle", "extra", "step", "cycle", "extra", "step",
        ]  # fmt: skip
        assert labels[8].startswith("extra (model) skipped")
        assert labels[11].startswith("extra (model) succeeded")
        timeline = app.screen.query_one("#timeline-table", DataTable)
        nodes = {str(timeline.get_row_at(i)[0]) for i in range(timeline.row_count)}
        assert nodes == {"a", "b", "a/step", "b/step", "b/extra"}
