"""Who calls a model: the `CallScope` of one node run, and errors tagged with it.

The scheduler builds a `CallScope` for each node run; the gateway reads the request, the
budget and the pinned policy from it, and appends one `LlmCall` per attempt to its `calls`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.errors import NodeError, RateLimited
from engine.events import LlmCall
from engine.models.base import Unavailable
from engine.models.budget import RequestBudget
from engine.plugin.context import RequestInfo

__all__ = ["CallScope", "Emit", "located"]

Emit = Callable[..., int]
"""`(event_type, *, decision=, reason_codes=, inputs=, outputs=, payload=, duration_ms=) -> int`,
the shape of `NodeContext.emit`; returns the event's sequence number."""


def _no_emit(event_type: str, **_: Any) -> int:
    return 0


def _no_degrade(reason: str) -> None:
    return None


@dataclass(slots=True)
class CallScope:
    """Who is calling: one node run of one request (built by the scheduler per node run).

    Attributes:
        request: the request the node runs for.
        node_id: the calling node.
        cycle: the loop cycle (0 outside loops).
        node_attempt: which run of the node this is (0 for the first, 1 for the node's
            first retry, ...): the scheduler retries a node by running it again, and the
            gateway numbers each call's attempts from it, so that a node retry is a new
            attempt to a provider seeded per attempt (`sim`), not a replay of the last.
        speculative: whether the node run started speculatively (calls are recorded as
            `speculative`, with outcome `none` until the scheduler knows it).
        budget: the request's cost budget.
        policy: the pinned policy snapshot (`egress.redact`, `egress.allow_unredacted`,
            `store_text`).
        emit: records an orchestration event for the node (`NodeContext.emit`'s shape).
        calls: the gateway appends one `LlmCall` per attempt here; the scheduler sends
            them to the sink with their final outcome.
        deadline: the request's hard deadline on the `anyio.current_time()` clock;
            retries never sleep past it.
        degrade: marks the request degraded with a reason code (a fallback model answered).
        clock: `anyio.current_time`, or the same clock bound once (the scheduler's
            backend's), which spares each read finding the running backend.
    """

    request: RequestInfo
    node_id: str
    cycle: int = 0
    node_attempt: int = 0
    speculative: bool = False
    budget: RequestBudget = field(default_factory=RequestBudget)
    policy: Mapping[str, Any] = field(default_factory=dict)
    emit: Emit = _no_emit
    calls: list[LlmCall] = field(default_factory=list)
    deadline: float | None = None
    degrade: Callable[[str], None] = _no_degrade
    clock: Callable[[], float] = anyio.current_time


def located(exc: NodeError, scope: CallScope, attempts: int) -> NodeError:
    """The same error, tagged with the node and request, saying how many attempts ran."""
    reason = f"{exc.reason} (after {attempts} attempt{'s' if attempts != 1 else ''})"
    ids: dict[str, Any] = {"node_id": scope.node_id, "request_id": scope.request.id}
    if isinstance(exc, RateLimited | Unavailable):  # (the wait the endpoint asked for kept)
        return type(exc)(reason, retry_after_s=exc.retry_after_s, **ids)
    try:
        return type(exc)(reason, **ids)
    except TypeError:
        return exc
