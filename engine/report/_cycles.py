"""Attributes a request's node runs, events and LLM calls to the loop cycles they belong to.

A stored cycle number counts the cycles of one loop, and a node run, event or LLM call names
its node by its bare id, which is unique only within the graph or one loop body: two loops
whose bodies both hold a `step` store the same (node, cycle) pairs, and so does a loop that
runs again in every cycle of the loop around it. What tells them apart is all in the store:

- a `LOOP_CYCLE_STARTED` event (stage = the loop id) opens each cycle; a loop whose cycle
  numbers start again is another run of it (a loop in a loop body runs once per cycle);
- a `CYCLE_SUMMARY` trace names its `loop`, and its `modules_planned` lists the loop body;
- events share one sequence with the cycle starts, so an event belongs to its loop's cycle
  started last before it;
- a loop's own node run spans the runs of its body (node runs share one clock);
- a node runs at most once per cycle, so a run only one cycle can hold rules that cycle out
  for the other runs of the same node and cycle number.

Whatever these leave open stays unattributed: it is shown on no cycle rather than on the
wrong one, and the cycles it might belong to are marked `unsure`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.report.model import DecisionRow
from engine.store.store import Row

__all__ = ["Attribution", "Cycle", "LoopRun", "attribute"]

_SUMMARY = "CYCLE_SUMMARY"
_STARTED = "LOOP_CYCLE_STARTED"
_CLOCK_SLACK_S = 1e-3
"""How far apart two clocks' readings of one moment may be: node runs take the backend's
clock, events and LLM calls the wall clock."""
_RUN_LISTS = {
    "succeeded": "modules_executed",
    "failed": "modules_failed",
    "timed_out": "modules_failed",
    "skipped": "modules_skipped",
    "cancelled": "modules_cancelled",
}
"""The `CYCLE_SUMMARY` list that names a body node with this run status."""


@dataclass(eq=False, slots=True)
class Cycle:
    """One cycle of one loop run, with what was attributed to it."""

    run: LoopRun
    cycle: int
    seq: float = math.inf
    """The sequence of its `LOOP_CYCLE_STARTED` event (inf without one)."""
    summary: dict[str, Any] | None = None
    """Its `CYCLE_SUMMARY` payload, if one was stored."""
    runs: list[Row] = field(default_factory=list)
    """Its node runs, in stored order."""
    events: list[DecisionRow] = field(default_factory=list)
    unsure: bool = False
    """Some node run of this cycle number may be this cycle's or another loop's."""


@dataclass(eq=False, slots=True)
class LoopRun:
    """One run of one loop: its cycles, and the cycle of the loop around it, if any."""

    loop: str | None
    order: int
    """Creation order, which keeps the display order stable."""
    cycles: dict[int, Cycle] = field(default_factory=dict)
    parent: Cycle | None = None
    window: tuple[float, float] | None = None
    """Start and end (seconds) of the loop's own node run, when it is known which one."""

    @property
    def first_seq(self) -> float:
        """The sequence of its first cycle start (inf without any)."""
        return min((c.seq for c in self.cycles.values()), default=math.inf)

    def add(self, cycle: int, seq: float = math.inf) -> Cycle:
        """Open `cycle` in this run."""
        self.cycles[cycle] = Cycle(self, cycle, seq)
        return self.cycles[cycle]


@dataclass(frozen=True, slots=True)
class Attribution:
    """Which loop cycle each record belongs to (None: none, or it cannot be told)."""

    cycles: list[Cycle]
    """Every cycle, loop runs in the order they started, each cycle followed by the runs
    of the loops nested in it."""
    run_cycle: list[Cycle | None]
    """Per node run (same order as the runs)."""
    event_cycle: dict[int, Cycle]
    """Per event sequence."""
    event_run: dict[int, int]
    """Per event sequence, the index of the node run the event is about."""
    call_run: list[int | None]
    """Per LLM call, the index of the node run that made it."""


