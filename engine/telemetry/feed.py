"""Takes a run's records off the request path and hands each finished request to consumers.

The request path pays one `deque.append` per record (the watcher *is* the deque's bound
`append`): grouping records by request, building spans and updating metrics happen later,
in the feed's own thread, or in whichever thread reads the figures (a `/metrics` scrape
drains the feed first, so what it shows includes every request recorded before it).

A request's `RequestRecord` is emitted after all of its other records (architecture: The
request path), so when it arrives the request is complete and goes to the consumers as one
`FinishedRequest`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.events import (
    DecisionTrace,
    LlmCall,
    NodeRun,
    OrchestrationEvent,
    Record,
    RequestRecord,
)
from engine.logs import get_logger

__all__ = ["Consumer", "FinishedRequest", "RecordFeed"]

_log = get_logger("moat.telemetry")

_MAX_OPEN = 50_000
"""Requests whose records are held while they run; past this the oldest are dropped (a
request whose record never comes, after a crash in moat, must not hold memory forever)."""
_YIELD_S = 0.001
"""How long a drain holds the GIL before letting other threads have it (the event loop's,
the span sender's): `time.sleep(0)` costs 15 us of CPU, too much to pay per request, and
waiting for the interpreter's 5 ms switch interval would add that to requests' latency."""


@dataclass(slots=True)
class FinishedRequest:
    """Everything one request recorded, in emission order, with the graph that answered it."""

    graph: str
    record: RequestRecord
    events: list[OrchestrationEvent] = field(default_factory=list)
    node_runs: list[NodeRun] = field(default_factory=list)
    llm_calls: list[LlmCall] = field(default_factory=list)
    traces: list[DecisionTrace] = field(default_factory=list)
    parent: Mapping[str, str] | None = None
    """The W3C trace context headers (`traceparent`, `tracestate`) the request continues."""
    run_marks: list[int] | None = None
    """For each node run, how many of the request's events were recorded before it (None:
    not known). With `call_marks`, what tells apart two runs of one node id in one cycle
    number (same-named body nodes of two loops, a loop nested in another's cycles)."""
    call_marks: list[int] | None = None
    """For each LLM call, how many of the request's node runs were recorded before it (a
    call is recorded right after the run that made it)."""


class Consumer(Protocol):
    """What the feed hands finished requests to (the metrics, the span builder)."""

    def consume(self, request: FinishedRequest) -> None:
        """Take one finished request; called in the feed's thread or a reader's, one at a
        time."""

    def close(self) -> None:
        """Flush whatever is buffered and let go of resources."""


_EVENTS, _RUNS, _CALLS, _TRACES, _RUN_MARKS, _CALL_MARKS = range(6)
_LISTS = {OrchestrationEvent: _EVENTS, NodeRun: _RUNS, LlmCall: _CALLS, DecisionTrace: _TRACES}
"""Which of a running request's four lists (`_open`) takes a record of each type: a dict
lookup per record where an `isinstance` chain took up to four (a request has about 70)."""


class RecordFeed:
    """Queues records per graph and turns them into `FinishedRequest`s for the consumers.

    Args:
        consumers: who gets each finished request, in order.
        interval_s: how often the feed's thread drains the queues.
    """

    def __init__(self, consumers: Sequence[Consumer], *, interval_s: float = 0.25) -> None:
        self.consumers = list(consumers)
        self.interval_s = interval_s
        self._queues: list[tuple[str, deque[Record]]] = []
        self._open: dict[str, list[list[Any]]] = {}
        """The records of each request still running: its events, node runs, LLM calls
        and decision traces, and the marks of its runs and calls (`FinishedRequest`)."""
        self._parents: dict[str, Mapping[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        """Requests whose records were let go before they finished (see `_MAX_OPEN`)."""
        self.failures = 0
        """Finished requests a consumer failed on (each is logged)."""

    def watcher(self, graph: str) -> Callable[[Record], None]:
        """A `Pipeline.record_watchers` callback for the records of `graph`: a bare
        `deque.append`, so recording costs the request path next to nothing."""
        queue: deque[Record] = deque()
        self._queues.append((graph, queue))
        return queue.append

    def continue_trace(self, request_id: str, headers: Mapping[str, str]) -> None:
        """Make request `request_id`'s trace continue the caller's (`traceparent`,
        `tracestate`); call it before the request starts."""
        context = {k: headers[k] for k in ("traceparent", "tracestate") if headers.get(k)}
        if "traceparent" in context:
            with self._lock:
                self._parents[request_id] = context
                if len(self._parents) > _MAX_OPEN:
                    self._parents.pop(next(iter(self._parents)))

    def start(self) -> None:
        """Drain in a daemon thread every `interval_s` until `close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="moat-telemetry", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.drain()

    def drain(self) -> int:
        """Hand every request finished so far to the consumers; returns how many."""
        finished: list[FinishedRequest] = []
        with self._lock:
            for graph, queue in self._queues:
                self._group(graph, queue, finished)
            held = time.perf_counter()
            for request in finished:
                for consumer in self.consumers:
                    try:
                        consumer.consume(request)
                    except Exception as exc:  # telemetry must never stop a run
                        self.failures += 1
                        _log.warning(
                            "telemetry.consume_failed",
                            consumer=type(consumer).__name__,
                            request_id=request.record.id,
                            error=repr(exc),
                        )
                if time.perf_counter() - held > _YIELD_S:
                    time.sleep(0)  # let the other threads have the GIL between requests
                    held = time.perf_counter()
        return len(finished)

    def _group(self, graph: str, queue: deque[Record], finished: list[FinishedRequest]) -> None:
        popleft, requests, lists = queue.popleft, self._open, _LISTS
        for _ in range(len(queue)):  # only what is there now: the request path keeps adding
            item = popleft()
            at = lists.get(type(item))
            if at is None:
                if isinstance(item, RequestRecord):
                    finished.append(self._finish(graph, item))
                    continue
                at = _subclass_list(item)
            request_id = item.request_id  # type: ignore[union-attr]  # not a RequestRecord
            open_ = requests.get(request_id)
            if open_ is None:
                open_ = requests[request_id] = [[], [], [], [], [], []]
                if len(requests) > _MAX_OPEN:
                    requests.pop(next(iter(requests)))
                    self.dropped += 1
            open_[at].append(item)
            if at == _RUNS:
                open_[_RUN_MARKS].append(len(open_[_EVENTS]))
            elif at == _CALLS:
                open_[_CALL_MARKS].append(len(open_[_RUNS]))

    def _finish(self, graph: str, record: RequestRecord) -> FinishedRequest:
        lists = self._open.pop(record.id, None) or [[], [], [], [], [], []]
        events, runs, calls, traces, run_marks, call_marks = lists
        return FinishedRequest(
            graph,
            record,
            events,
            runs,
            calls,
            traces,
            self._parents.pop(record.id, None),
            run_marks,
            call_marks,
        )

    def close(self) -> None:
        """Stop the thread, drain what is left, and close the consumers (flushing spans)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.drain()
        for consumer in self.consumers:
            consumer.close()


def _subclass_list(item: Record) -> int:
    """The list of a record whose type subclasses a record type (the rare case)."""
    for kind, at in _LISTS.items():
        if isinstance(item, kind):
            return at
    return _TRACES
