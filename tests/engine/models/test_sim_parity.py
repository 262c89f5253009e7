"""Every shipped graph makes the same decisions on `sim` in-process and over `moat sim-server`.

Each graph answers the same requests twice, with the same run id (so the same request ids
and seeds): once on the embedded `sim` models, once with every model rebound to
`openai:sim-PROFILE` (as `--model NAME=openai:sim-PROFILE` does) against a sim-server on a
free loopback port, reached through `OPENAI_BASE_URL`. Requests run one at a time so that
what the graphs learn online (cache entries, routes, acceptance rates) grows in the same
order on both paths. Every request must reach the same status and output; its node runs
and cost must match too, unless a branch was cancelled on either path (who wins a
speculative race is up to the wall clock, which loopback HTTP shifts by milliseconds).
A race that ends differently on the two paths gives them different things to learn (the
winner's text is cached, the loser's acceptance is counted), so from that request on the
two pipelines no longer share their state: later requests are compared by status only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.workload import generate
from engine import BatchItem, MemorySink, Pipeline, load_graph
from engine.events import RequestRecord
from engine.requests import read_jsonl
from engine.serve.sim_app import SimServer, serve
from tests.support.fast_graphs import GRAPHS, fast_copy

pytestmark = pytest.mark.anyio

SHIPPED = sorted(p.stem for p in GRAPHS.glob("*.yaml"))
RUN_ID = "r-parity"
RACING = {"cascade": 0.1, "governed-answer": 0.05}
"""Graphs whose models race keep latencies long enough (x0.05-0.1: the small and large
models are close in speed, as real ones are) that the simulated latencies, not loopback
HTTP overheads, decide who wins (the sim-server runs uvicorn in a thread of the test's
process, so a busy machine stretches its overhead); the others run at x0.004."""


def _items(graph: str, n: int) -> list[BatchItem]:
    """The graph's example requests, then generated ones (with hidden labels) up to `n`."""
    examples = [item.input for item in read_jsonl(GRAPHS / "examples" / f"{graph}.jsonl")]
    items = [BatchItem(seq, dict(data or {})) for seq, data in enumerate(examples)]
    for line in generate(max(0, n - len(items)), seed=7):
        labels = line.pop("_labels", {})
        items.append(BatchItem(len(items), line, labels=labels))
    return items[:n]


@dataclass(frozen=True)
class Answer:
    """What one request did, as the in-memory records tell it."""

    decided: tuple[str, Any]
    """Its status and output: the same on both paths, always."""
    spent: tuple[float, list[tuple[str, int, str, str]]]
    """Its cost and node runs (node, cycle, status, outcome)."""
    raced: bool
    """Something was cancelled: a race between branches was decided by the wall clock."""


async def _answer(
    graph: Path, items: list[BatchItem], models: Mapping[str, str] | None = None
) -> dict[int, Answer]:
    """Per request seq: what it decided and what it spent, from the in-memory records."""
    sink = MemorySink()
    async with Pipeline(graph, db=None, sink=sink, models=models) as pipe:
        await pipe.run_batch(items, run_id=RUN_ID, total=len(items), concurrency=1)
    runs: dict[str, list[tuple[str, int, str, str]]] = {}
    for run in sink.node_runs():
        runs.setdefault(run.request_id, []).append((run.node, run.cycle, run.status, run.outcome))
    raced = {c.request_id for c in sink.llm_calls() if c.status == "cancelled"}
    raced |= {r.request_id for r in sink.node_runs() if "cancelled" in (r.status, r.outcome)}
    return {
        r.seq: Answer(
            (r.status, r.output), (round(r.cost_usd, 9), sorted(runs.get(r.id, []))), r.id in raced
        )
        for r in sink.items
        if isinstance(r, RequestRecord)
    }


@pytest.fixture
async def sim_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SimServer]:
    import anyio

    async with anyio.create_task_group() as tg:
        server: SimServer = await tg.start(serve, "127.0.0.1", 0)
        server.time_scale = 0.004
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "unused-by-sim-server")
        yield server
        tg.cancel_scope.cancel()


def _rebound(graph: Path) -> dict[str, str]:
    return {name: f"openai:sim-{spec.profile}" for name, spec in load_graph(graph).models.items()}


def _shared_state(local: dict[int, Answer], remote: dict[int, Answer]) -> list[int]:
    """The requests answered while both pipelines had learned the same things: every one
    before the first race that ended differently on the two paths, and that one."""
    assert local.keys() == remote.keys()
    shared: list[int] = []
    for seq in sorted(local):
        shared.append(seq)
        a, b = local[seq], remote[seq]
        if (a.raced or b.raced) and a.decided != b.decided:
            break
    return shared


def _differences(
    local: dict[int, Answer], remote: dict[int, Answer], shared: list[int]
) -> Iterator[str]:
    """Requests of `shared` that decided differently (unless a race decided them), or that
    ran other nodes or cost something else where neither path cancelled anything; any
    request whose status differs."""
    for seq in sorted(local):
        a, b = local[seq], remote[seq]
        raced = a.raced or b.raced
        if seq in shared:
            differs = (a.decided != b.decided and not raced) or (not raced and a.spent != b.spent)
        else:
            differs = a.decided[0] != b.decided[0]
        if differs:
            yield f"request {seq}:\n  sim:        {a}\n  sim-server: {b}"


async def _check_parity(graph_name: str, n: int, tmp_path: Path, server: SimServer) -> None:
    scale = RACING.get(graph_name, 0.004)
    server.time_scale = scale  # as fast as the in-process copy of the graph
    graph = fast_copy(graph_name, tmp_path, time_scale=scale)
    items = _items(graph_name, n)
    local = await _answer(graph, items)
    remote = await _answer(graph, items, _rebound(graph))
    assert server.requests > 0
    assert len(local) == n
    shared = _shared_state(local, remote)
    whole = [seq for seq in shared if not (local[seq].raced or remote[seq].raced)]
    assert len(whole) >= min(n, 30) // 2, "most requests are compared node run by node run"
    differences = list(_differences(local, remote, shared))
    assert not differences, f"{len(differences)} of {n} differ:\n" + "\n".join(differences[:5])


@pytest.mark.parametrize(
    "graph_name",
    # cascade's and governed-answer's requests take 10-17 s over HTTP: the slow set (the
    # others cover the path)
    [
        pytest.param(name, marks=pytest.mark.slow)
        if name in ("cascade", "governed-answer")
        else name
        for name in SHIPPED
    ],
)
async def test_a_graph_decides_the_same_on_sim_and_over_sim_server(
    graph_name: str, tmp_path: Path, sim_server: SimServer
) -> None:
    await _check_parity(graph_name, 30, tmp_path, sim_server)


@pytest.mark.slow
@pytest.mark.parametrize("graph_name", SHIPPED)
async def test_two_hundred_requests_decide_the_same_on_sim_and_over_sim_server(
    graph_name: str, tmp_path: Path, sim_server: SimServer
) -> None:
    await _check_parity(graph_name, 200, tmp_path, sim_server)


async def test_a_review_of_a_plain_question_is_not_read_as_its_principles(
    tmp_path: Path, sim_server: SimServer
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0.004)
    items = [BatchItem(0, {"prompt": "What is a Roth IRA?"})]
    status, output = (await _answer(graph, items, _rebound(graph)))[0].decided
    assert status == "ok"
    assert output["decision"] == "accept"