def attribute(
    traces: Sequence[Row],
    decisions: Sequence[DecisionRow],
    runs: Sequence[Row],
    calls: Sequence[Row],
    t0: float,
) -> Attribution:
    """Attribute one request's records to its loop cycles (`t0`: the time the decisions'
    offsets count from)."""
    loops = _loop_runs(traces, decisions)
    bodies = _bodies(loops)
    _nest(loops, bodies, runs)
    _windows(loops, runs)
    run_cycle = _place_runs(loops, bodies, runs)
    event_cycle = _place_events(loops, bodies, decisions, t0)
    event_run = _event_runs(decisions, runs, run_cycle, event_cycle)
    call_run = _call_runs(calls, runs, run_cycle, event_cycle)
    return Attribution(_display_order(loops), run_cycle, event_cycle, event_run, call_run)


# -- loop runs and their cycles ------------------------------------------------------------


def _loop_runs(traces: Sequence[Row], decisions: Sequence[DecisionRow]) -> list[LoopRun]:
    loops: list[LoopRun] = []

    def latest(loop: str | None) -> LoopRun | None:
        return next((r for r in reversed(loops) if r.loop == loop), None)

    def new(loop: str | None) -> LoopRun:
        loops.append(LoopRun(loop, len(loops)))
        return loops[-1]

    started = sorted((d for d in decisions if d.event_type == _STARTED), key=lambda d: d.sequence)
    for d in started:
        run = latest(d.stage)
        if run is None or d.cycle <= max(run.cycles):  # its cycles count from 1 again
            run = new(d.stage)
        run.add(d.cycle, d.sequence)
    for t in traces:
        if t["stage"] != _SUMMARY:
            continue
        payload = dict(t["payload"] or {})
        cycle = t["cycle"]
        named = payload.get("loop")
        loop = None if named is None else str(named)
        free = [
            c
            for r in loops
            if named is None or r.loop == loop
            for c in r.cycles.values()
            if c.cycle == cycle and c.summary is None
        ]
        # the n-th summary of a loop's cycle is that of its n-th run; one without a loop
        # name is the cycle's if only one loop has that cycle
        if free and (named is not None or len(free) == 1):
            free[0].summary = payload
            continue
        run = latest(loop)
        if run is None or cycle in run.cycles:
            run = new(loop)
        run.add(cycle).summary = payload
    return loops


def _bodies(loops: Iterable[LoopRun]) -> dict[str, set[str]]:
    """Each loop's body, from the `modules_planned` of its summaries."""
    bodies: dict[str, set[str]] = defaultdict(set)
    for run in loops:
        for c in run.cycles.values():
            planned = (c.summary or {}).get("modules_planned")
            if run.loop is not None and isinstance(planned, list | tuple):
                bodies[run.loop].update(str(n) for n in planned)
    return dict(bodies)


def _member(bodies: dict[str, set[str]], loop: str | None, node: str) -> bool:
    """Whether `node` may be in `loop`'s body (True while its body is not known)."""
    body = bodies.get(loop) if loop is not None else None
    return body is None or node in body


def _nest(loops: list[LoopRun], bodies: dict[str, set[str]], runs: Sequence[Row]) -> None:
    """Find the cycle each nested loop run ran in: the cycle of the loop whose body holds
    it that started last before the nested run's first cycle."""
    for run in loops:
        start = run.first_seq
        if run.loop is None or start == math.inf:
            continue
        cycles = {r["cycle"] for r in runs if r["node"] == run.loop and r["node_type"] == "loop"}
        known = [o for o in loops if o is not run and o.loop and run.loop in bodies.get(o.loop, ())]
        unknown = [o for o in loops if o is not run and o.loop and o.loop not in bodies]
        found = _last_before(known, start, None)
        if not found and cycles - {0}:
            found = _last_before(unknown, start, cycles - {0})
        run.parent = found[0] if len(found) == 1 else None


