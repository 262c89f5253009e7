"""The sim injects faults at the configured rates, each attempt drawing afresh, and the
faults never reshuffle the answers of the calls they spare."""

from __future__ import annotations

import json
import math
from collections import Counter

import anyio
import pytest

from engine.errors import RateLimited, TransientError
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import ProviderRequest, ProviderTimeout, SimProvider
from engine.plugin.context import RequestInfo

RATES = FaultRates(rate_limit=0.1, error=0.05, timeout=0.03, malformed=0.2)
N = 3000


def _call(i: int, attempt: int = 0, node: str = "n", cycle: int = 0) -> ProviderRequest:
    info = RequestInfo(id=f"r{i}", run_id="run", seq=i, tenant="t", input={"prompt": "Hi"})
    return ProviderRequest(
        model="m", messages=[{"role": "user", "content": f"Question {i}?"}], request=info,
        node_id=node, cycle=cycle, attempt=attempt, task="extract", json_mode=True,
    )  # fmt: skip


async def _outcomes(spec: ModelSpec, calls: list[ProviderRequest]) -> list[str]:
    sim = SimProvider(spec)
    found = []
    for call in calls:
        try:
            text = (await sim.complete(call)).text
        except ProviderTimeout:  # (a transient error too: told apart first)
            found.append("timeout")
        except RateLimited:
            found.append("429")
        except TransientError:
            found.append("500")
        else:
            try:
                json.loads(text)
                found.append(text)
            except ValueError:
                found.append("malformed")
    return found


def _close(count: int, n: int, p: float) -> bool:
    return abs(count / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_each_fault_comes_at_its_configured_rate() -> None:
    spec = ModelSpec(provider="sim", profile="large", time_scale=0, faults=RATES)  # type: ignore[arg-type]
    found = Counter(
        o if o in ("429", "500", "timeout", "malformed") else "ok"
        for o in anyio.run(_outcomes, spec, [_call(i) for i in range(N)])
    )
    assert _close(found["429"], N, 0.1), found
    assert _close(found["500"], N, 0.05), found
    assert _close(found["timeout"], N, 0.03), found
    answered = N - found["429"] - found["500"] - found["timeout"]
    assert _close(found["malformed"], answered, 0.2), found


@pytest.mark.parametrize("varied", ["attempt", "node", "cycle"])
def test_a_retry_node_or_cycle_draws_its_faults_afresh(varied: str) -> None:
    """A request that failed once is no likelier to fail again on its next attempt (or at
    another node or cycle): the draws are seeded per attempt, not per request."""
    spec = ModelSpec(provider="sim", profile="small", time_scale=0, faults=RATES)  # type: ignore[arg-type]
    n = 800
    first = anyio.run(_outcomes, spec, [_call(i) for i in range(n)])
    again = anyio.run(_outcomes, spec, [_call(i, **{varied: 1}) for i in range(n)])  # type: ignore[arg-type]
    failed = [i for i, o in enumerate(first) if o in ("429", "500", "timeout")]
    both = sum(again[i] in ("429", "500", "timeout") for i in failed)
    assert len(failed) > 100 and _close(both, len(failed), 0.18), (both, len(failed))
    assert anyio.run(_outcomes, spec, [_call(i) for i in range(200)]) == first[:200]


def test_faults_spare_answers_without_changing_them() -> None:
    calm = ModelSpec(
        provider="sim", profile="medium", time_scale=0, faults=FaultRates(malformed=0.0)
    )  # type: ignore[arg-type]
    stormy = ModelSpec(provider="sim", profile="medium", time_scale=0,
                       faults=FaultRates(rate_limit=0.3, error=0.2, malformed=0.0))  # type: ignore[arg-type]  # fmt: skip
    calls = [_call(i) for i in range(400)]
    quiet = anyio.run(_outcomes, calm, calls)
    noisy = anyio.run(_outcomes, stormy, calls)
    spared = [(q, n) for q, n in zip(quiet, noisy, strict=True) if n not in ("429", "500")]
    assert len(spared) > 150 and all(q == n for q, n in spared)
