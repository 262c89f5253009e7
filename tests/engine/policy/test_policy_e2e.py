"""Policies under a real run: hot swap halfway through a batch, and the guard rolling back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from engine.api import Pipeline
from engine.events import RequestRecord
from engine.policy.manager import apply_policy
from engine.requests import BatchItem
from engine.store.store import Store
from tests.support.fast_graphs import ROOT, fast_copy


def items(n: int, start: int = 0) -> list[BatchItem]:
    """Distinct tickets: no two share their ticket, order or customer number."""
    return [
        BatchItem(
            seq,
            {
                "prompt": f"Ticket {seq}: order {1000 + seq} arrived late, "
                f"please refund. - Customer {seq}"
            },
        )
        for seq in range(start, start + n)
    ]


def _guard_outcome(db: Path) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """The extract policy's versions with their status, and the payloads of the guard's
    `POLICY_ROLLED_BACK` events."""
    with Store.open(db) as store:
        versions = {v["version"]: v["status"] for v in store.policy_versions("extract")}
        events = store.query(
            "SELECT payload_json FROM orchestration_events WHERE event_type = 'POLICY_ROLLED_BACK'"
        )
    return versions, [event["payload"] for event in events]


def write_policy(path: Path, **changes: object) -> Path:
    body = yaml.safe_load((ROOT / "policies" / "extract.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        body[section][key] = value
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.slow  # ~9 s: a batch with a swap in its middle
@pytest.mark.anyio
async def test_a_policy_applied_mid_batch_pins_new_requests_and_keeps_in_flight_ones(
    tmp_path: Path,
) -> None:
    # models slow enough (tens of ms a call) that the batch outlasts the swap's pickup
    graph = fast_copy("extract", tmp_path, time_scale=0.2)
    db = tmp_path / "moat.db"
    newer = write_policy(tmp_path / "extract-v2.yaml", validate__max_repairs=3)
    seen: list[RequestRecord] = []
    async with Pipeline(graph, db=db) as pipe:
        assert pipe.policy is not None
        pipe.policy.poll_interval_s = 0.05
        run_id = pipe.start_run(240)

        async def swap_when_a_third_is_done() -> None:
            while len(seen) < 40:
                await anyio.sleep(0.01)
            with Store.open(db) as other:  # as `moat policy apply` from another process
                apply_policy(other, newer, reason="test swap")

        async with anyio.create_task_group() as tg:
            tg.start_soon(swap_when_a_third_is_done)
            await pipe.run_batch(
                items(240), run_id=run_id, total=240, concurrency=6, on_record=seen.append
            )
        pipe.flush()
    with Store.open(db) as store:
        rows = store.list_requests(run_id)
        (activation,) = [a for a in store.policy_history("extract") if a["version"] == 2]
    assert sorted(r["seq"] for r in rows) == list(range(240))
    assert {r["policy_version"] for r in rows} == {1, 2}
    switched = activation["activated_at"]
    assert all(r["policy_version"] == 1 for r in rows if r["started_at"] < switched)
    assert all(r["policy_version"] == 2 for r in rows if r["started_at"] > switched + 1.0)


@pytest.mark.anyio
async def test_a_policy_that_sends_everything_to_the_large_model_is_rolled_back_by_its_guard(
    tmp_path: Path,
) -> None:
    graph = fast_copy("extract", tmp_path)
    db = tmp_path / "moat.db"
    body = yaml.safe_load((ROOT / "policies" / "extract.yaml").read_text())
    body["guard"] = {"window": 20, "max_cost_ratio": 1.3}
    first = tmp_path / "v1.yaml"
    first.write_text(yaml.safe_dump(body))
    body["router"]["complexity_threshold"] = 0.0
    body["router"]["threshold"] = 1.0
    bad = tmp_path / "v2.yaml"
    bad.write_text(yaml.safe_dump(body))
    async with Pipeline(graph, db=db, policy_file=first) as pipe:
        assert pipe.policy is not None
        pipe.policy.poll_interval_s = 0.05
        run_id = pipe.start_run(80)
        await pipe.run_batch(items(30), run_id=run_id, total=80, concurrency=4)
        applied = pipe.policy.apply(bad, reason="everything to large")
        await pipe.run_batch(items(50, start=30), run_id=run_id, total=80, concurrency=4)
        with anyio.fail_after(30):
            while pipe.policy.current().version == applied.pin.version:
                await anyio.sleep(0.05)
        pipe.flush()
    versions, rollbacks = _guard_outcome(db)
    assert versions[applied.pin.version] == "bad"
    assert len(rollbacks) == 1
    payload = rollbacks[0]
    assert payload["cost_ratio"] > 1.3


@pytest.mark.anyio
async def test_a_policy_whose_answers_stop_validating_is_rolled_back_by_its_guard(
    tmp_path: Path,
) -> None:
    """`min_validation_success` counts the requests a `validate` node passed or failed."""
    graph = fast_copy("extract", tmp_path)
    # the validate node reads the ticket itself, never JSON: every answer needs a repair,
    # so a version without repairs fails every request, whichever finish first
    text = graph.read_text()
    assert 'text: "{{ extracted.text }}"' in text
    graph.write_text(text.replace('text: "{{ extracted.text }}"', 'text: "{{ input.prompt }}"'))
    db = tmp_path / "moat.db"
    body = yaml.safe_load((ROOT / "policies" / "extract.yaml").read_text())
    body["guard"] = {"window": 100, "min_validation_success": 0.995}
    first = tmp_path / "v1.yaml"
    first.write_text(yaml.safe_dump(body))
    body["validate"] = {"max_repairs": 0, "max_escalations": 0}  # no second chance
    bad = tmp_path / "v2.yaml"
    bad.write_text(yaml.safe_dump(body))
    seen: list[RequestRecord] = []
    async with Pipeline(graph, db=db, policy_file=first) as pipe:
        assert pipe.policy is not None
        pipe.policy.poll_interval_s = 0.05
        applied = pipe.policy.apply(bad, reason="no repairs")
        await pipe.run_batch(items(200), concurrency=4, on_record=seen.append)
        with anyio.fail_after(30):
            while pipe.policy.current().version == applied.pin.version:
                await anyio.sleep(0.05)
        pipe.flush()
    assert None not in {r.validated for r in seen}  # each request says how it ended
    assert False in {r.validated for r in seen}
    versions, rollbacks = _guard_outcome(db)
    assert versions[applied.pin.version] == "bad"
    (payload,) = rollbacks
    assert payload["validation_success"] < 0.995