def _last_before(loops: Iterable[LoopRun], seq: float, numbers: set[int] | None) -> list[Cycle]:
    """Per loop id, its cycle started last before `seq` (if its number is in `numbers`)."""
    best: dict[str | None, Cycle] = {}
    for run in loops:
        for c in run.cycles.values():
            if c.seq < seq and (run.loop not in best or c.seq > best[run.loop].seq):
                best[run.loop] = c
    return [c for c in best.values() if numbers is None or c.cycle in numbers]


def _depth(run: LoopRun) -> int:
    # (a parent cycle started before its nested run: no chain comes back on itself)
    depth, parent = 0, run.parent
    while parent is not None:
        depth, parent = depth + 1, parent.run.parent
    return depth


def _windows(loops: list[LoopRun], runs: Sequence[Row]) -> None:
    """Each loop run's span: its loop's node run in the cycle around it (cycle 0 at the
    top), when exactly one fits."""
    for run in sorted(loops, key=_depth):
        outer = run.parent
        number = outer.cycle if outer is not None else 0
        fits = [
            r
            for r in runs
            if r["node"] == run.loop and r["node_type"] == "loop" and r["cycle"] == number
        ]
        if outer is not None and outer.run.window is not None:
            fits = [r for r in fits if _within(outer.run.window, r["started_at"])]
        if len(fits) == 1:
            start = float(fits[0]["started_at"])
            run.window = (start, start + float(fits[0]["duration_ms"] or 0.0) / 1000.0)


def _within(window: tuple[float, float], at: float | None, slack: float = 1e-6) -> bool:
    return at is not None and window[0] - slack <= at <= window[1] + slack


def _display_order(loops: list[LoopRun]) -> list[Cycle]:
    children: dict[int, list[LoopRun]] = defaultdict(list)
    for run in loops:
        if run.parent is not None:
            children[id(run.parent)].append(run)

    def key(run: LoopRun) -> tuple[float, int]:
        return (run.first_seq, run.order)

    out: list[Cycle] = []

    def visit(run: LoopRun) -> None:
        for number in sorted(run.cycles):
            cycle = run.cycles[number]
            out.append(cycle)
            for child in sorted(children.get(id(cycle), []), key=key):
                visit(child)

    for run in sorted((r for r in loops if r.parent is None), key=key):
        visit(run)
    return out


# -- node runs, events and calls -------------------------------------------------------------


def _place_runs(
    loops: list[LoopRun], bodies: dict[str, set[str]], runs: Sequence[Row]
) -> list[Cycle | None]:
    every = [c for run in loops for c in run.cycles.values()]
    options: dict[int, list[Cycle]] = {}
    for i, r in enumerate(runs):
        if not r["cycle"]:
            continue
        node, at = r["node"], r["started_at"]
        held = [c for c in every if c.cycle == r["cycle"] and _member(bodies, c.run.loop, node)]
        timed = [c for c in held if c.run.window is None or _within(c.run.window, at)]
        options[i] = timed or held
    _one_run_per_cycle(options, runs)
    for i, found in options.items():
        if len(found) > 1:  # the summaries' lists say which cycle ran it how
            agree = [c for c in found if _agrees(c.summary, runs[i])]
            options[i] = agree or found
    _one_run_per_cycle(options, runs)
    placed: list[Cycle | None] = [None] * len(runs)
    for i, found in sorted(options.items()):
        if len(found) == 1:
            placed[i] = found[0]
            found[0].runs.append(runs[i])
            continue
        for c in found:
            c.unsure = True
    return placed


