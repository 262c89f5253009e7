"""The gateway's backoff between the attempts of a call is drawn afresh on a node's retry.

The scheduler retries a failed node by running it again; the gateway's jitter, seeded per
request, node, cycle and prompt, must also depend on which run of the node it is, or every
retry of the node would wait exactly as long as the run before it (full jitter spreads
retries so that callers failing together do not come back together). A node's first run
waits as it always has.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from engine.errors import NodeError, TransientError
from engine.graph.spec import ModelSpec
from engine.models import CallScope, Gateway, ProviderRequest, ProviderResponse
from engine.plugin.context import RequestInfo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


class _Failing:
    """A provider whose every attempt fails with a transient error, noting when."""

    name = "sim"

    def __init__(self) -> None:
        self.times: list[float] = []

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        self.times.append(anyio.current_time())
        raise TransientError("busy")

    async def aclose(self) -> None:
        return None


async def _waits(node_attempt: int, max_retries: int = 3) -> list[float]:
    """The waits between the attempts of one call made by run `node_attempt` of the node."""
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    scope = CallScope(request=info, node_id="answer", node_attempt=node_attempt)
    model = ModelSpec(provider="sim", profile="small", max_retries=max_retries)
    provider = _Failing()
    async with Gateway({"m": model}, providers={"m": provider}) as gateway:
        with pytest.raises(NodeError, match="busy"):
            await gateway.client("m", scope).complete(prompt="x")
    return [round(b - a, 9) for a, b in pairwise(provider.times)]


async def test_each_run_of_a_node_waits_its_own_backoff_between_attempts() -> None:
    waits = [await _waits(n) for n in range(3)]
    assert all(len(w) == 3 for w in waits)
    assert waits[0] != waits[1] and waits[1] != waits[2] and waits[0] != waits[2]


async def test_the_backoff_stays_within_its_ceiling_on_every_run_of_the_node() -> None:
    for n in range(3):
        for attempt, wait in enumerate(await _waits(n)):
            assert 0 <= wait <= 0.25 * 2**attempt


async def test_a_node_s_first_run_waits_as_it_always_has() -> None:
    """The same request, node, cycle and prompt wait the same on every run of the graph,
    and as long as before node runs were told apart."""
    assert await _waits(0) == await _waits(0) == [0.052330131, 0.00684975, 0.492036254]
