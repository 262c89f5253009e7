"""Offline fallback: remote models held back by the policy or unreachable answer from their
`fallback:`, the request marked degraded with the reason."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.errors import EgressBlocked, SpecError
from engine.events import EventType
from engine.graph.spec import ModelSpec
from engine.models import CallScope, Gateway
from engine.models.fallback import EdgeGuard, FallbackReason
from engine.plugin.context import RequestInfo
from engine.policy.signals import Gate, Probe
from tests.engine.models.test_models_gateway import Events

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def models(port: int, fallback: str | None = "local") -> dict[str, ModelSpec]:
    return {
        "remote": ModelSpec(
            provider="openai",
            model="gpt-4o-mini",
            base_url=f"http://127.0.0.1:{port}/v1",
            fallback=fallback,
            price={"input": 0.15, "output": 0.6},
        ),
        "local": ModelSpec(provider="sim", profile="small", time_scale=0),
    }


def scope(policy: dict[str, Any], events: Events, degraded: list[str]) -> CallScope:
    return CallScope(
        request=RequestInfo(id="r-1", run_id="r", seq=0, input={}, tenant="t"),
        node_id="answer",
        policy=policy,
        emit=events,
        degrade=degraded.append,
    )


async def test_a_refused_connection_falls_back_at_once_and_degrades_the_request() -> None:
    events, degraded = Events(), []
    async with Gateway(models(closed_port())) as gateway:
        call = scope({}, events, degraded)
        done = await gateway.client("remote", call).complete(prompt="hello")
    assert done.model == "local" and done.simulated
    assert degraded == ["CONNECT_FAILED"]
    assert events.types == [EventType.MODEL_FALLBACK]
    assert events.payload(EventType.MODEL_FALLBACK)["fallback"] == "local"
    remote = [c for c in call.calls if c.model == "remote"]
    assert [c.status for c in remote] == ["error"], "no retries against a closed port"


async def test_an_open_circuit_goes_straight_to_the_fallback() -> None:
    async with Gateway(models(closed_port()), breaker_threshold=1) as gateway:
        first = scope({}, Events(), [])
        await gateway.client("remote", first).complete(prompt="a")
        events, degraded = Events(), []
        second = scope({}, events, degraded)
        await gateway.client("remote", second).complete(prompt="b")
    assert degraded == ["CIRCUIT_OPEN"]
    assert [c.status for c in second.calls if c.model == "remote"] == ["refused"]


@pytest.mark.parametrize(
    ("egress", "env", "reason"),
    [
        ({"offline": True}, "90", FallbackReason.POLICY_OFFLINE),
        ({"gates": {"battery": {"env": "MOAT_TEST_BATTERY", "min": 20}}}, "15", "SIGNAL_GATE"),
        ({"probe": {"tcp": "127.0.0.1:{port}", "timeout_s": 1}}, "90", "PROBE_FAILED"),
    ],
)
async def test_the_policy_holds_remote_calls_back_without_trying_them(
    egress: dict[str, Any], env: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOAT_TEST_BATTERY", env)
    port = closed_port()
    egress = json.loads(json.dumps(egress).replace("{port}", str(port)))
    events, degraded = Events(), []
    async with Gateway(models(port)) as gateway:
        call = scope({"egress": egress}, events, degraded)
        await gateway.client("remote", call).complete(prompt="hello")
    assert degraded == [reason]
    assert [c.model for c in call.calls] == ["local"], "the remote model was never tried"


async def test_a_gate_within_bounds_lets_the_call_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAT_TEST_BATTERY", "80")
    policy = {"egress": {"gates": {"battery": {"env": "MOAT_TEST_BATTERY", "min": 20}}}}
    degraded: list[str] = []
    async with Gateway(models(closed_port())) as gateway:
        call = scope(policy, Events(), degraded)
        await gateway.client("remote", call).complete(prompt="hello")
    assert degraded == ["CONNECT_FAILED"]  # it was tried: the port is closed
    assert [c.model for c in call.calls] == ["remote", "local"]


async def test_held_back_without_a_fallback_is_refused_with_the_fix() -> None:
    events = Events()
    async with Gateway(models(closed_port(), fallback=None)) as gateway:
        call = scope({"egress": {"offline": True}}, events, [])
        with pytest.raises(EgressBlocked, match=r"offline: true`; give it a `fallback:`"):
            await gateway.client("remote", call).complete(prompt="hello")
    assert events.types == [EventType.EGRESS_BLOCKED]


async def test_signals_come_from_files_and_commands_and_are_kept_for_every_s(
    tmp_path: Path,
) -> None:
    level = tmp_path / "capacity"
    level.write_text("15\n")
    guard = EdgeGuard()
    policy = {"egress": {"gates": {"battery": {"file": str(level), "min": 20, "every_s": 60}}}}
    held = await guard.held_back(policy)
    assert held is not None and held.detail["reading"] == 15
    level.write_text("95\n")
    assert await guard.held_back(policy) is not None, "the reading is kept for every_s"
    command = [sys.executable, "-c", "print('uplink 512 kbps')"]
    fast = {"egress": {"gates": {"uplink": {"command": command, "min": 64, "every_s": 0}}}}
    assert await guard.held_back(fast) is None


async def test_an_unreadable_signal_follows_its_unknown_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-file")
    guard = EdgeGuard()
    allow = {"egress": {"gates": {"battery": {"file": missing, "min": 20}}}}
    block = {"egress": {"gates": {"battery": {"file": missing, "min": 20, "unknown": "block"}}}}
    assert await guard.held_back(allow) is None
    held = await guard.held_back(block)
    assert held is not None and "reading unreadable" in held.describe()


async def test_a_probe_passes_while_something_listens() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        policy = {"egress": {"probe": {"tcp": f"127.0.0.1:{port}"}}}
        assert await EdgeGuard().held_back(policy) is None


def test_gate_bounds() -> None:
    gate = Gate(env="X", min=20, max=80)
    assert [gate.allows(v) for v in (19.9, 20, 80, 80.1, None)] == [False, True, True, False, True]
    with pytest.raises(ValueError, match="exactly one of"):
        Probe(tcp="a:1", command=["true"])


# -- an edge run end to end --------------------------------------------------------------

GRAPH = """\
moat: 1
name: edge-answer
models:
  remote: {{provider: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:{port}/v1",
           price: {{input: 0.15, output: 0.6}}, fallback: local}}
  local: {{provider: sim, profile: small, time_scale: 0}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
nodes:
  answer:
    type: model
    with: {{model: remote, prompt: "{{{{ input.prompt }}}}"}}
output:
  text: answer.text
  degraded: request.degraded
"""


def test_an_edge_run_with_the_remote_port_closed_answers_every_request_degraded(
    tmp_path: Path,
) -> None:
    graph = tmp_path / "edge.yaml"
    graph.write_text(GRAPH.format(port=closed_port()))
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(12)))
    out = tmp_path / "out.jsonl"
    code = main(
        ["run", str(graph), "--input", str(requests), "--out", str(out), "--db",
         str(tmp_path / "edge.db"), "--quiet"]
    )  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12
    assert {line["status"] for line in lines} == {"ok"}
    assert all(line["output"]["text"] for line in lines)
    assert all(line["output"]["degraded"] is True for line in lines)
    reasons = {r for line in lines for r in line["degraded"]}
    assert reasons <= {"CONNECT_FAILED", "CIRCUIT_OPEN"} and "CONNECT_FAILED" in reasons


def test_check_names_an_unknown_fallback_with_its_line(tmp_path: Path) -> None:
    graph = tmp_path / "edge.yaml"
    graph.write_text(GRAPH.format(port=9).replace("fallback: local", "fallback: locl"))
    from engine.graph.loader import load_graph

    with pytest.raises(SpecError, match=r"edge.yaml:5:\d+: .*fallback 'locl' is not defined .*"
                       r"did you mean 'local'"):  # fmt: skip
        load_graph(graph)


def test_check_refuses_fallbacks_that_loop(tmp_path: Path) -> None:
    graph = tmp_path / "edge.yaml"
    text = GRAPH.format(port=9).replace("time_scale: 0}", "time_scale: 0, fallback: remote}")
    graph.write_text(text)
    from engine.graph.loader import load_graph

    with pytest.raises(SpecError, match=r"loop \(local -> remote -> local\)"):
        load_graph(graph)
