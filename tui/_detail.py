"""The request detail view model: the engine's request report plus the run's drawn graph.

`load_detail` builds `engine.report.explain.request_report` (summary, execution strategy, runtime
decisions, cycle cards, timeline, LLM calls, raw events; architecture: The request report)
and adds what
only the TUI draws: each graph node's state and timing, in the graph's topological order
when the run's graph file can be loaded, else in the order the nodes ran.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import (
    Graph,
    MoatError,
    Registry,
    RequestNotFinished,
    RequestReport,
    Store,
    StoreError,
    TimelineEntry,
    load_graph,
    request_report,
)

if TYPE_CHECKING:
    from engine.graph.compiled import Scope

__all__ = [
    "MARK_LETTERS",
    "GraphLine",
    "RequestDetail",
    "load_detail",
    "mark_letters",
    "node_state",
    "run_graph",
]

Row = dict[str, Any]

MARK_LETTERS: Mapping[str, str] = {
    "speculative": "S",
    "cancelled": "X",
    "skipped": "K",
    "discarded": "D",
    "reused": "R",
    "cached": "C",
    "failed": "F",
    "timed_out": "T",
    "retried": "r",
}
"""One letter per timeline mark of the report."""


@dataclass(frozen=True, slots=True)
class GraphLine:
    """One node of the drawn graph (loop bodies nested one level per loop)."""

    depth: int
    node: str
    node_type: str
    state: str
    """`succeeded`, `skipped`, `cancelled`, `discarded`, `failed`, `timed_out` or `not run`."""
    duration_ms: float | None
    cycle: int | None = None
    """Set on loop-body lines: the cycle this line shows."""


@dataclass(frozen=True, slots=True)
class RequestDetail:
    """Everything the detail screen shows about one request."""

    request_id: str
    report: RequestReport | None
    """None while nothing is stored for the request yet."""
    run: Row
    graph: tuple[GraphLine, ...] = ()
    graph_source: str = ""
    """Where the drawn graph came from: the graph's name and file, or the node runs."""
    problem: str = ""
    """Why the request cannot be shown (report None): the store has no such request (any
    more), or what is stored of it does not read back."""
    waiting: str = ""
    """Where a request with nothing stored yet stands in its running run (report None)."""

    @property
    def found(self) -> bool:
        """Whether anything is stored for the request."""
        return self.report is not None

    @property
    def pending(self) -> bool:
        """Whether more of the request may come: nothing is stored of it yet although its
        run may answer it, or it is unfinished while its run is running."""
        if self.report is None:
            return not self.problem
        return self.report.summary.status == "unfinished" and self.run.get("status") == "running"

    @property
    def latency_ms(self) -> float:
        """The request's latency, or the span of its node runs while it is unfinished."""
        if self.report is None:
            return 0.0
        if self.report.summary.latency_ms is not None:
            return float(self.report.summary.latency_ms)
        ends = [t.offset_ms + t.duration_ms for t in self.report.timeline]
        return max(ends, default=0.0)


def mark_letters(marks: Sequence[str]) -> str:
    """The report's timeline marks as letters (see `MARK_LETTERS`)."""
    return "".join(MARK_LETTERS.get(m.split()[0], m[:1].upper()) for m in marks)


def node_state(status: str, outcome: str) -> str:
    """The display state of a node run from its status and outcome."""
    if status == "succeeded" and outcome in ("discarded", "cancelled"):
        return "discarded"
    return status


def load_detail(store: Store, request_id: str, registry: Registry | None = None) -> RequestDetail:
    """Read and shape one request; `found` is False when nothing is stored for it yet, or
    when what is stored cannot be read (`problem` then says why).

    Args:
        store: the store to read.
        request_id: the request.
        registry: node types for loading the run's graph (default: the installed ones).
    """
    try:
        report = request_report(store, request_id)
    except RequestNotFinished as exc:  # its run has not answered it yet: polled again
        return RequestDetail(request_id, None, {}, waiting=exc.standing)
    except StoreError as exc:  # no such request (pruned meanwhile, say): nothing to wait for
        return RequestDetail(request_id, None, {}, problem=_without_path(str(exc), store))
    except Exception as exc:  # a hand-edited or damaged row: say so, never load forever
        problem = f"cannot show this request: a value stored for it reads wrong ({exc})"
        return RequestDetail(request_id, None, {}, problem=problem)
    run_id = report.summary.run_id or next(
        (e["run_id"] for e in report.raw_events if e.get("run_id")), None
    )
    run = (store.get_run(run_id) if run_id else None) or {}
    graph = run_graph(run, registry)
    timeline = report.timeline
    return RequestDetail(
        request_id=request_id,
        report=report,
        run=run,
        graph=_graph_lines(graph, timeline) if graph else _fallback_lines(timeline),
        graph_source=f"{graph.name}, {Path(graph.path).name}" if graph else "from node runs",
    )


