"""Request ids are unique in the store: a seq a run answered already is refused, never merged."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import DuplicateRequest, MemorySink, Node, NodeContext, Pipeline, load_graph_text
from engine.events import RequestRecord, RequestStatus
from engine.plugin.registry import Registry
from engine.requests import BatchItem
from engine.seqs import DENSE_LIMIT, SeqSet
from engine.store.store import Store, new_run_id

GRAPH = """
moat: 1
name: ids
input: {type: object, required: [n], properties: {n: {type: integer}}}
nodes:
  clean: {type: redact, with: {text: "n={{ input.n }}"}}
output:
  n: input.n
  text: clean.text
"""


def _rows(db: Path) -> list[dict[str, Any]]:
    with Store.open(db) as store:
        return store.query("SELECT id, run_id, seq, output_json FROM requests ORDER BY id")


def _pins(db: Path) -> Counter[str]:
    with Store.open(db) as store:
        rows = store.query(
            "SELECT request_id FROM orchestration_events WHERE event_type = 'POLICY_PINNED'"
        )
    return Counter(row["request_id"] for row in rows)


@pytest.mark.anyio
async def test_answering_a_seq_twice_under_one_run_is_refused_and_the_first_is_kept(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    async with Pipeline(load_graph_text(GRAPH), db=db) as pipe:
        run_id = pipe.start_run(2)
        first = await pipe.run({"n": 1}, run_id=run_id, seq=4)
        with pytest.raises(DuplicateRequest) as caught:
            await pipe.run({"n": 2}, run_id=run_id, seq=4)
        await pipe.finish_run(run_id)
    assert str(caught.value) == (
        f"request {run_id}-000004 (run {run_id}, seq 4) was answered already, and request "
        "ids are unique, so it was not answered again. Give each request of a run its own "
        "seq, or answer it under another run"
    )
    assert isinstance(caught.value, ValueError) and caught.value.seq == 4
    [row] = _rows(db)
    assert row["id"] == first.request_id and row["output"]["n"] == 1
    assert _pins(db) == {first.request_id: 1}  # the refused one left no events either


@pytest.mark.anyio
async def test_requests_under_a_run_without_a_seq_take_the_next_free_ones(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    async with Pipeline(load_graph_text(GRAPH), db=db) as pipe:
        run_id = pipe.start_run(5)
        await pipe.run({"n": 1}, run_id=run_id, seq=1)
        async with anyio.create_task_group() as tg:  # concurrent calls never share one
            for n in range(4):
                tg.start_soon(lambda n=n: pipe.run({"n": n}, run_id=run_id))
        await pipe.finish_run(run_id)
    assert sorted(row["seq"] for row in _rows(db)) == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_requests_of_a_storeless_pipeline_each_have_an_id_of_their_own() -> None:
    # each `Pipeline.run` without a run is a run of its own; thousands a second once drew
    # the same four hex digits of a second's run ids (and so the same request id)
    sink = MemorySink(max_records=1)
    async with Pipeline(load_graph_text(GRAPH), db=None, sink=sink) as pipe:
        ids = [(await pipe.run({"n": n})).request_id for n in range(3000)]
    assert len(set(ids)) == len(ids)


def test_run_ids_handed_out_in_one_second_are_all_distinct() -> None:
    ids = [new_run_id() for _ in range(40_000)]  # past half of a second's 65,536
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"r-\d{8}-\d{6}-[0-9a-f]{4}([0-9a-f]{4})?", i) for i in ids)


@pytest.mark.anyio
async def test_a_batch_answers_the_others_and_then_names_its_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    items = [BatchItem(seq, {"n": n}) for n, seq in enumerate([0, 1, 1, 2, 0, 1])]
    seen: list[RequestRecord] = []
    async with Pipeline(load_graph_text(GRAPH), db=db) as pipe:
        with pytest.raises(DuplicateRequest, match=r"seq 1\) was answered already.*so were 2 more"):
            await pipe.run_batch(items, concurrency=3, on_record=seen.append)
    assert sorted(r.seq for r in seen) == [0, 1, 2]
    rows = _rows(db)
    assert sorted(r["seq"] for r in rows) == [0, 1, 2]
    assert {r["output"]["n"] for r in rows} == {0, 1, 3}  # each seq's first item
    assert set(_pins(db).values()) == {1}


@pytest.mark.anyio
async def test_a_run_adopted_from_the_store_refuses_its_stored_seqs(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    async with Pipeline(load_graph_text(GRAPH), db=db) as pipe:
        run_id = pipe.start_run(3)
        await pipe.run_batch([BatchItem(0, {"n": 0}), BatchItem(1, {"n": 1})], run_id=run_id)
        await pipe.finish_run(run_id, "interrupted")
        with pytest.raises(DuplicateRequest, match=r"seq 0\)"):  # known from the store now
            await pipe.run({"n": 9}, run_id=run_id, seq=0)
    async with Pipeline(load_graph_text(GRAPH), db=db) as pipe:  # another process, later
        with pytest.raises(DuplicateRequest, match=r"seq 1\)"):
            await pipe.run({"n": 9}, run_id=run_id, seq=1)
        await pipe.run({"n": 2}, run_id=run_id, seq=2)
        pipe.flush()
        resumed = pipe.start_batch(resume=run_id)
        summary = await pipe.run_batch([BatchItem(s, {"n": s}) for s in range(4)], batch=resumed)
    assert summary.done == 4 and not summary.interrupted
    assert [r["seq"] for r in _rows(db)] == [0, 1, 2, 3]


class Slow(Node):
    """Sleeps `ms`."""

    type_name = "slow"

    class Config(BaseModel):
        ms: int

    class Output(BaseModel):
        ms: int

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        await anyio.sleep(config.ms / 1000)  # type: ignore[attr-defined]
        return self.Output(ms=config.ms)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_request_that_left_no_record_may_be_answered_again(tmp_path: Path) -> None:
    text = (
        GRAPH.replace("type: redact, with: {text:", "type: slow, with: {ms:")
        .replace('"n={{ input.n }}"', '"{{ input.n }}"')
        .replace("clean.text", "clean.ms")
    )
    graph = load_graph_text(text, registry=Registry([Slow]))
    async with Pipeline(graph, db=None) as pipe:
        run_id = pipe.start_run(1)
        with anyio.move_on_after(0.05):  # cancelled mid-way: no record
            await pipe.run({"n": 5000}, run_id=run_id, seq=0)
        result = await pipe.run({"n": 1}, run_id=run_id, seq=0)
        with pytest.raises(DuplicateRequest):  # and now it has one
            await pipe.run({"n": 1}, run_id=run_id, seq=0)
    assert result.status == RequestStatus.OK
    assert [r.id for r in pipe.memory.requests()] == [result.request_id]


def test_the_writer_keeps_the_first_record_of_an_id_and_every_other_request(
    tmp_path: Path,
) -> None:
    def record(rid: str, seq: int, output: Any) -> RequestRecord:
        return RequestRecord(
            id=rid,
            run_id="r",
            seq=seq,
            status=RequestStatus.OK,
            started_at=1.0,
            finished_at=2.0,
            latency_ms=1.0,
            cost_usd=0.0,
            output=output,
            error=None,
        )

    db = tmp_path / "moat.db"
    with Store.open(db) as store:
        writer = store.writer()
        try:
            for seq, output in ((0, "first"), (1, "other"), (0, "second"), (2, "late")):
                writer.record(record(f"r-{seq:06d}", seq, output))
            writer.flush()
            writer.record(record("r-000001", 1, "third"))
            writer.flush()
            assert writer.stats.duplicates == 2
        finally:
            writer.close()
    assert [(r["seq"], r["output"]) for r in _rows(db)] == [(0, "first"), (1, "other"), (2, "late")]


def test_a_seq_set_is_a_set() -> None:
    seqs = SeqSet([3, -1, DENSE_LIMIT + 5])
    assert not seqs.add(3) and not seqs.add(-1) and not seqs.add(DENSE_LIMIT + 5)
    assert seqs.add(0) and seqs.add(10**12) and 10**12 in seqs and 4 not in seqs
    seqs.discard(3)
    seqs.discard(DENSE_LIMIT + 5)
    assert 3 not in seqs and seqs.add(3) and seqs.add(DENSE_LIMIT + 5)


# A run's history: answer one request, a batch, or reopen the store as another process
# would; seqs are drawn from a small range so that they repeat.
_seq = st.integers(0, 6)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("run"), _seq),
        st.tuples(st.just("batch"), st.lists(_seq, max_size=6)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    min_size=1,
    max_size=8,
)


async def _play(db: Path, steps: list[tuple[str, Any]]) -> list[str]:
    graph = load_graph_text(GRAPH)
    answered: list[str] = []
    run_id = ""
    index = 0
    while index < len(steps):
        async with Pipeline(graph, db=db) as pipe:
            run_id = run_id or pipe.start_run(None)
            for kind, arg in steps[index:]:
                index += 1
                if kind == "reopen":
                    break
                if kind == "run":
                    try:
                        result = await pipe.run({"n": arg}, run_id=run_id, seq=arg)
                    except DuplicateRequest as exc:
                        assert exc.request_id in answered
                    else:
                        answered.append(result.request_id)
                    continue
                items = [BatchItem(seq, {"n": seq}) for seq in arg]
                seen: list[RequestRecord] = []
                try:
                    await pipe.run_batch(items, run_id=run_id, on_record=seen.append)
                except DuplicateRequest as exc:
                    refused = {exc.seq, *exc.others}
                    assert refused <= set(arg)
                answered += [r.id for r in seen]
            pipe.flush()
    return answered


@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_steps)
def test_every_answered_request_is_stored_exactly_once_and_none_is_lost(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]]
) -> None:
    db = tmp_path_factory.mktemp("ids") / "moat.db"
    answered = anyio.run(_play, db, steps)
    assert len(answered) == len(set(answered))  # nothing answered twice
    rows = _rows(db)
    assert sorted(r["id"] for r in rows) == sorted(answered)  # and nothing lost
    for row in rows:  # each stored request is its own: its seq's first answer
        assert row["output"] == {"n": row["seq"], "text": f"n={row['seq']}"}
    assert all(count == 1 for count in _pins(db).values())  # no records merged into one


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_process_draws_run_ids_of_its_own() -> None:
    # without reseeding, a child would draw the very digits its parent draws next
    from engine.store import store as store_module

    draw = store_module._RUN_IDS._random.getrandbits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draw, to the parent
        os.write(write, str(draw(64)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = int(os.read(read, 64).decode())
    os.close(read)
    assert child != draw(64)
