"""Durable answers: a response leaves only once its request's record is committed.

A client that got a 200 must find its request in the store even if the server is killed
the next instant. Each request waits for its own record (emitted after the request's
cleanup), then for a commit; concurrent requests share one flush of the store writer (group
commit), so the cost is one commit per batch of requests rather than one per request.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from engine.errors import StoreError
from engine.events import Record, RequestRecord
from engine.scheduler.backend import soon_from_thread

__all__ = ["Commits", "Recorded"]


class _Ticket:
    """One request waiting for a commit, and the commit's error if it failed."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: StoreError | None = None


class Recorded:
    """A request's record, once emitted: `Commits.expect` hands one out, `watch` fills it.
    Its figures are final (every call of the request settled), where the request's result
    has only what was spent by the time of the answer."""

    __slots__ = ("event", "record")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.record: RequestRecord | None = None


class Commits:
    """Waits for requests' records and commits them in groups.

    Args:
        flush: blocks until every record so far is committed (run in a worker thread);
            None when there is no store (records are then only awaited).
        flush_soon: asks for a callback, on the store writer's thread, once every record
            so far is committed (`Pipeline.flush_soon`); False when the sink cannot, and
            `flush` is used. Each request then asks the writer itself and is woken by it:
            one hand-off between threads where a worker thread blocking in `flush` costs
            three, and no wait for a round trip through the event loop between commits.
    """

    def __init__(
        self,
        flush: Callable[[], None] | None,
        flush_soon: Callable[[Callable[[StoreError | None], None]], bool] | None = None,
    ) -> None:
        self._flush = flush
        self._flush_soon = flush_soon
        self._soon: Callable[[Callable[[], object]], None] | None = None
        self._recorded: dict[str, Recorded] = {}
        self._waiting: list[_Ticket] = []
        self._wake = anyio.Event()

    @property
    def durable(self) -> bool:
        """Whether answers wait for a commit (there is a store, and waiting is asked for)."""
        return self._flush is not None

    def expect(self, request_id: str) -> Recorded:
        """Register a request before it runs; filled when its record is emitted."""
        recorded = self._recorded[request_id] = Recorded()
        return recorded

    def forget(self, request_id: str) -> None:
        """Stop waiting for a request (it was cancelled: no record will come)."""
        self._recorded.pop(request_id, None)

    def watch(self, item: Record) -> None:
        """A `Pipeline.record_watchers` callback: a request's record has been emitted."""
        if isinstance(item, RequestRecord):
            recorded = self._recorded.pop(item.id, None)
            if recorded is not None:
                recorded.record = item
                recorded.event.set()

    async def committed(self, recorded: Recorded) -> None:
        """Return once the request's record is emitted and committed.

        Raises:
            StoreError: the store could not commit it.
        """
        if not recorded.event.is_set():  # it usually is: emitted before the answer
            await recorded.event.wait()  # (a set event's `wait` still yields a turn)
        if self._flush is None:
            return
        ticket = _Ticket()
        if not self._ask_writer(ticket):
            self._waiting.append(ticket)  # for the committer task's next flush
            self._wake.set()
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error

    def _ask_writer(self, ticket: _Ticket) -> bool:
        """Have the store writer's thread settle `ticket` once its commit is done.

        The writer commits whatever is queued in one transaction, so requests asking
        together still share a commit; a request asking while a commit is under way is
        in the writer's next one, which starts as soon as that ends.
        """
        if self._flush_soon is None:
            return False
        soon = self._soon
        if soon is None:
            soon = self._soon = soon_from_thread()

        def done(error: StoreError | None) -> None:  # on the writer's thread
            ticket.error = error
            soon(ticket.done.set)

        return self._flush_soon(done)

    async def run(self) -> None:
        """The committer task, for sinks without `flush_soon`: one flush (in a worker
        thread) for every request that asked since the last."""
        assert self._flush is not None
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._waiting = self._waiting, []
            error: StoreError | None = None
            with anyio.CancelScope(shield=True):  # a batch asked for is always finished
                try:
                    await anyio.to_thread.run_sync(self._flush)
                except StoreError as exc:
                    error = exc
            for ticket in batch:
                ticket.error = error
                ticket.done.set()
