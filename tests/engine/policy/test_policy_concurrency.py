"""Several operators applying policies to one store at once: every apply gets exactly one
version number, numbers stay dense, and no activation is lost; a running process that
follows them pins each request to exactly one whole snapshot."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import PolicyError
from engine.policy.manager import AppliedPolicy, PolicyManager, apply_policy, rollback_policy
from engine.store.store import Store


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plans=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=5), min_size=2, max_size=4))
def test_concurrent_applies_number_versions_densely_and_lose_no_activation(
    tmp_path_factory: Any, plans: list[list[int]]
) -> None:
    db = tmp_path_factory.mktemp("db") / "moat.db"
    Store.open(db).close()
    results: list[list[tuple[int, AppliedPolicy]]] = [[] for _ in plans]
    start = threading.Barrier(len(plans))

    def operator(mine: list[tuple[int, AppliedPolicy]], plan: list[int]) -> None:
        with Store.open(db) as store:  # each its own connection, as separate processes
            start.wait()
            for k in plan:
                mine.append((k, apply_policy(store, {"name": "triage", "router": {"t": k}})))

    threads = [
        threading.Thread(target=operator, args=pair) for pair in zip(results, plans, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    applied = [one for mine in results for one in mine]
    assert len(applied) == sum(len(plan) for plan in plans)
    with Store.open(db, readonly=True) as store:
        versions = {
            int(v["version"]): v["body"]["router"]["t"] for v in store.policy_versions("triage")
        }
        history = store.policy_history("triage")
        active = store.active_policy("triage")
    # one version per distinct content, numbered 1..N, each holding what was applied as it
    assert sorted(versions) == list(range(1, len({k for plan in plans for k in plan}) + 1))
    assert all(versions[a.pin.version] == k for k, a in applied)
    # every apply that changed the active version left exactly one activation
    assert len(history) == sum(a.outcome != "unchanged" for _, a in applied)
    assert active is not None and active["version"] == history[-1]["version"]


@pytest.mark.anyio
async def test_requests_pin_one_whole_snapshot_while_operators_switch_it(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    body = {"name": "triage", "router": {"t": 0, "twin": 0}}
    store = Store.open(db)
    m = PolicyManager(store, name="triage", default_body=body, poll_interval_s=0.001)
    m.ensure_registered()
    done = threading.Event()

    def operators() -> None:
        with Store.open(db) as other:
            for k in range(1, 41):
                if k % 3 == 0:
                    with contextlib.suppress(PolicyError):  # nothing left to undo
                        rollback_policy(other, "triage")
                else:
                    apply_policy(other, {"name": "triage", "router": {"t": k, "twin": k}})
        done.set()

    pins = []
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        thread = threading.Thread(target=operators)
        thread.start()
        while not done.is_set():
            pins.append(m.current())  # what each request keeps to its end
            # (a real wait, not a bare yield: a loop that never blocks holds the GIL, and
            # the operators' thread then waits a switch interval for it at every statement)
            await anyio.sleep(0.0005)
        thread.join()
        with anyio.fail_after(5):
            while m.current().version != store.active_policy("triage")["version"]:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    stored = {int(v["version"]): v["body"] for v in store.policy_versions("triage")}
    store.close()
    assert len({p.version for p in pins}) > 1  # it did switch while requests started
    for pin in pins:
        assert pin.version is not None and pin.body == stored[pin.version]
        assert pin.body["router"]["t"] == pin.body["router"]["twin"]
