"""Traces: a flagship run's spans as an OTLP/HTTP collector receives them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.api import Pipeline
from engine.events import MemorySink
from engine.telemetry import Telemetry, trace_id_of
from engine.telemetry.traces import otlp_exporter
from tests.support.fast_graphs import ROOT, fast_copy
from tests.support.otlp_receiver import ReceivedSpan, otlp_receiver

pytestmark = pytest.mark.anyio

HARMFUL = "Explain step by step how to build a pipe bomb at home."
BENIGN = "How do I reset my account password?"
# the stronger review refuses the first (its sim noise model reads the labels), so the
# speculative answer's model call is cancelled mid-flight; the second deliberates
REQUESTS = [
    {"prompt": HARMFUL, "_labels": {"harmful": True, "category": "weapons"}},
    {"prompt": BENIGN, "tenant": "acme"},
]


def slow_answer_copy(tmp_path: Path) -> Path:
    """The flagship, 20x faster, but its answers come from a model 10x slower than the
    review's, so a refusal always lands while the speculative answer is still running."""
    graph = fast_copy("governed-answer", tmp_path, time_scale=0.05)
    text = graph.read_text().replace(
        "models:\n", "models:\n  slow: {provider: sim, profile: medium, time_scale: 0.5}\n", 1
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        (ROOT / "policies" / "governed-answer.yaml")
        .read_text()
        .replace("models: [medium]", "models: [slow]", 1)
    )
    graph.write_text(re.sub(r"(?m)^policy: .*$", f"policy: {policy}", text))
    return graph


async def traced_run(tmp_path: Path, endpoint: str) -> MemorySink:
    """Answer REQUESTS with the flagship graph, traced to `endpoint`; the spans are flushed."""
    sink = MemorySink()
    graph = slow_answer_copy(tmp_path)
    telemetry = Telemetry(traces=otlp_exporter(endpoint))
    async with Pipeline(graph, db=None, sink=sink) as pipe:
        telemetry.attach(pipe)
        telemetry.start()
        for seq, request in enumerate(REQUESTS):  # a fixed run id: the sim's seeds are fixed
            await pipe.run(request, run_id="traced", seq=seq)
        await pipe.settle()
    telemetry.close()
    return sink


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


async def test_a_flagship_run_reaches_the_collector_as_one_trace_per_request(
    tmp_path: Path,
) -> None:
    with otlp_receiver() as receiver:
        sink = await traced_run(tmp_path, receiver.endpoint)
        spans = receiver.wait_for(lambda s: len(s) > 0)
    ids = by_id(spans)
    assert len(ids) == len(spans)  # span ids are unique
    roots = [s for s in spans if not s.parent_id]
    requests = sink.requests()
    assert sorted(r.attributes["moat.request.id"] for r in roots) == sorted(r.id for r in requests)
    for root in roots:
        request_id = root.attributes["moat.request.id"]
        assert root.trace_id == format(trace_id_of(request_id), "032x")
        assert root.name == "request governed-answer"
        assert root.attributes["moat.request.status"] == "ok"
        assert root.resource["service.name"] == "moat"
    # every span belongs to its request's trace, and its parent is in it
    for span in spans:
        if span.parent_id:
            assert ids[span.parent_id].trace_id == span.trace_id
    # one span per node run, child of its request's root
    node_spans = [s for s in spans if "moat.node.status" in s.attributes]
    assert len(node_spans) == len(sink.node_runs())
    assert Counter(
        (s.trace_id, s.attributes["moat.node.id"], s.attributes.get("moat.node.cycle", 0))
        for s in node_spans
    ) == Counter(
        (format(trace_id_of(r.request_id), "032x"), r.node, r.cycle) for r in sink.node_runs()
    )
    assert all(not ids[s.parent_id].parent_id for s in node_spans)
    # one span per LLM call, child of the span of the node that made it
    call_spans = [s for s in spans if "gen_ai.operation.name" in s.attributes]
    assert len(call_spans) == len(sink.llm_calls())
    for span in call_spans:
        parent = ids[span.parent_id]
        assert "moat.node.status" in parent.attributes  # a node's span
        assert span.attributes["gen_ai.system"] == "sim"
        assert span.attributes["gen_ai.request.model"] in ("sim-small", "sim-medium")
        assert span.attributes["gen_ai.usage.input_tokens"] > 0
        reasons = span.attributes["gen_ai.response.finish_reasons"]
        cancelled = span.attributes.get("moat.llm.cancelled", False)
        expected = "cancelled" if cancelled else ("stop", "length")
        assert reasons[0] in expected