def _without_path(message: str, store: Store) -> str:
    """A store error's message without the store's path in front (the TUI shows the store
    in its title)."""
    prefix = f"{store.path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _span_ms(entries: Sequence[TimelineEntry]) -> float | None:
    """From the first entry's start to the end of the last one."""
    if not entries:
        return None
    return max(e.offset_ms + e.duration_ms for e in entries) - min(e.offset_ms for e in entries)


def run_graph(run: Mapping[str, Any], registry: Registry | None) -> Graph | None:
    """The graph a run names in its config (`graph_path`), or None if it cannot be loaded."""
    config = run.get("config")
    path = config.get("graph_path") if isinstance(config, dict) else None
    return _load_graph(str(path), registry) if path else None


@functools.lru_cache(maxsize=16)
def _load_graph(path: str, registry: Registry | None) -> Graph | None:
    try:
        return load_graph(path, registry=registry)
    except (MoatError, OSError):
        return None


def _state(entry: TimelineEntry | None) -> str:
    return "not run" if entry is None else node_state(entry.status, entry.outcome)


def _graph_lines(graph: Graph, timeline: Sequence[TimelineEntry]) -> tuple[GraphLine, ...]:
    # a run is known by its loop as well as its node and cycle (two loop bodies may each
    # hold a node of that name); when the report could place no run in a loop, by the two
    attributed = any(entry.loop for entry in timeline)
    last = {
        (entry.loop if attributed else None, entry.node, entry.cycle): entry for entry in timeline
    }
    lines: list[GraphLine] = []
    _scope_lines(graph.scope, last, 0, _Where(None, None, attributed), lines)
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class _Where:
    """The scope `_scope_lines` draws: a loop's body in one cycle, or the top level."""

    loop: str | None
    cycle: int | None
    attributed: bool

    def key(self, node_id: str) -> tuple[str | None, str, int]:
        return (self.loop if self.attributed else None, node_id, self.cycle or 0)


def _scope_lines(
    scope: Scope,
    last: Mapping[tuple[str | None, str, int], TimelineEntry],
    depth: int,
    where: _Where,
    out: list[GraphLine],
) -> None:
    cycle = where.cycle
    for node_id in scope.order:
        node = scope.nodes[node_id]
        entry = last.get(where.key(node_id))
        if entry is None and cycle is None:
            entries = [e for (_, n, _), e in last.items() if n == node_id]
            entry = entries[-1] if entries else None
        if node.loop is None:
            duration = entry.duration_ms if entry else None
            out.append(GraphLine(depth, node_id, node.type_name, _state(entry), duration, cycle))
            continue
        body = set(node.loop.body.order)
        body_entries = [
            e
            for (loop, n, c), e in last.items()
            if c and (loop == node_id if where.attributed else n in body)
        ]
        state = _state(entry) if entry or not body_entries else "succeeded"
        duration = entry.duration_ms if entry else _span_ms(body_entries)
        out.append(GraphLine(depth, node_id, node.type_name, state, duration, cycle))
        for each in sorted({e.cycle for e in body_entries}):
            inner = _Where(node_id, each, where.attributed)
            _scope_lines(node.loop.body, last, depth + 1, inner, out)


def _fallback_lines(timeline: Sequence[TimelineEntry]) -> tuple[GraphLine, ...]:
    return tuple(
        GraphLine(
            1 if e.cycle else 0,
            e.node,
            e.node_type,
            _state(e),
            e.duration_ms,
            e.cycle or None,
        )
        for e in timeline
    )
