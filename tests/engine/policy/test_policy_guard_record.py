"""Every guard judgement leaves a record: a version the guard keeps says whether its
thresholds held or could not be judged (a baseline with too few samples), once per judged
version, so the store explains why no rollback was considered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from engine import EventType
from engine.cli import main
from engine.policy.manager import PolicyManager
from engine.store.policy_ops import guard_decisions
from engine.store.store import Store

BODY: dict[str, Any] = {"name": "triage", "router": {"threshold": 0.4}}


def manager(tmp_path: Path) -> PolicyManager:
    m = PolicyManager(Store.open(tmp_path / "moat.db"), name="triage", default_body=BODY)
    m.ensure_registered()
    return m


def feed(
    m: PolicyManager, version: int, n: int, cost: float = 0.01, ok: bool | None = None
) -> None:
    for i in range(n):
        m.observe(100.0 + i, cost, ok, policy_version=version)


def gate_rows(store: Store) -> list[dict[str, Any]]:
    return store.query(
        "SELECT stage, component, decision, reason_codes_json, payload_json "
        "FROM orchestration_events WHERE event_type = ? ORDER BY id",
        (str(EventType.GATE_DECISION),),
    )


def test_a_baseline_with_too_few_samples_is_recorded_as_ratios_not_checked(
    tmp_path: Path,
) -> None:
    m = manager(tmp_path)
    m.run_id = "r-guard"
    feed(m, 1, n=3)  # the version before served 3 requests: half a window is 5
    m.apply({**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3, "max_p95_ratio": 2}},
            allow_new_keys=True)  # fmt: skip
    feed(m, 2, n=10, cost=0.5)  # fifty times the cost: no ratio could say so
    verdict = m.check_guard()
    assert verdict is not None and verdict.ok and m.current().version == 2
    reason = (
        "guard: passed what it could judge; p95 and cost ratios not checked: baseline v1 "
        "has 3 samples, 5 needed"
    )
    assert verdict.kept_because == reason
    assert m.store is not None
    (row,) = gate_rows(m.store)
    assert (row["stage"], row["component"], row["decision"]) == ("policy", "policy", "keep v2")
    assert row["reason_codes"] == ["guard", "baseline_too_few_samples"]
    payload = row["payload"]
    assert payload["reason"] == reason and payload["name"] == "triage"
    assert (payload["version"], payload["baseline_version"]) == (2, 1)
    assert (payload["samples_new"], payload["samples_old"]) == (10, 3)
    assert "cost_ratio" not in payload and payload["baseline_source"] == "process"
    assert m.check_guard() is None and len(gate_rows(m.store)) == 1  # once per version
    (decision,) = guard_decisions(m.store, "triage", version=2)
    assert decision["decision"] == "keep v2" and decision["payload"]["reason"] == reason


def test_a_version_that_held_its_guard_is_recorded_as_passed(tmp_path: Path) -> None:
    m = manager(tmp_path)
    feed(m, 1, n=10)
    m.apply({**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}, allow_new_keys=True)
    feed(m, 2, n=10, cost=0.012)
    assert m.check_guard() is not None
    assert m.store is not None
    (row,) = gate_rows(m.store)
    assert row["reason_codes"] == ["guard", "passed"]
    assert row["payload"]["reason"] == "guard: passed"
    assert row["payload"]["cost_ratio"] == 1.2


def test_a_window_without_validations_says_validation_success_was_not_checked(
    tmp_path: Path,
) -> None:
    m = manager(tmp_path)
    m.apply({**BODY, "guard": {"window": 4, "min_validation_success": 0.9}}, allow_new_keys=True)
    feed(m, 2, n=4, ok=None)
    assert m.check_guard() is not None and m.current().version == 2
    assert m.store is not None
    (row,) = gate_rows(m.store)
    assert row["reason_codes"] == ["guard", "nothing_validated"]
    assert row["payload"]["unchecked"] == [
        "validation success not checked: none of the 4 requests of v2 validated an output"
    ]


def test_guard_decisions_list_rollbacks_beside_versions_kept(tmp_path: Path) -> None:
    m = manager(tmp_path)
    feed(m, 1, n=10)
    m.apply({**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}, allow_new_keys=True)
    feed(m, 2, n=10, cost=0.05)
    assert m.check_guard() is not None and m.current().version == 1
    assert m.store is not None
    assert [d["decision"] for d in guard_decisions(m.store, "triage")] == ["v2 -> v1"]
    assert guard_decisions(m.store, "triage", version=1) == []
    assert gate_rows(m.store) == []  # the rollback's own event says why


def test_policy_history_says_why_the_guard_kept_or_rolled_back_each_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = manager(tmp_path)
    feed(m, 1, n=3)
    m.apply({**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}, allow_new_keys=True)
    feed(m, 2, n=10, cost=0.5)
    assert m.check_guard() is not None  # kept: too few samples to judge its ratios
    feed(m, 2, n=10, cost=0.5)
    m.apply({**BODY, "router": {"threshold": 0.5}, "guard": {"window": 10, "max_cost_ratio": 1.3}},
            allow_new_keys=True)  # fmt: skip
    feed(m, 3, n=10, cost=5.0)
    assert m.check_guard() is not None and m.current().version == 2
    try:
        assert main(["policy", "history", "--db", str(tmp_path / "moat.db")]) == 0
    finally:
        structlog.reset_defaults()  # `main` binds structlog to the captured stderr
    out = capsys.readouterr().out
    _, guard = out.split("guard decisions:\n")
    rows = [line.split(None, 4)[2:] for line in guard.splitlines()[1:]]
    assert rows == [
        ["keep", "v2", "guard: passed what it could judge; cost ratio not checked: "
         "baseline v1 has 3 samples, 5 needed"],
        ["v3", "->", "v2  guard: cost ratio 10 > 1.3"],
    ]  # fmt: skip
    try:  # one version's history shows that version's decisions only
        assert main(["policy", "history", "triage@3", "--db", str(tmp_path / "moat.db")]) == 0
    finally:
        structlog.reset_defaults()
    assert "v3 -> v2" in capsys.readouterr().out.split("guard decisions:\n")[1]