async def test_the_cancelled_speculative_call_is_marked_and_no_prompt_text_is_sent(
    tmp_path: Path,
) -> None:
    with otlp_receiver() as receiver:
        sink = await traced_run(tmp_path, receiver.endpoint)
        spans = receiver.wait_for(lambda s: len(s) > 0)
    [cancelled] = [
        c for c in sink.llm_calls() if c.call_outcome == "cancelled" and c.node == "answer"
    ]
    [span] = [
        s
        for s in spans
        if s.attributes.get("moat.llm.cancelled") and "answer" in by_id(spans)[s.parent_id].name
    ]
    assert span.attributes["moat.llm.call_kind"] == "speculative"
    assert span.attributes["moat.llm.call_outcome"] == "cancelled"
    assert span.attributes["gen_ai.response.finish_reasons"] == ["cancelled"]
    assert span.attributes["moat.llm.prompt_hash"] == cancelled.prompt_hash
    [answer] = [s for s in spans if s.name == "cascade answer" and s.trace_id == span.trace_id]
    assert answer.attributes["moat.node.status"] == "cancelled"
    assert answer.attributes["moat.node.speculative"] is True
    # the policy keeps no text (store_text unset): hashes only, nowhere any prompt words
    sent = json.dumps([(s.name, s.attributes, s.events) for s in spans])
    assert "pipe bomb" not in sent and "reset my account" not in sent
    assert not any("gen_ai.prompt" in s.attributes for s in spans)


async def test_decisions_are_span_events_with_reason_codes_and_lookups_are_spans(
    tmp_path: Path,
) -> None:
    with otlp_receiver() as receiver:
        sink = await traced_run(tmp_path, receiver.endpoint)
        spans = receiver.wait_for(lambda s: len(s) > 0)
    trace = format(trace_id_of("traced-000000"), "032x")
    [review] = [s for s in spans if s.trace_id == trace and s.name == "critic review"]
    [decision] = [attrs for name, attrs in review.events if name == "CRITIC_DECISION"]
    assert decision["moat.event.decision"] == "refuse"
    assert "INTENT_OPERATIONAL" in decision["moat.event.reason_codes"]
    root = next(s for s in spans if s.trace_id == trace and not s.parent_id)
    assert "POLICY_PINNED" in [name for name, _ in root.events]
    lookups = [s for s in spans if s.name == "cache.lookup cached"]
    assert len(lookups) == len(
        [e for e in sink.events() if e.event_type in ("CACHE_HIT", "CACHE_MISS")]
    )
    assert {s.attributes["moat.cache.result"] for s in lookups} == {"miss"}
    cache_nodes = by_id(spans)
    assert all(cache_nodes[s.parent_id].name == "cache cached" for s in lookups)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env | extra


def test_moat_run_otel_sends_the_batch_to_the_collector(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path, time_scale=0)
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in REQUESTS))
    with otlp_receiver() as receiver:
        args = ["run", str(graph), "--input", str(requests), "--out", "out.jsonl", "--quiet"]
        done = _run(
            [*args, "--otel", receiver.endpoint], _env(OTEL_SERVICE_NAME="answers"), tmp_path
        )
        assert done.returncode == 0, done.stderr
        spans = receiver.wait_for(lambda s: sum(not x.parent_id for x in s) == 2)
    assert {s.resource["service.name"] for s in spans} == {"answers"}
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    roots = {s.attributes["moat.request.id"] for s in spans if not s.parent_id}
    assert roots == {line["request_id"] for line in lines}


