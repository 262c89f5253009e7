"""Answering a request while its client is connected: a client that goes away, or a server
that stops, cancels the request's work, and the request is recorded `cancelled`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import sniffio
from starlette.requests import Request

from engine.errors import DuplicateRequest
from engine.scheduler.runner import RequestResult
from engine.serve._http import _client_closed
from engine.serve._served import _Ids, _Served
from engine.serve.disconnect import cancel_on_disconnect, watch_disconnect
from engine.serve.metrics import Metrics
from engine.serve.wire import ApiError

log = logging.getLogger("moat.serve")


class _Attending:
    """The requests `MoatServer` is answering, each cancelled when its client leaves or
    the server cuts it off; the server sets the attributes below in its `__init__`."""

    slot: tuple[int, int]
    metrics: Metrics
    _attended: set[anyio.CancelScope]
    _cut_off: str | None

    def cut_off(self, reason: str) -> None:
        """Stop answering the requests in flight: each is answered 503 `shutting_down`
        with its request id, and recorded `cancelled` with `reason`. The listener calls
        it when the grace period of a shutdown is over, before it would cancel the
        requests' tasks under the app (a bare 500 and a traceback)."""
        self._cut_off = reason
        for scope in list(self._attended):
            scope.cancel()

    async def _run_attended(
        self, request: Request, served: _Served, data: dict[str, Any], tenant: str
    ) -> tuple[RequestResult, tuple[int, int, int]]:
        """Run the request while its client is connected: a client that goes away
        cancels the request's work, model calls included, and the request and its calls
        are recorded `cancelled`."""
        ids = served.next_request(self.slot)
        if sniffio.current_async_library() != "asyncio":
            return await self._run_attended_anyio(request, served, data, tenant, ids)
        scope = anyio.CancelScope()
        watch = watch_disconnect(request, scope)
        self._attended.add(scope)
        try:
            with scope:
                return await self._run(served, data, tenant, request.headers, ids)
        finally:
            watch.cancel()
            self._attended.discard(scope)
        # only a disconnect or a cut-off cancels the scope, which then ends the request here
        raise self._ended_early(ids.request_id)

    def _ended_early(self, request_id: str) -> ApiError:
        """Why a request ended before its answer: its client left, or the server cut it off."""
        if self._cut_off is None:
            return _client_closed()
        return ApiError(
            503,
            f"the server stopped before request {request_id} was answered ({self._cut_off}); "
            "send it again",
            type="server_error",
            code="shutting_down",
            headers={"x-moat-request-id": request_id},
        )

    async def _run_attended_anyio(
        self,
        request: Request,
        served: _Served,
        data: dict[str, Any],
        tenant: str,
        ids: _Ids,
    ) -> tuple[RequestResult, tuple[int, int, int]]:
        outcome: list[tuple[RequestResult, tuple[int, int, int]] | ApiError] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, request, tg.cancel_scope)
            self._attended.add(tg.cancel_scope)
            try:
                outcome.append(await self._run(served, data, tenant, request.headers, ids))
            except ApiError as exc:  # a value, not an exception group out of the task group
                outcome.append(exc)
            finally:
                self._attended.discard(tg.cancel_scope)
            tg.cancel_scope.cancel()
        if not outcome:
            raise self._ended_early(ids.request_id)
        if isinstance(outcome[0], ApiError):
            raise outcome[0]
        return outcome[0]

    async def _run(
        self,
        served: _Served,
        data: dict[str, Any],
        tenant: str,
        headers: Mapping[str, str],
        ids: _Ids,
    ) -> tuple[RequestResult, tuple[int, int, int]]:
        pipe = served.pipe
        run_id, seq, request_id = ids
        counts = served.tokens[request_id] = [0, 0, 0]
        self.metrics.continue_trace(request_id, headers)  # W3C `traceparent`, with --otel
        recorded = served.commits.expect(request_id)
        served.inflight[run_id] = served.inflight.get(run_id, 0) + 1
        try:
            result = await pipe.run(
                data, run_id=run_id, seq=seq, tenant=tenant, record_cancelled=self._why_cancelled
            )
            # the answer leaves only once it is in the store (a kill -9 loses no 200); an
            # answered request is not cut off while it waits (it would be told to send
            # again what the store has as answered)
            with anyio.CancelScope(shield=True):
                await served.commits.committed(recorded)
            if recorded.record is not None:  # the stored cost: calls settled after the answer
                result = replace(result, cost_usd=recorded.record.cost_usd)
        except ApiError:
            raise
        except DuplicateRequest as exc:  # a numbering fault: the id is an earlier request's
            log.error("serve.request_id_taken", extra={"request_id": request_id, "run_id": run_id})
            raise ApiError(
                500,
                "moat numbered this request with the id of a request it answered before, so "
                "it did not run it (nothing was recorded); send it again, and see the "
                "server log",
                type="server_error",
                code="internal_error",
            ) from exc
        except Exception as exc:  # a bug in moat: the client gets its id, the log the rest
            log.exception("serve.request_crashed", extra={"request_id": request_id})
            raise ApiError(
                500,
                f"moat could not answer request {request_id}; the server log has the details",
                type="server_error",
                code="internal_error",
                headers={"x-moat-request-id": request_id},
            ) from exc
        finally:
            served.inflight[run_id] -= 1
            served.tokens.pop(request_id, None)
            served.commits.forget(request_id)
        return result, (counts[0], counts[1], counts[2])

    def _why_cancelled(self) -> str | None:
        """What a cancelled request's record says (None: its caller hung up)."""
        if self._cut_off is None:
            return None
        return f"the server stopped before it was answered ({self._cut_off})"
