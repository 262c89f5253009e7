"""A running process follows the store's active version cheaply: a tick that finds
nothing new costs a small read, whatever the size of the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

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


class BodyReadStore(Store):
    """A store that calls `on_body_read` when a read of a snapshot body returns."""

    on_body_read: Any = None

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        rows = super().query(sql, params)
        if "body_json" in sql and self.on_body_read is not None:
            self.on_body_read()
        return rows


@pytest.mark.anyio
async def test_switching_to_a_large_policy_does_not_stall_the_requests_running(
    tmp_path: Path,
) -> None:
    # A snapshot of many small settings takes a while to freeze into a pin (about a second
    # for a large one): done on the event loop, every request of the process would stand
    # still that long. Requests go on from the moment the body is read until the switch.
    large = {**BODY, "table": [[i] for i in range(20_000)]}
    store = BodyReadStore.open(tmp_path / "moat.db")
    assert isinstance(store, BodyReadStore)
    m = PolicyManager(store, name="triage", default_body=BODY, poll_interval_s=0.01)
    m.ensure_registered()
    beats: list[int | None] = []
    read_at: list[int] = []
    store.on_body_read = lambda: read_at.append(len(beats))  # (in the worker thread)

    async def heartbeat() -> None:  # what a running request sees of the loop
        while True:
            await anyio.sleep(0.001)
            beats.append(m.current().version)

    async with anyio.create_task_group() as tg:
        await tg.start(m.watch)
        tg.start_soon(heartbeat)
        with Store.open(tmp_path / "moat.db") as other:
            apply_policy(other, large, allow_new_keys=True)
        with anyio.fail_after(30):
            while m.current().version != 2:
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    store.close()
    assert m.current().body["table"][19_999] == [19_999]
    (read,) = read_at
    switched = beats.index(2)
    # on the loop, the pin would be made between two beats: none would fall in between
    assert switched - read >= 5, (read, switched)