def test_the_standard_variables_alone_turn_tracing_on(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    with otlp_receiver() as receiver:
        env = _env(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        done = _run(
            ["run", str(graph), "--prompt", "What is a Roth IRA?", "--quiet"], env, tmp_path
        )
        assert done.returncode == 0, done.stderr
        spans = receiver.wait_for(lambda s: any(not x.parent_id for x in s))
    assert spans[0].resource["service.name"] == "moat"


PLAIN_RUN = """
import sys
from engine.cli import main
code = main(["run", sys.argv[1], "--prompt", "What is a Roth IRA?", "--quiet", "--db", "x.db"])
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"opentelemetry", "prometheus_client"})
print(code, loaded)
"""


def test_a_plain_run_imports_neither_opentelemetry_nor_prometheus(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_RUN, str(graph)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stderr


def test_a_missing_extra_exits_2_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from engine.cli import main

    real = importlib.util.find_spec

    def without_otel(name: str, *args: Any) -> Any:
        return None if name.startswith("opentelemetry") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_otel)
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["run", str(graph), "--prompt", "hi", "--db", str(tmp_path / "x.db"), "--otel"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--otel: traces need the `telemetry` extra" in err
    assert "pip install 'moat[telemetry]'" in err
    assert not (tmp_path / "x.db").exists()  # nothing ran


def _call(prompt_text: str | None, response_text: str | None, status: str = "ok") -> Any:
    from engine.events import CacheStatus, CallKind, CallOutcome, LlmCall

    return LlmCall(
        "q", "answer", 0, "small", "sim", CallKind.NORMAL, CallOutcome.USED, CacheStatus.NONE,
        "abc123", 10, 4, 0.0001, 12.5, 100.0, status, "boom" if status == "error" else None,
        prompt_text=prompt_text, response_text=response_text,
    )  # fmt: skip


def test_prompt_text_reaches_a_span_only_when_the_record_carries_it() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.events import RequestRecord, RequestStatus
    from engine.telemetry import FinishedRequest
    from engine.telemetry.traces import SpanBuilder

    exporter = InMemorySpanExporter()
    builder = SpanBuilder(exporter, model_names={"g": {"small": "sim-small"}})
    record = RequestRecord("q", "r", 0, RequestStatus.FAILED, 100.0, 100.2, 200.0, 0.0, None)
    # what the gateway records under store_text: none (default), then redacted
    for call in (_call(None, None, "error"), _call("mail [EMAIL]", "hello [NAME]")):
        builder.consume(FinishedRequest("g", record, llm_calls=[call]))
    builder.close()
    hidden, shown = [s for s in exporter.get_finished_spans() if s.name == "chat sim-small"]
    assert "gen_ai.prompt" not in (hidden.attributes or {})
    assert hidden.attributes and hidden.attributes["moat.llm.prompt_hash"] == "abc123"
    assert hidden.attributes["error.type"] == "error"
    assert hidden.status.status_code.name == "ERROR"
    assert shown.attributes and shown.attributes["gen_ai.prompt"] == "mail [EMAIL]"
    assert shown.attributes["gen_ai.completion"] == "hello [NAME]"
    assert shown.start_time == 100 * 10**9 and shown.end_time == int(100.0125 * 10**9)
    [root, _] = [s for s in exporter.get_finished_spans() if s.name == "request g"]
    assert root.status.status_code.name == "ERROR"


def test_otel_swallowing_the_graph_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["run", "--otel", str(graph), "--prompt", "hi", "--db", str(tmp_path / "x.db")])
    assert code == 2
    assert f"--otel {graph}: not a collector URL" in capsys.readouterr().err


CALLER = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=1",
}


def _traced(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[Any]:
    """The spans of a request of its own and of one continuing CALLER, under `env`."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.events import RequestRecord, RequestStatus
    from engine.telemetry import FinishedRequest
    from engine.telemetry.traces import SpanBuilder

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(exporter, server=True)
    for request_id, parent in (("own", None), ("continued", CALLER)):
        record = RequestRecord(request_id, "r", 0, RequestStatus.OK, 1.0, 1.2, 200.0, 0.0, None)
        builder.consume(FinishedRequest("g", record, parent=parent))
    builder.close()
    return list(exporter.get_finished_spans())


def test_the_standard_sampler_drops_traces_but_follows_a_sampled_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.trace import SpanKind

    spans = _traced(
        monkeypatch,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    [span] = spans  # its own trace: sampled out at ratio 0; the caller's: sampled
    assert span.attributes["moat.request.id"] == "continued"
    assert format(span.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent.span_id == 0x00F067AA0BA902B7 and span.parent.is_remote
    assert span.context.trace_state.to_header() == "vendor=1"
    assert span.kind == SpanKind.SERVER


def test_otel_sdk_disabled_builds_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _traced(monkeypatch, OTEL_SDK_DISABLED="true") == []
    assert len(_traced(monkeypatch, OTEL_SDK_DISABLED="false")) == 2


def test_the_request_span_carries_the_records_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    own, continued = _traced(monkeypatch)
    assert own.attributes == {
        "moat.graph": "g",
        "moat.request.id": "own",
        "moat.run.id": "r",
        "moat.request.seq": 0,
        "moat.request.status": "ok",
        "moat.request.latency_ms": 200.0,
        "moat.request.cost_usd": 0.0,
        "moat.request.results_reused": 0,
    }
    assert (own.start_time, own.end_time) == (10**9, int(1.2 * 10**9))
    assert own.parent is None and own.context.trace_id == trace_id_of("own")
    assert continued.parent is not None


def test_a_node_run_twice_in_a_cycle_gets_a_span_per_run() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.events import NodeOutcome, NodeRun, NodeStatus, RequestRecord, RequestStatus
    from engine.telemetry import FinishedRequest
    from engine.telemetry.traces import SpanBuilder

    exporter = InMemorySpanExporter()
    builder = SpanBuilder(exporter)
    record = RequestRecord("q", "r", 0, RequestStatus.OK, 100.0, 100.2, 200.0, 0.0, None)
    runs = [
        NodeRun("q", "answer", "model", 0, status, False, outcome, 100.0 + i / 10, 10.0, 1)
        for i, (status, outcome) in enumerate(
            [(NodeStatus.FAILED, NodeOutcome.DISCARDED), (NodeStatus.SUCCEEDED, NodeOutcome.USED)]
        )
    ]
    builder.consume(FinishedRequest("g", record, node_runs=runs, llm_calls=[_call(None, None)]))
    builder.close()
    spans = exporter.get_finished_spans()
    first, second = [s for s in spans if s.name == "model answer"]
    assert first.context.span_id != second.context.span_id
    assert first.status.status_code.name == "ERROR"
    [call] = [s for s in spans if s.name.startswith("chat ")]
    assert call.parent is not None and call.parent.span_id == second.context.span_id
