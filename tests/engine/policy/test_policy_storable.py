"""A policy holds what a stored snapshot can hold as given: strict JSON, read back the same
by every reader (`moat policy show`, a process picking the version up, `diff`)."""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import PolicyError
from engine.policy.manager import PolicyManager, apply_policy
from engine.store.store import Store

BODY: dict[str, Any] = {"name": "triage", "router": {"threshold": 0.4}}


@pytest.mark.parametrize(
    ("line", "at", "refused"),
    [
        ("limit: .inf", "2:8", r"'limit' is \.inf"),
        ("steps: [1, -.inf]", "2:12", r"'steps\.1' is -\.inf"),
        ("caps: {daily: .Inf}", "2:15", r"'caps\.daily' is \.inf"),
    ],
)
def test_an_infinite_value_is_refused_at_its_line_and_nothing_is_stored(
    tmp_path: Path, line: str, at: str, refused: str
) -> None:
    path = tmp_path / "next.yaml"
    path.write_text(f"name: triage\n{line}\nrouter: {{threshold: 0.4}}\n")
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, BODY)
        with pytest.raises(
            PolicyError,
            match=rf"^{re.escape(str(path))}:{at}: {refused}, which a stored snapshot cannot "
            r"hold \(the store keeps strict JSON, where it has no infinity\); give a finite "
            r"number \(a large one, such as 1\.0e\+9, for no limit in practice\), or leave the "
            r"key out$",
        ):
            apply_policy(store, path, allow_new_keys=True)
        assert [v["version"] for v in store.policy_versions("triage")] == [1]


@pytest.mark.anyio
async def test_every_reader_reads_back_the_snapshot_that_was_applied(tmp_path: Path) -> None:
    # what a process watching the store pins is what was applied, number for number
    body = {**BODY, "limits": {"big": 10**30, "tiny": 5e-324, "neg": -(2**70)}}
    with Store.open(tmp_path / "moat.db") as store:
        m = PolicyManager(store, name="triage", default_body=BODY, poll_interval_s=0.01)
        m.ensure_registered()
        async with anyio.create_task_group() as tg:
            await tg.start(m.watch)
            with Store.open(tmp_path / "moat.db") as other:
                apply_policy(other, body, allow_new_keys=True)
            with anyio.fail_after(5):
                while m.current().version != 2:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert m.current().body == body
        assert store.get_policy("triage", 2)["body"] == body


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        (datetime.date(2024, 5, 1), r"'router\.since' holds .* \(of type date\)"),
        ({1, 2}, r"'router\.since' holds .* \(of type set\)"),
        (b"raw", r"'router\.since' holds .* \(of type bytes\)"),
        (math.inf, r"'router\.since' is \.inf"),
    ],
)
def test_a_body_given_in_code_with_a_value_json_cannot_hold_is_refused_not_crashed(
    tmp_path: Path, value: object, refused: str
) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        m = PolicyManager(store, name="triage", default_body=BODY)
        m.ensure_registered()
        with pytest.raises(PolicyError, match=refused):
            m.apply({**BODY, "router": {"threshold": 0.5, "since": value}}, allow_new_keys=True)
        with pytest.raises(PolicyError, match=r"the key 7 under 'router' is a number; policy "):
            m.apply({**BODY, "router": {"threshold": 0.5, 7: "x"}}, allow_new_keys=True)
        assert m.current().version == 1
        assert [v["version"] for v in store.policy_versions("triage")] == [1]


@pytest.mark.parametrize("value", [math.inf, datetime.time(12, 0)])
def test_a_default_body_a_snapshot_cannot_hold_is_refused_before_version_1(
    tmp_path: Path, value: object
) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        m = PolicyManager(store, name="triage", default_body={**BODY, "cut": value})
        with pytest.raises(PolicyError, match=r"'cut' (is \.inf|holds .* \(of type time\))"):
            m.ensure_registered()
        assert store.list_policies() == []
