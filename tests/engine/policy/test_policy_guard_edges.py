"""The guard at its edges: a baseline that cost nothing, thresholds that are no numbers,
baselines read from the store, and verdicts recorded as strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from engine import EventType, PolicyError, RequestStatus
from engine.events import RequestRecord
from engine.policy.guard import GuardSettings
from engine.policy.manager import PolicyManager, apply_policy, rollback_policy
from engine.store.store import Store

BODY: dict[str, Any] = {"name": "triage", "router": {"threshold": 0.4}}


def manager(tmp_path: Path, **options: Any) -> PolicyManager:
    store = Store.open(tmp_path / "moat.db")
    m = PolicyManager(store, name="triage", default_body=BODY, **options)
    m.ensure_registered()
    return m


def feed(m: PolicyManager, version: int, *, cost: float, latency: float = 100.0) -> None:
    for _ in range(10):
        m.observe(latency, cost, None, policy_version=version)


def rolled_back(store: Store) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT payload_json FROM orchestration_events WHERE event_type = ? ORDER BY id",
        (str(EventType.POLICY_ROLLED_BACK),),
    )
    return [row["payload"] for row in rows]


def test_a_version_that_costs_where_its_baseline_cost_nothing_is_rolled_back_once(
    tmp_path: Path,
) -> None:
    # Version 1 answered everything from a cache (or a free local model): any cost at all
    # is an unbounded ratio, which breaks the guard and is recorded as strict JSON.
    m = manager(tmp_path)
    assert m.store is not None
    feed(m, 1, cost=0.0)
    m.apply({**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}, allow_new_keys=True)
    feed(m, 2, cost=0.01)
    verdict = m.check_guard()
    assert verdict is not None and not verdict.ok
    assert verdict.reason == "guard: cost ratio inf > 1.3 (the baseline cost nothing)"
    assert m.current().version == 1
    assert m.store.get_policy("triage", 2)["status"] == "bad"
    (payload,) = rolled_back(m.store)
    assert payload["cost_ratio"] is None and payload["cost_old_usd"] == 0.0
    assert payload["reason"] == verdict.reason
    (stored,) = m.store.query(  # strict JSON: any reader can read it (no `Infinity`)
        "SELECT json_valid(payload_json) AS ok FROM orchestration_events "
        "WHERE event_type = 'POLICY_ROLLED_BACK'"
    )
    assert stored["ok"] == 1
    assert m.check_guard() is None  # judged once


@pytest.mark.anyio
async def test_a_watching_process_rolls_back_over_a_free_baseline_and_keeps_serving(
    tmp_path: Path,
) -> None:
    m = manager(tmp_path, poll_interval_s=0.02)
    assert m.store is not None
    feed(m, 1, cost=0.0, latency=0.0)  # and took no time: both ratios are unbounded
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        m.apply(
            {**BODY, "guard": {"window": 10, "max_cost_ratio": 2.0, "max_p95_ratio": 2.0}},
            allow_new_keys=True,
        )
        feed(m, 2, cost=0.01)
        with anyio.fail_after(5):
            while m.current().version != 1:
                await anyio.sleep(0.01)
        # still watching: a version applied from elsewhere is picked up
        with Store.open(tmp_path / "moat.db") as other:
            apply_policy(other, {**BODY, "router": {"threshold": 0.5}})
        with anyio.fail_after(5):
            while m.current().version != 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    (payload,) = rolled_back(m.store)
    assert payload["reason"] == (
        "guard: p95 ratio inf > 2 (the baseline's p95 was 0 ms); "
        "cost ratio inf > 2 (the baseline cost nothing)"
    )
    assert (payload["p95_ratio"], payload["cost_ratio"]) == (None, None)
    json.dumps(payload, allow_nan=False)


@pytest.mark.parametrize("setting", ["max_cost_ratio", "max_p95_ratio"])
def test_a_guard_threshold_that_is_not_finite_is_refused_at_its_line(
    tmp_path: Path, setting: str
) -> None:
    # `.inf` never trips (and would break the rollback's record): say to leave it out
    path = tmp_path / "triage.yaml"
    path.write_text(f"name: triage\nrouter:\n  threshold: 0.4\nguard:\n  {setting}: .inf\n")
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, BODY)
        with pytest.raises(
            PolicyError,
            match=rf"triage\.yaml:5:{len(setting) + 5}: 'guard\.{setting}' is \.inf, which a "
            r"stored snapshot cannot hold .*; give a finite number .*, or leave the key out$",
        ):
            apply_policy(store, path, allow_new_keys=True)
        assert store.active_policy("triage")["version"] == 1
    with pytest.raises(ValidationError, match="Input should be a finite number"):
        GuardSettings.model_validate({setting: math.inf})  # a guard read from elsewhere


def store_requests(
    store: Store, version: int, rows: list[tuple[RequestStatus, float, float]]
) -> None:
    """Requests of an earlier run that pinned `version`, finishing in this order."""
    with store.writer() as writer:
        for i, (status, latency, cost) in enumerate(rows):
            writer.record(
                RequestRecord(
                    id=f"old-{version}-{i}",
                    run_id="r-old",
                    seq=i,
                    status=status,
                    started_at=float(i),
                    finished_at=float(i) + 0.5,
                    latency_ms=latency,
                    cost_usd=cost,
                    output={},
                    policy_name="triage",
                    policy_version=version,
                )
            )


@pytest.mark.parametrize("unjudged", [RequestStatus.INVALID_INPUT, RequestStatus.CANCELLED])
def test_a_baseline_from_the_store_leaves_out_requests_the_guard_does_not_judge(
    tmp_path: Path, unjudged: RequestStatus
) -> None:
    # An earlier run on version 1: ten answered requests, then ten that did no work (bad
    # inputs, or callers that hung up), the latest. A process that saw them would not
    # count them; read back from the store they must not count either, or the baseline
    # costs nothing and a version costing the same is rolled back.
    m = manager(tmp_path)
    assert m.store is not None
    store_requests(m.store, 1, [(RequestStatus.OK, 100.0, 0.01)] * 10 + [(unjudged, 0.3, 0.0)] * 10)
    m.apply(
        {**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3, "max_p95_ratio": 1.5}},
        allow_new_keys=True,
    )
    feed(m, 2, cost=0.01)
    verdict = m.check_guard()
    assert verdict is not None and verdict.ok, verdict
    assert verdict.figures["samples_old"] == 10
    assert (verdict.figures["cost_ratio"], verdict.figures["p95_ratio"]) == (1.0, 1.0)
    assert m.current().version == 2
    assert rolled_back(m.store) == []


def test_the_guard_leaves_a_version_an_operator_forced_back_after_what_it_saw(
    tmp_path: Path,
) -> None:
    # The process judges version 2 on requests it ran before its next poll; meanwhile an
    # operator applied version 3 and then went back to version 2 with `--to`. That is a
    # decision taken after what the guard saw, and rollbacks are not judged: it stays.
    m = manager(tmp_path)
    assert m.store is not None
    feed(m, 1, cost=0.01)
    guarded = {**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}
    m.apply(guarded, allow_new_keys=True)
    feed(m, 2, cost=0.05)
    with Store.open(tmp_path / "moat.db") as other:
        apply_policy(other, {**guarded, "router": {"threshold": 0.5}})
        rollback_policy(other, "triage", to=2)
    verdict = m.check_guard()
    assert verdict is not None and not verdict.ok  # it did break its guard
    assert [p["marked"] for p in rolled_back(m.store)] == ["superseded"]  # the operator's
    assert m.store.active_policy("triage")["version"] == 2
    assert m.store.get_policy("triage", 2)["status"] == "active"
    assert m.guard_rollbacks == 0
    assert m.check_guard() is None
    m.ensure_registered()  # as its next poll would: it follows the operator
    assert m.current().version == 2
    assert m.check_guard() is None  # a version reactivated by a rollback is not judged
    assert [p["marked"] for p in rolled_back(m.store)] == ["superseded"]
