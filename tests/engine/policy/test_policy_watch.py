"""A running process follows the store's active version cheaply: a tick that finds
nothing new costs a small read, whatever the size of the policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.events import PolicyPin
from engine.policy.manager import PolicyManager, apply_policy
from engine.store.store import Store

BODY: dict[str, Any] = {"name": "triage", "router": {"threshold": 0.4}}


class ReadCountingStore(Store):
    """A store that keeps the SQL of every read (`query`) made through it."""

    reads: list[str]

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        self.reads.append(sql)
        return super().query(sql, params)


@pytest.mark.anyio
async def test_watching_reads_a_policy_body_only_when_another_version_is_active(
    tmp_path: Path,
) -> None:
    # A policy may be up to 1 MiB: decoding it on every tick of every process would stall
    # their requests twice a second. Ticks that find nothing new read no body.
    store = ReadCountingStore.open(tmp_path / "moat.db")
    assert isinstance(store, ReadCountingStore)
    store.reads = []
    big = {**BODY, "table": {f"k{i}": [i, "x" * 40] for i in range(2000)}}
    m = PolicyManager(store, name="triage", default_body=big, poll_interval_s=0.005)
    m.ensure_registered()
    store.reads.clear()
    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        with anyio.fail_after(5):
            while len(store.reads) < 20:  # twenty ticks or so
                await anyio.sleep(0.005)
        assert not [sql for sql in store.reads if "body_json" in sql]
        with Store.open(tmp_path / "moat.db") as other:
            apply_policy(other, {**big, "router": {"threshold": 0.5}})
        with anyio.fail_after(5):
            while m.current().version != 2:
                await anyio.sleep(0.005)
        ticks = len(store.reads)
        with anyio.fail_after(5):
            while len(store.reads) < ticks + 20:
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    store.close()
    assert len([sql for sql in store.reads if "body_json" in sql]) == 1
    assert m.current().body["router"] == {"threshold": 0.5}


@pytest.mark.slow  # ~3 s: a large snapshot decoded and frozen three times
@pytest.mark.anyio
async def test_switching_to_a_large_policy_does_not_stall_the_requests_running(
    tmp_path: Path,
) -> None:
    # A large snapshot takes a while to decode and freeze into a pin (about a second at
    # 1 MiB): done on the event loop, every request of the process would stand that long.
    table = {f"k{i}": {"a": i, "b": [i, i + 1], "c": "x" * 20} for i in range(8000)}
    large = {**BODY, "table": table}
    started = time.perf_counter()
    PolicyPin("triage", 2, large)  # what making its pin costs on this machine now
    freezing = time.perf_counter() - started
    with Store.open(tmp_path / "moat.db") as store:
        m = PolicyManager(store, name="triage", default_body=BODY, poll_interval_s=0.01)
        m.ensure_registered()
        gaps: list[float] = []

        async def heartbeat() -> None:  # what a running request sees of the loop
            last = anyio.current_time()
            while True:
                await anyio.sleep(0.005)
                now = anyio.current_time()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            await tg.start(m.watch)
            with Store.open(tmp_path / "moat.db") as other:
                apply_policy(other, large, allow_new_keys=True)
            tg.start_soon(heartbeat)
            with anyio.fail_after(30):
                while m.current().version != 2:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert m.current().body["table"]["k7999"]["a"] == 7999
    # decoding the JSON in the worker holds the lock for a moment; freezing does not
    assert max(gaps) < freezing / 2, (max(gaps), freezing)