def _one_run_per_cycle(options: dict[int, list[Cycle]], runs: Sequence[Row]) -> None:
    """A node runs at most once per cycle: a cycle only one run can be placed in is ruled
    out for the other runs of that node, until nothing changes."""
    changed = True
    while changed:
        changed = False
        taken = {(id(f[0]), runs[i]["node"]) for i, f in options.items() if len(f) == 1}
        for i, found in options.items():
            if len(found) < 2:
                continue
            left = [c for c in found if (id(c), runs[i]["node"]) not in taken]
            if left and len(left) < len(found):
                options[i], changed = left, True


def _agrees(summary: dict[str, Any] | None, run: Row) -> bool:
    """Whether a cycle's summary could list this run as it ended (True if it cannot say)."""
    listed = (summary or {}).get(_RUN_LISTS.get(str(run["status"]), ""))
    return not isinstance(listed, list | tuple) or run["node"] in map(str, listed)


def _place_events(
    loops: list[LoopRun],
    bodies: dict[str, set[str]],
    decisions: Sequence[DecisionRow],
    t0: float,
) -> dict[int, Cycle]:
    every = [c for run in loops for c in run.cycles.values()]
    ids = {run.loop for run in loops}
    placed: dict[int, Cycle] = {}
    for d in decisions:
        if not d.cycle:
            continue
        own = d.event_type.startswith("LOOP_") and d.stage in ids  # the loop's own event
        pool = [
            c
            for c in every
            if c.cycle == d.cycle
            and (c.run.loop == d.stage if own else _member(bodies, c.run.loop, d.stage))
        ]
        # per loop, its cycle started last before the event: a loop's runs follow each other
        found = _last_before({c.run for c in pool}, d.sequence + 0.5, {d.cycle})
        found = [c for c in found if c in pool]
        if len(found) > 1:  # a body node of two loops at work at once: when did it run?
            found = [c for c in found if _ran_then(c, d, t0)] or found
        if not found and len(pool) == 1:
            found = pool
        if len(found) == 1:
            placed[d.sequence] = found[0]
            found[0].events.append(d)
    return placed


def _ran_then(cycle: Cycle, d: DecisionRow, t0: float) -> bool:
    """Whether the cycle's run of the event's node was under way when the event was
    recorded."""
    at = t0 + d.offset_ms / 1000.0
    return any(
        r["node"] == d.stage and _under_way(r, at) for r in cycle.runs if r["cycle"] == d.cycle
    )


def _event_runs(
    decisions: Sequence[DecisionRow],
    runs: Sequence[Row],
    run_cycle: Sequence[Cycle | None],
    event_cycle: dict[int, Cycle],
) -> dict[int, int]:
    by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        by_key[(r["node"], r["cycle"])].append(i)
    found: dict[int, int] = {}
    for d in decisions:
        which = by_key.get((d.stage, d.cycle), [])
        if len(which) > 1:
            which = [i for i in which if run_cycle[i] is event_cycle.get(d.sequence, False)]
        if len(which) == 1:
            found[d.sequence] = which[0]
    return found


def _call_runs(
    calls: Sequence[Row],
    runs: Sequence[Row],
    run_cycle: Sequence[Cycle | None],
    event_cycle: dict[int, Cycle],
) -> list[int | None]:
    by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        by_key[(r["node"], r["cycle"])].append(i)
    found: list[int | None] = []
    for call in calls:
        which = by_key.get((call["node"], call["cycle"]), [])
        related = event_cycle.get(call["related_event_id"]) if call["related_event_id"] else None
        if len(which) > 1 and related is not None:  # the event it answered names the cycle
            which = [i for i in which if run_cycle[i] is related] or which
        if len(which) > 1:  # else the run under way when the call started
            which = [i for i in which if _under_way(runs[i], call["started_at"])] or which
        found.append(which[0] if len(which) == 1 else None)
    return found


def _under_way(run: Row, at: float | None) -> bool:
    """Whether `at` (wall clock) falls within the run (backend clock), give or take."""
    start = float(run["started_at"])
    end = start + float(run["duration_ms"] or 0.0) / 1000.0
    return _within((start, end), at, _CLOCK_SLACK_S)
