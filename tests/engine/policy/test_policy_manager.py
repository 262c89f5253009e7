"""The policy manager pins the active version, follows other processes and guards regressions."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from engine import EventType, PolicyError, RequestStatus, SpecError, StoreError
from engine.events import PolicyPin, RequestRecord
from engine.graph.loader import load_graph
from engine.policy.manager import PolicyManager, apply_policy, changed_keys, content_hash
from engine.store import schema as store_schema
from engine.store.store import Store
from tests.support.graph_nodes import registry

BODY: dict[str, Any] = {"name": "triage", "router": {"threshold": 0.4}, "cache": {"ttl_s": 60}}
GUARDED: dict[str, Any] = {**BODY, "guard": {"window": 10, "max_cost_ratio": 1.3}}


def manager(tmp_path: Path, **options: Any) -> PolicyManager:
    store = Store.open(tmp_path / "moat.db")
    m = PolicyManager(store, name="triage", default_body=BODY, **options)
    m.ensure_registered()
    return m


def events(store: Store, event_type: EventType) -> list[dict[str, Any]]:
    return store.query(
        "SELECT * FROM orchestration_events WHERE event_type = ? ORDER BY id", (str(event_type),)
    )


def feed(m: PolicyManager, version: int, cost: float, n: int = 10, ok: bool | None = None) -> None:
    for i in range(n):
        m.observe(100.0 + i, cost, ok, policy_version=version)


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


def test_the_default_body_becomes_version_1_once(tmp_path: Path) -> None:
    m = manager(tmp_path)
    assert m.current() == PolicyPin("triage", 1, BODY)
    assert m.store is not None
    again = PolicyManager(m.store, name="triage", default_body={"other": 1})
    assert again.ensure_registered() == PolicyPin("triage", 1, BODY)
    assert [r["reason"] for r in m.store.policy_history("triage")] == ["initial"]
    [event] = events(m.store, EventType.POLICY_ACTIVATED)
    assert (event["stage"], event["component"], event["request_id"]) == ("policy", "policy", "")
    assert event["payload"]["version"] == 1


def test_without_a_store_the_default_body_is_pinned_unversioned() -> None:
    m = PolicyManager(None, name="triage", default_body=BODY)
    assert m.ensure_registered() == PolicyPin("triage", None, BODY)
    assert m.current() is m.current()
    with pytest.raises(PolicyError, match="policy versions need a store"):
        m.rollback()


def test_a_graph_without_a_policy_has_no_versions_to_roll_back(tmp_path: Path) -> None:
    # a Pipeline on a graph with no `policy:` still has a store: it says what is missing
    with Store.open(tmp_path / "moat.db") as store:
        m = PolicyManager(store, name=None, default_body={})
        assert m.ensure_registered() == PolicyPin(None, None, {})
        for action in (m.rollback, lambda: m.apply({"router": {"threshold": 0.5}})):
            with pytest.raises(PolicyError, match=r"policy versions need a store and a named"):
                action()
        assert store.list_policies() == []


def test_apply_switches_new_requests_and_keeps_pinned_ones(tmp_path: Path) -> None:
    m = manager(tmp_path)
    pinned = m.current()
    applied = m.apply({**BODY, "router": {"threshold": 0.5}})
    assert (applied.outcome, m.current().version) == ("created", 2)
    assert pinned.version == 1 and pinned.body["router"] == {"threshold": 0.4}
    assert m.current().body["router"] == {"threshold": 0.5}


@pytest.mark.anyio
async def test_watch_follows_a_version_activated_by_another_process(tmp_path: Path) -> None:
    m = manager(tmp_path, poll_interval_s=0.05)
    seen: list[tuple[int | None, int | None, set[str]]] = []
    m.on_change.append(
        lambda old, new: seen.append((old.version, new.version, changed_keys(old.body, new.body)))
    )
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        with Store.open(tmp_path / "moat.db") as other:
            apply_policy(other, {**BODY, "router": {"threshold": 0.6}})
        started = time.monotonic()
        await wait_for(lambda: m.current().version == 2)
        assert time.monotonic() - started < 2.0
        tg.cancel_scope.cancel()
    assert m.current().body["router"] == {"threshold": 0.6}
    assert seen == [(1, 2, {"router.threshold"})]


@pytest.mark.anyio
async def test_watch_survives_a_failing_on_change_hook(tmp_path: Path) -> None:
    m = manager(tmp_path, poll_interval_s=0.02)

    def broken(old: PolicyPin, new: PolicyPin) -> None:
        raise RuntimeError("cache exploded")

    m.on_change.append(broken)
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        with Store.open(tmp_path / "moat.db") as other:
            apply_policy(other, {**BODY, "cache": {"ttl_s": 30}})
        await wait_for(lambda: m.current().version == 2)
        tg.cancel_scope.cancel()


def test_rollback_reactivates_the_previous_version(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.apply({**BODY, "router": {"threshold": 0.5}})
    m.apply({**BODY, "router": {"threshold": 0.6}})
    assert m.rollback().version == 2
    assert m.store is not None
    assert m.store.get_policy("triage", 3)["status"] == "superseded"
    assert m.rollback(to=1) == PolicyPin("triage", 1, BODY)
    history = m.store.policy_history("triage")
    assert [(r["version"], r["reason"]) for r in history] == [
        (1, "initial"),
        (2, "apply"),
        (3, "apply"),
        (2, "rollback from v3"),
        (1, "rollback from v2"),
    ]
    rolled = events(m.store, EventType.POLICY_ROLLED_BACK)
    assert [e["decision"] for e in rolled] == ["v3 -> v2", "v2 -> v1"]
    assert m.store.policy_activation_counts("triage") == {1: 2, 2: 2, 3: 1}  # (the TUI's)


def test_rollback_refuses_unknown_and_missing_targets(tmp_path: Path) -> None:
    m = manager(tmp_path)
    with pytest.raises(PolicyError, match=r"no earlier version to roll back to"):
        m.rollback()
    with pytest.raises(PolicyError, match=r"policy 'triage' has no version 7; stored versions: 1"):
        m.rollback(to=7)
    with pytest.raises(PolicyError, match=r"version 1 is already active"):
        m.rollback(to=1)
    assert m.current().version == 1


def test_the_guard_judges_a_version_on_its_first_window_however_late_it_looks(
    tmp_path: Path,
) -> None:
    m = manager(tmp_path)
    feed(m, 1, cost=0.01)
    m.apply(GUARDED, allow_new_keys=True)
    feed(m, 2, cost=0.03)  # the first window of version 2 costs three times as much
    feed(m, 2, cost=0.01, n=30)  # then it gets cheap before anyone looked
    verdict = m.check_guard()
    assert verdict is not None and not verdict.ok
    assert verdict.figures["cost_ratio"] == 3.0
    assert m.current().version == 1


def test_the_guard_rolls_back_a_version_that_costs_twice_as_much(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.run_id = "r-test"
    feed(m, 1, cost=0.01)
    m.apply(GUARDED, allow_new_keys=True)
    feed(m, 2, cost=0.02, n=9)
    assert m.check_guard() is None  # the window is not full yet
    m.observe(109.0, 0.02, None, policy_version=2)
    verdict = m.check_guard()
    assert verdict is not None and not verdict.ok
    assert verdict.reason == "guard: cost ratio 2 > 1.3"
    assert m.current().version == 1
    store = m.store
    assert store is not None
    assert store.get_policy("triage", 2)["status"] == "bad"
    assert store.active_policy("triage")["version"] == 1
    assert store.policy_history("triage")[-1]["reason"] == "guard: cost ratio 2 > 1.3"
    [event] = events(store, EventType.POLICY_ROLLED_BACK)
    assert (event["run_id"], event["stage"], event["component"]) == ("r-test", "policy", "policy")
    figures = event["payload"]
    assert figures["cost_old_usd"] == 0.01 and figures["cost_new_usd"] == 0.02
    assert figures["cost_ratio"] == 2.0 and figures["p95_ratio"] == 1.0
    # latencies 100..109: the linear p95 of ten values lies between the two slowest
    assert figures["p95_old_ms"] == figures["p95_new_ms"] == 108.55
    assert figures["thresholds"] == {"window": 10, "max_cost_ratio": 1.3}
    assert (figures["from_version"], figures["to_version"], figures["marked"]) == (2, 1, "bad")
    assert figures["baseline_source"] == "process"
    assert m.check_guard() is None  # the restored version is not judged again
    assert m.guard_rollbacks == 1  # what `moat_guard_rollbacks_total` reports


def test_a_guard_rollback_the_store_refused_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_schema, "_BUSY_TIMEOUT_MS", 10)
    monkeypatch.setattr(store_schema, "WRITE_PATIENCE_S", 0.1)
    m = manager(tmp_path)
    feed(m, 1, cost=0.01)
    m.apply(GUARDED, allow_new_keys=True)
    feed(m, 2, cost=0.02)
    # another process (`moat prune --vacuum`, say) holds the write lock past our patience
    other = sqlite3.connect(tmp_path / "moat.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="another process held the write lock"):
        m.check_guard()
    other.execute("COMMIT")
    other.close()
    assert m.current().version == 2
    verdict = m.check_guard()  # the next tick: the verdict stands, the rollback goes through
    assert verdict is not None and verdict.reason == "guard: cost ratio 2 > 1.3"
    assert m.current().version == 1 and m.guard_rollbacks == 1
    assert m.store is not None and m.store.get_policy("triage", 2)["status"] == "bad"
    assert m.check_guard() is None


def test_a_guard_window_larger_than_what_is_kept_is_judged_on_what_is_kept(
    tmp_path: Path,
) -> None:
    m = manager(tmp_path)
    feed(m, 1, cost=0.01, n=10_000)
    m.apply({**GUARDED, "guard": {"window": 50_000, "max_cost_ratio": 1.3}}, allow_new_keys=True)
    feed(m, 2, cost=0.02, n=20_000)
    verdict = m.check_guard()
    assert verdict is not None and verdict.reason == "guard: cost ratio 2 > 1.3"
    assert verdict.figures["samples_new"] == verdict.figures["samples_old"] == 10_000
    assert verdict.figures["window"] == 10_000  # what it was judged on, in the payload
    assert m.current().version == 1


def test_the_guard_compares_with_stored_requests_of_the_previous_version(tmp_path: Path) -> None:
    m = manager(tmp_path)
    assert m.store is not None
    with m.store.writer() as writer:
        for i in range(10):
            writer.record(
                RequestRecord(
                    id=f"q{i}",
                    run_id="r-old",
                    seq=i,
                    status=RequestStatus.OK,
                    started_at=float(i),
                    finished_at=float(i) + 0.1,
                    latency_ms=100.0,
                    cost_usd=0.01,
                    output={},
                    policy_name="triage",
                    policy_version=1,
                )
            )
    m.apply({**BODY, "guard": {"window": 10, "max_p95_ratio": 1.5}}, allow_new_keys=True)
    for _ in range(10):
        m.observe(300.0, 0.01, None, policy_version=2)
    verdict = m.check_guard()
    assert verdict is not None and verdict.reason == "guard: p95 ratio 3 > 1.5"
    [event] = events(m.store, EventType.POLICY_ROLLED_BACK)
    assert event["payload"]["baseline_source"] == "store"
    assert m.current().version == 1


def test_a_version_within_its_guard_stays(tmp_path: Path) -> None:
    m = manager(tmp_path)
    feed(m, 1, cost=0.01)
    m.apply(GUARDED, allow_new_keys=True)
    feed(m, 2, cost=0.012)
    verdict = m.check_guard()
    assert verdict is not None and verdict.ok
    assert verdict.figures["cost_ratio"] == pytest.approx(1.2)
    assert m.current().version == 2
    assert m.store is not None and m.store.get_policy("triage", 2)["status"] == "active"


def test_the_guard_checks_validation_success_against_its_minimum(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.apply({**BODY, "guard": {"window": 10, "min_validation_success": 0.9}}, allow_new_keys=True)
    feed(m, 2, cost=0.01, n=2, ok=False)
    feed(m, 2, cost=0.01, n=8, ok=True)
    verdict = m.check_guard()
    assert verdict is not None
    assert verdict.reason == "guard: validation success 0.8 < 0.9"
    assert m.current().version == 1


def test_content_of_a_bad_version_is_refused(tmp_path: Path) -> None:
    m = manager(tmp_path)
    feed(m, 1, cost=0.01)
    m.apply(GUARDED, allow_new_keys=True)
    feed(m, 2, cost=0.05)
    m.check_guard()
    with pytest.raises(PolicyError, match=r"identical to version 2, which was marked bad"):
        m.apply(GUARDED, allow_new_keys=True)
    assert m.current().version == 1


@pytest.mark.anyio
async def test_watch_trips_the_guard_while_requests_run(tmp_path: Path) -> None:
    m = manager(tmp_path, poll_interval_s=0.02)
    feed(m, 1, cost=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        m.apply(GUARDED, allow_new_keys=True)
        for _ in range(10):
            pin = m.current()
            m.observe(100.0, 0.024, None, policy_version=pin.version)
            await anyio.sleep(0)
        await wait_for(lambda: m.current().version == 1)
        tg.cancel_scope.cancel()
    assert m.store is not None
    assert m.store.policy_history("triage")[-1]["reason"] == "guard: cost ratio 2.4 > 1.3"


def test_a_malformed_default_guard_is_located_in_the_graphs_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "triage.yaml"
    policy.write_text("router: {threshold: 0.4}\nguard:\n  window: 0\n")
    (tmp_path / "g.yaml").write_text(
        "moat: 1\nname: g\npolicy: triage.yaml\nnodes:\n  e: {type: echo, with: {value: 1}}\n"
        "output: {a: e.value}\n"
    )
    # The graph does not load (the checker validates its policy as `apply` does), so no
    # manager ever stores it.
    with pytest.raises(SpecError, match=r"triage\.yaml:3:11: guard\.window = 0: Input should"):
        load_graph(tmp_path / "g.yaml", registry=registry())
    m = PolicyManager(
        Store.open(tmp_path / "moat.db"), name="triage", default_body={"guard": {"window": 0}}
    )
    with pytest.raises(PolicyError, match=r"guard\.window = 0: Input should"):
        m.ensure_registered()
    assert m.store is not None and m.store.list_policies() == []


def test_a_stored_guard_no_longer_valid_is_skipped_with_one_warning(tmp_path: Path) -> None:
    # Stored before guards were strict: judging it would fail on every poll tick.
    m = manager(tmp_path)
    assert m.store is not None
    lax = {**BODY, "guard": {"window": "10", "max_cost_ratio": 1.3}}
    m.store.insert_policy_snapshot("triage", 2, content_hash(lax), lax, 1, "candidate")
    m.store.activate_policy("triage", 2, "apply")
    assert m.ensure_registered().version == 2
    feed(m, 1, cost=0.01)
    feed(m, 2, cost=0.02)
    with capture_logs() as logs:
        assert m.check_guard() is None
        assert m.check_guard() is None
    assert [entry["event"] for entry in logs] == ["policy.guard_unreadable"]
    assert "guard.window = '10': Input should be a whole number" in logs[0]["error"]
    assert m.current().version == 2


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("apply"), st.integers(1, 4)),
            st.tuples(st.just("traffic"), st.integers(1, 3)),
            st.tuples(st.just("rollback"), st.none()),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_guard_never_flaps(tmp_path_factory: Any, steps: list[tuple[str, Any]]) -> None:
    # Content k costs k cents a request: any k above the version before breaks the guard.
    # Whatever operators do, the guard rolls each activation back at most once, never to
    # a bad version, records why with the figures, and left alone it stays put.
    m = manager(tmp_path_factory.mktemp("db"))
    assert m.store is not None
    cost = {1: 0.01}  # version -> cost per request
    fresh = 0
    for kind, value in steps:
        if kind == "apply":
            body = {**GUARDED, "router": {"threshold": value / 10}}
            try:
                applied = m.apply(body)
            except PolicyError:  # the content of a version the guard marked bad
                continue
            cost[applied.pin.version] = value / 100
            fresh += applied.outcome != "unchanged"
        elif kind == "rollback":
            with contextlib.suppress(PolicyError):
                m.rollback()
        for _ in range(value if kind == "traffic" else 1):
            version = m.current().version
            assert version is not None
            feed(m, version, cost=cost[version])
            m.check_guard()
            assert m.store.active_policy("triage")["status"] != "bad"
    rolled = events(m.store, EventType.POLICY_ROLLED_BACK)
    by_guard = [e["payload"] for e in rolled if e["payload"]["marked"] == "bad"]
    event(f"guard rollbacks: {len(by_guard)}")
    assert len(by_guard) == m.guard_rollbacks <= fresh
    assert all(p["reason"].startswith("guard: cost ratio") and "cost_ratio" in p for p in by_guard)
    settled = m.store.policy_history("triage")
    for _ in range(3):  # left alone, nothing moves
        version = m.current().version
        assert version is not None
        feed(m, version, cost=cost[version])
        m.check_guard()
    assert m.store.policy_history("triage") == settled


def test_a_long_running_process_keeps_observations_of_two_versions_only(tmp_path: Path) -> None:
    # A server that lives through hundreds of hot swaps must not keep up to 10,000
    # observations of every version it ever ran: the guard judges the active version
    # against its parent, and nothing else.
    m = manager(tmp_path)
    for threshold in range(2, 40):
        version = m.current().version
        assert version is not None
        feed(m, version, cost=0.01, n=100)
        m.apply({**BODY, "router": {"threshold": threshold / 100}})
    kept = m._windows  # what the guard may still read
    assert sorted(kept) == [38]  # the parent of the active 39; 39 itself has none yet
    feed(m, 39, cost=0.01)
    feed(m, 37, cost=0.01)  # a request that pinned 37 and finished late
    assert sorted(kept) == [37, 38, 39]
    m.apply({**BODY, "router": {"threshold": 0.99}})
    assert sorted(m._windows) == [39]
