"""Demand-driven evaluation: frames of lazy nodes, and consumers that demand what they read.

A `Frame` is one instance of a `Scope` (the request's top level, or one loop cycle) and
holds its lazy nodes. A `Consumer` is whoever evaluates expressions in a frame (a node's
`when`/`with:`, the request's `output`, a loop's `until`/`output`); it is also the scope
mapping the expressions read. Evaluating an expression that reaches a node not resolved
yet (`Unresolved`) demands, concurrently, that node and every node the expression reads on
all paths (`expr.certain`); what other expressions of the same template or `output:` reach
is demanded in the same round. So laziness never serialises independent work, and
untaken branches never run. (A node whose `with:` reads the same nodes on every path
needs no rounds: the node runner notes and demands them itself, through `note_read` and
`demand_all`, and builds the config without a `Consumer`.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import EvaluationError
from engine.events import EventType, NodeOutcome, NodeStatus
from engine.expr.expression import Unresolved
from engine.scheduler.lazy import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, LazyNode, Status
from engine.scheduler.request import RequestState

if TYPE_CHECKING:
    from engine.expr.expression import Expr, Template
    from engine.graph.compiled import Scope
    from engine.scheduler.backend import Together, Waiter

__all__ = [
    "Consumer",
    "Executor",
    "Frame",
    "InputFailed",
    "claim_single",
    "demand_all",
    "evaluate",
    "evaluate_outputs",
    "fence_out",
    "mark_demanded",
    "note_read",
    "try_evaluate",
]


class Executor(Protocol):
    """What evaluation needs from the node runner (`engine.scheduler.node.NodeRunner`)."""

    async def execute(self, cell: LazyNode, spawn: bool) -> None:
        """Run a claimed node in the current task; never raises but cancellation."""

    def spawn(self, cell: LazyNode, by: str) -> None:
        """Start a node a speculative task (`by`) needs in its own cancellable task."""

    def detach(self, cell: LazyNode) -> None:
        """Start a pending node on demand in a task of its own (`fence_out`)."""

    def busy_input(self, cell: LazyNode) -> LazyNode | None:
        """An input `cell` needs that is still running (None when it could start now)."""

    def sorted_names(self, names: frozenset[str]) -> tuple[str, ...]:
        """`names` in a stable order (cached)."""

    def only_pending_input(self, cell: LazyNode) -> LazyNode | None:
        """The one input a plain `cell` has left to wait for, when that is all it waits for."""

    def new_waiter(self) -> Waiter:
        """Something for one task to wait on until a lazy node resolves."""

    @property
    def together(self) -> Together:
        """Runs claimed nodes side by side, the first in the current task."""


class InputFailed(Exception):
    """A node a consumer needs failed or was cancelled (internal control flow).

    Attributes:
        cell: the node that failed.
        node_id: the node where the failure started.
        error: the original error.
    """

    def __init__(self, cell: LazyNode) -> None:
        self.cell = cell
        self.node_id = cell.error_node or cell.node.id
        error = cell.error
        if error is None:
            error = EvaluationError(f"node '{cell.node.id}' was cancelled before it finished")
        self.error: BaseException = error
        super().__init__(self.node_id)


class Frame:
    """One instance of a scope: the request's top level or one loop cycle.

    Args:
        req: the request.
        ex: the node runner.
        scope: the compiled scope.
        parent: the enclosing frame (loop bodies read outer nodes through it).
        cycle: the loop cycle (1-based), 0 at the top level.
        fixed: the names that are not nodes (`input`, `policy`, `request`, `cycle`, `prev`).
    """

    __slots__ = (
        "cells",
        "children",
        "closed",
        "cycle",
        "depth",
        "detached",
        "ex",
        "fence",
        "fixed",
        "parent",
        "req",
        "scope",
        "spec_cells",
    )

    def __init__(
        self,
        req: RequestState,
        ex: Executor,
        scope: Scope,
        parent: Frame | None,
        cycle: int,
        fixed: dict[str, Any],
        timed: bool = False,
    ) -> None:
        self.req = req
        self.ex = ex
        self.scope = scope
        self.parent = parent
        self.cycle = cycle
        self.fixed = fixed
        if parent is None:
            self.depth = 0
            self.fence = -1
        else:
            self.depth = parent.depth + 1
            self.fence = parent.depth if timed else parent.fence
        """`depth`: how many loop cycles enclose the frame. `fence`: the depth of the
        frames outside the innermost loop with a `timeout_ms` of its own around this one
        (-1: none). That timeout cancels whatever runs inline in the loop's task, so a
        node of those frames, which others outside the loop may wait for, never runs
        inline here (`fence_out`)."""
        self.cells: dict[str, LazyNode] = {}
        self.spec_cells: list[LazyNode] = []
        """Nodes of this frame that got a background task (speculative starts)."""
        self.detached: list[LazyNode] | None = None
        """Nodes of this frame run on demand in a task of their own (`fence_out`)."""
        self.closed = False
        """True once its outputs resolved and its leftover work was cleaned up."""
        self.children: list[Frame] | None = None
        """The loop cycles run inside this frame."""
        if parent is None:
            req.frame = self
        elif parent.children is None:
            parent.children = [self]
        else:
            parent.children.append(self)

    def cell(self, name: str) -> LazyNode | None:
        """The lazy node `name` of this frame or the nearest enclosing one (created lazily)."""
        frame: Frame | None = self
        while frame is not None:
            cell = frame.cells.get(name)
            if cell is not None:
                return cell
            node = frame.scope.nodes.get(name)
            if node is not None:
                cell = frame.cells[name] = LazyNode(node, frame)
                return cell
            frame = frame.parent
        return None

    def release(self) -> None:
        """Break the reference cycles of the frame and its loop cycles (the request has
        been recorded)."""
        for cell in self.cells.values():
            cell.reads = None
        self.cells.clear()
        self.spec_cells.clear()
        self.detached = None
        children, self.children = self.children, None
        for child in children or ():
            child.release()

    def values(self) -> dict[str, Any]:
        """What `prev` shows next cycle: every node's value, none unless the cycle needed it.

        A node the cycle needed (demanded) and that finished shows its output; one that
        was skipped, short-circuited, cancelled, never needed, or speculative work nobody
        used shows none, so what `prev` holds never depends on how fast speculation ran.
        """
        cells = self.cells
        values: dict[str, Any] = {}
        for node_id in self.scope.order:
            cell = cells.get(node_id)
            if cell is not None and cell.status is FINISHED and cell.demanded:
                values[node_id] = cell.result
            else:
                values[node_id] = None
        return values

    def __repr__(self) -> str:
        return f"<Frame cycle={self.cycle} nodes={list(self.scope.nodes)}>"


class Consumer(Mapping[str, Any]):
    """An evaluator of expressions in a frame, and the scope mapping they read.

    Args:
        frame: where names are looked up.
        owner: the node whose expressions these are (None for the request's `output`).
        spawn: True inside a cancellable speculative task: nodes it demands then start in
            their own tasks instead of inline, so cancelling this task never cancels work
            others wait for.
        label: who is consuming, for events (`RESULT_REUSED`).

    Reading a node that has not resolved yet raises `Unresolved` rather than `KeyError`:
    it is what the expression would report anyway, and the scheduler's cue to demand it.
    """

    __slots__ = ("fixed", "frame", "label", "owner", "seen", "spawn")

    def __init__(self, frame: Frame, owner: LazyNode | None, spawn: bool, label: str) -> None:
        self.frame = frame
        self.fixed = frame.fixed
        self.owner = owner
        self.spawn = spawn
        self.label = label
        seen: list[LazyNode] | None = [] if owner is None else owner.reads
        if seen is None:
            seen = owner.reads = []  # type: ignore[union-attr]
        self.seen = seen
        """The nodes read or demanded, in order (each once; lists are small). A node's
        consumers share its `reads`: its guard and its config were read by the same run."""

    # -- the scope mapping ------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        fixed = self.fixed
        if name in fixed:
            return fixed[name]
        frame = self.frame
        cell = frame.cells.get(name) or frame.cell(name)
        if cell is None:
            raise KeyError(name)
        if cell.status is FINISHED:
            if cell not in self.seen:
                self.note(cell)
            return cell.result
        # What `Expr.evaluate` would turn this KeyError into, without the detour.
        raise Unresolved(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self.fixed:
            return True
        cell = self.frame.cell(name)
        return cell is not None and cell.status is FINISHED

    def __iter__(self) -> Iterator[str]:
        yield from self.fixed
        frame: Frame | None = self.frame
        while frame is not None:
            yield from frame.scope.nodes
            frame = frame.parent

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- consumption ------------------------------------------------------------------

    def note(self, cell: LazyNode) -> None:
        """Record that this consumer reads `cell` (reuse, speculative join)."""
        self.seen.append(cell)
        note_read(cell, self.owner, self.label)

    def gather(self, expr: Expr | Template, first: str, into: list[LazyNode]) -> None:
        """Add to `into` what `expr` needs next: the node it just reached, and its certain nodes.

        Raises:
            InputFailed: one of them already failed.
            EvaluationError: `first` is not a node in scope.
        """
        cell = self.frame.cell(first)
        if cell is None or cell.status is FINISHED:
            raise EvaluationError(f"expression reads {first!r}, which is not in scope")
        self._add(cell, into)
        self.pending(expr.certain, into)

    def pending(self, names: frozenset[str], into: list[LazyNode]) -> None:
        """Add to `into` the nodes among `names` that have not resolved (in a stable order).

        Raises:
            InputFailed: one of them already failed.
        """
        fixed = self.fixed
        frame = self.frame
        for name in names if len(names) == 1 else frame.ex.sorted_names(names):
            if name not in fixed:
                cell = frame.cells.get(name) or frame.cell(name)
                if cell is not None:
                    self._add(cell, into)

    def _add(self, cell: LazyNode, into: list[LazyNode]) -> None:
        if cell not in self.seen:
            self.note(cell)
        status = cell.status
        if status is FINISHED:
            return
        if status is FAILED or status is CANCELLED:
            raise InputFailed(cell)
        if cell not in into:
            into.append(cell)

    def inline(self, cells: list[LazyNode]) -> LazyNode | None:
        """The one pending node of `cells` to run in this task (claimed), if that is all.

        Inside a loop with a timeout, the nodes of frames outside it start in tasks of
        their own first (`fence_out`).
        """
        fence = self.frame.fence
        if fence >= 0 and not self.spawn:
            fence_out(self.frame.ex, cells, fence)
        return claim_single(cells, self.spawn)

    async def demand_all(self, cells: list[LazyNode]) -> None:
        """Demand `cells` concurrently (the first inline); raise if one failed.

        Raises:
            InputFailed: one of them failed (or was cancelled).
        """
        await demand_all(self.frame.ex, cells, self.spawn, self.label)

    def __repr__(self) -> str:
        return f"<Consumer {self.label!r} cycle={self.frame.cycle}>"


def claim_single(cells: list[LazyNode], spawn: bool) -> LazyNode | None:
    """The one pending node of `cells` to run in this task (claimed), if that is all.

    Never inside a speculative task (`spawn`): cancelling it must not cancel work that
    others may wait for.
    """
    if len(cells) != 1 or spawn:
        return None
    cell = cells[0]
    if cell.status is not PENDING:
        return None
    cell.status = RUNNING  # claimed
    return cell


def fence_out(ex: Executor, cells: list[LazyNode], fence: int) -> None:
    """Start in a task of its own every pending node of `cells` from a frame at depth
    `fence` or above: one that a loop with a `timeout_ms` needs from outside itself.

    Run inline, such a node would run under the loop's timeout, and the loop timing out
    would cancel it while other consumers outside the loop still need its one run.
    """
    for cell in cells:
        if cell.status is PENDING and cell.frame.depth <= fence:
            ex.detach(cell)


def note_read(cell: LazyNode, owner: LazyNode | None, label: str) -> None:
    """`owner` (None: the request's output) reads `cell`: count a reuse, pass on demand."""
    cell.consumers += 1
    if cell.consumers > 1:
        cell.frame.req.node_event(
            cell, EventType.RESULT_REUSED, decision="reuse", payload=_reuse_payload(label, cell)
        )
    if (owner is None or owner.demanded) and not cell.demanded:
        if cell.speculative or cell.reads:
            mark_demanded(cell)
        else:
            cell.demanded = True  # what `mark_demanded` comes to: nothing to join or pass on


_REUSE_PAYLOADS: dict[tuple[str, Status], dict[str, str]] = {}
"""`RESULT_REUSED` payloads by consumer and status: a dozen reuses a request record the
same few payloads, which records share (they are never changed once recorded)."""


def _reuse_payload(label: str, cell: LazyNode) -> dict[str, str]:
    key = (label, cell.status)
    payload = _REUSE_PAYLOADS.get(key)
    if payload is None:
        if len(_REUSE_PAYLOADS) >= 4096:  # labels are node ids: only many graphs get here
            _REUSE_PAYLOADS.clear()
        payload = _REUSE_PAYLOADS[key] = {"consumer": label, "status": cell.status.value}
    return payload


async def demand_all(ex: Executor, cells: list[LazyNode], spawn: bool, label: str) -> None:
    """Make `cells` (already noted as read) resolve together, the first one inline.

    `spawn` is True inside a cancellable speculative task: what it starts then runs in
    tasks of its own. `label` names who demands, for events.

    Raises:
        InputFailed: one of them failed (or was cancelled).
    """
    if len(cells) == 1:
        (cell,) = cells
        if cell.status is PENDING and not spawn:
            cell.claim()
            await ex.execute(cell, False)
        else:  # wait for it, started elsewhere if nobody has (no frame in between)
            while cell.status is PENDING:
                busy = _start_or_wait(ex, cell, label)
                if busy is None:
                    break
                await busy.wait()
            await cell.wait()
        check(cell)
        return
    await _demand_many(ex, cells, spawn, label)
    for cell in cells:
        check(cell)


async def _demand_many(ex: Executor, cells: list[LazyNode], spawn: bool, label: str) -> None:
    idle = [cell for cell in cells if cell.status is PENDING]
    if spawn:
        await _start_elsewhere(ex, idle, label)
    elif len(idle) == 1:
        idle[0].claim()
        await ex.execute(idle[0], False)
    elif len(idle) == 2 and ex.only_pending_input(idle[1]) is idle[0]:
        # the second starts by waiting for the first: both here, one after the other
        for cell in idle:
            if cell.status is PENDING:
                cell.claim()
                await ex.execute(cell, False)
    elif len(idle) == 2 and ex.only_pending_input(idle[0]) is idle[1]:
        idle[0].claim()  # it runs the second first, right here
        await ex.execute(idle[0], False)
    elif idle:
        for cell in idle:
            cell.claim()
        await ex.together(ex.execute, idle)
    for cell in cells:
        if not cell.done:
            await cell.wait()


def _start_or_wait(ex: Executor, cell: LazyNode, label: str) -> LazyNode | None:
    """Start a pending `cell` a speculative task needs in a task of its own, or not yet.

    While an input of the cell is still being computed it is not started: the caller
    waits for the input returned first, because whoever computes it usually goes on to
    run the cell inline (the request path demanding the same chain), which saves a task
    and its memory. A cell nobody has claimed by then starts here.
    """
    running = ex.busy_input(cell)
    if running is None:
        ex.spawn(cell, label)
    return running


async def _start_elsewhere(ex: Executor, cells: list[LazyNode], label: str) -> None:
    """`_start_or_wait` for several cells, waiting for one busy input at a time."""
    waiting = cells
    while waiting:
        later: list[LazyNode] = []
        busy: LazyNode | None = None
        for cell in waiting:
            if cell.status is PENDING:
                running = _start_or_wait(ex, cell, label)
                if running is not None:
                    later.append(cell)
                    busy = busy or running
        if busy is None:
            return
        await busy.wait()
        waiting = later


def check(cell: LazyNode) -> None:
    """Raise `InputFailed` unless `cell` finished with a value."""
    if cell.status is not FINISHED:
        raise InputFailed(cell)


def mark_demanded(cell: LazyNode) -> None:
    """The request path needs `cell`: join it if speculative, and everything it read."""
    if cell.demanded:
        return
    cell.demanded = True
    if cell.speculative:
        req = cell.frame.req
        req.node_event(cell, EventType.SPECULATIVE_JOIN_REQUIRED, decision="join")
        if cell.done:
            mark_used(cell)
    reads = cell.reads
    if reads:
        for read in list(reads):
            mark_demanded(read)


def mark_used(cell: LazyNode) -> None:
    """A demanded speculative node has finished: its result is used. A run that failed,
    timed out or was skipped had no result to use: `none`, as on demand (`NodeOutcome`)."""
    if cell.settled:
        return
    req = cell.frame.req
    if cell.run_status is not NodeStatus.SUCCEEDED:
        req.settle(cell, NodeOutcome.NONE)
        return
    req.node_event(cell, EventType.SPECULATIVE_RESULT_USED, decision="used")
    req.settle(cell, NodeOutcome.USED)


async def evaluate(expr: Expr | Template, consumer: Consumer) -> Any:
    """Evaluate `expr` for `consumer`, demanding what it reaches until it resolves.

    An expression without conditional parts needs exactly its certain nodes: they are
    demanded together, then it is evaluated once. Otherwise each round evaluates; on
    `Unresolved` it demands, concurrently, the node reached, the certain nodes not
    resolved yet and (in a template) what each other expression reaches, then evaluates
    again. Every node demanded is on the path actually taken, and demanding the certain
    nodes only with the first one reached keeps them concurrent with it.

    Raises:
        InputFailed: a node it needs failed.
        EvaluationError: the expression failed.
    """
    needed: list[LazyNode] = []
    if len(expr.names) == len(expr.certain):
        consumer.pending(expr.certain, needed)
    while True:
        if needed:
            cell = consumer.inline(needed)
            if cell is None:
                await consumer.demand_all(needed)
            else:  # one node to run right here: no extra coroutine frame
                del needed  # not kept alive while it runs
                await consumer.frame.ex.execute(cell, False)
                check(cell)
        first = _stops_at(expr, consumer)
        if first is not None:  # what evaluating would raise, without raising it
            needed = []
            consumer.gather(expr, first, needed)
        else:
            try:
                return expr.evaluate(consumer)
            except Unresolved as exc:
                needed = []
                consumer.gather(expr, exc.name, needed)
        parts = getattr(expr, "expressions", ())
        if len(parts) > 1:
            certain = expr.certain
            for part in parts:
                # A part reading only names the template reads on every path needs nothing
                # the gathering above has not noted and added: probing it would only raise.
                if not part.names <= certain:
                    _probe(part, consumer, needed)


def _stops_at(expr: Expr | Template, consumer: Consumer) -> str | None:
    """The node at which evaluating `expr` would stop at once, unresolved, or None.

    An expression that reads a node first (`first`) raises `Unresolved` for it before
    doing anything else while that node has not finished: the scheduler then gathers it
    directly instead of raising and catching.
    """
    first = expr.first
    if first is None or first in consumer.fixed:
        return None
    frame = consumer.frame
    cell = frame.cells.get(first) or frame.cell(first)
    if cell is None or cell.status is FINISHED:
        return None
    return first


def _probe(expr: Expr, consumer: Consumer, needed: list[LazyNode]) -> None:
    first = _stops_at(expr, consumer)
    if first is not None:
        consumer.gather(expr, first, needed)
        return
    try:
        expr.evaluate(consumer)
    except Unresolved as exc:
        consumer.gather(expr, exc.name, needed)
    except EvaluationError:
        pass  # raised for real by the full evaluation


async def evaluate_outputs(exprs: Mapping[str, Expr], consumer: Consumer) -> dict[str, Any]:
    """Evaluate an `output:` mapping, its expressions' needs demanded together each round.

    When every output reads the same nodes on every path, those are demanded before the
    first evaluation, which then succeeds; otherwise each round evaluates what is left
    and demands what the failed evaluations reached (so the certain nodes are demanded
    together with the first conditional ones reached).

    Raises:
        InputFailed: a node it needs failed.
        EvaluationError: an expression failed (the message names the output).
    """
    values: dict[str, Any] = {}
    pending = list(exprs.items())
    needed: list[LazyNode] = []
    for expr in exprs.values():
        if len(expr.names) != len(expr.certain):
            needed.clear()  # a conditional output: the rounds find what to demand
            break
        consumer.pending(expr.certain, needed)
    while True:
        if needed:
            cell = consumer.inline(needed)
            if cell is None:
                await consumer.demand_all(needed)
            else:  # one node to run right here: no extra coroutine frame
                del needed  # not kept alive while it runs
                await consumer.frame.ex.execute(cell, False)
                check(cell)
        needed = []
        waiting = []
        for name, expr in pending:
            first = _stops_at(expr, consumer)
            if first is not None:
                consumer.gather(expr, first, needed)
                waiting.append((name, expr))
                continue
            try:
                values[name] = expr.evaluate(consumer)
            except Unresolved as exc:
                consumer.gather(expr, exc.name, needed)
                waiting.append((name, expr))
            except EvaluationError as exc:
                raise EvaluationError(f"output '{name}': {exc}") from exc
        if not waiting:
            return {name: values[name] for name in exprs}
        pending = waiting


def try_evaluate(expr: Expr, consumer: Consumer) -> tuple[bool, Any]:
    """Evaluate `expr` only from what has resolved; `(False, None)` if it needs more.

    Raises:
        EvaluationError: the expression failed on resolved values.
    """
    try:
        return True, expr.evaluate(consumer)
    except Unresolved:
        return False, None
