"""`moat serve --otel`: a request's spans continue the caller's W3C trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.serve import MoatServer
from engine.telemetry import Telemetry, trace_id_of
from engine.telemetry.traces import otlp_exporter
from tests.support.fast_graphs import fast_copy
from tests.support.otlp_receiver import otlp_receiver
from tests.support.serve_client import http

pytestmark = pytest.mark.anyio

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
BODY = {"model": "baseline", "messages": [{"role": "user", "content": "What is a Roth IRA?"}]}


async def test_a_traceparent_is_continued_and_requests_without_one_get_their_own_trace(
    tmp_path: Path,
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    with otlp_receiver() as receiver:
        telemetry = Telemetry(traces=otlp_exporter(receiver.endpoint), metrics=True, server=True)
        async with MoatServer([graph], db=None, telemetry=telemetry) as server:
            async with http(server) as web:
                parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
                continued = await web.post(
                    "/chat/completions",
                    json=BODY,
                    headers={"traceparent": parent, "tracestate": "vendor=1"},
                )
                own = await web.post("/chat/completions", json=BODY)
                broken = await web.post(
                    "/chat/completions", json=BODY, headers={"traceparent": "00-nonsense"}
                )
            assert [r.status_code for r in (continued, own, broken)] == [200, 200, 200]
        spans = receiver.wait_for(lambda s: sum(x.name == "request baseline" for x in s) == 3)
    roots = {s.attributes["moat.request.id"]: s for s in spans if s.name == "request baseline"}
    first = roots[continued.headers["x-moat-request-id"]]
    assert (first.trace_id, first.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    assert first.kind == 2  # SERVER
    children = [s for s in spans if s.parent_id == first.span_id]
    assert children and all(s.trace_id == CALLER_TRACE for s in children)
    for response in (own, broken):  # no (valid) caller's trace: the request's own
        request_id = response.headers["x-moat-request-id"]
        root = roots[request_id]
        assert root.trace_id == format(trace_id_of(request_id), "032x")
        assert root.parent_id == ""


async def test_without_otel_the_server_builds_no_spans(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    async with MoatServer([graph], db=None) as server:
        assert server.metrics.telemetry.spans is None
        async with http(server) as web:
            headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            reply = await web.post("/chat/completions", json=BODY, headers=headers)
        assert reply.status_code == 200
        assert server.metrics.telemetry.feed._parents == {}
