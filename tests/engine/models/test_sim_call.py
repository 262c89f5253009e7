"""The call context the `sim` reads besides the messages, and how it travels over HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.graph.spec import ModelSpec
from engine.models import ProviderRequest, SimProvider
from engine.models._sim_call import (
    CALL_HEADER,
    CallContext,
    call_context,
    call_headers,
    locate_request,
    parse_call_header,
    request_text,
)
from engine.models.openai_provider import OpenAIProvider
from engine.plugin.context import RequestInfo
from engine.serve.sim_app import serve

PRINCIPLES = (
    "Assess the risk of answering this request.\n\nPrinciples:\n"
    "- [p1] (hard) Never help build a bomb, weapon or malware.\n"
    "- [p2] Do not help anyone hack or steal.\n\nRequest:\n{}"
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    request_id=st.text(min_size=1, max_size=20),
    node_id=st.text(min_size=1, max_size=12),
    numbers=st.tuples(*(st.integers(0, 2**31) for _ in range(3))),
    labels=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    span=st.none() | st.tuples(*(st.integers(0, 10_000) for _ in range(3))),
)
def test_the_call_header_carries_the_context_unchanged_and_in_order(
    request_id: str,
    node_id: str,
    numbers: tuple[int, int, int],
    labels: dict[str, Any],
    span: tuple[int, int, int] | None,
) -> None:
    seed, cycle, attempt = numbers
    context = CallContext(request_id, seed, node_id, cycle, attempt, labels, span)
    ((name, value),) = call_headers(context).items()
    assert name == CALL_HEADER
    assert value.isascii() and "\n" not in value  # a valid HTTP header value
    back = parse_call_header(value)
    assert back == context
    assert list(back.labels) == list(labels)  # the sim draws per label field, in order


@pytest.mark.parametrize(
    "value", ["", "%7B", "[1,2]", '{"seed": 1}', '{"request": "r", "span": 3}']
)
def test_a_garbled_call_header_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="X-Moat-Call"):
        parse_call_header(value)


def test_the_request_is_found_inside_a_review_prompt_not_its_principles() -> None:
    messages = [{"role": "user", "content": PRINCIPLES.format("What is a Roth IRA?")}]
    span = locate_request(messages, {"prompt": "What is a Roth IRA?"})
    assert request_text(messages, span) == "What is a Roth IRA?"


def test_a_request_redacted_by_a_node_is_found_with_its_numbered_placeholders() -> None:
    prompt = "Mail ann@example.com about order 4471, or call +44 20 7946 0958."
    sent = "Mail [EMAIL_1] about order 4471, or call [PHONE_1]."
    messages = [{"role": "user", "content": PRINCIPLES.format(sent)}]
    assert request_text(messages, locate_request(messages, {"prompt": prompt})) == sent


def test_a_request_the_graph_kept_from_the_model_falls_back_to_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise the attached notes."},
    ]
    span = locate_request(messages, {"prompt": "how to build a weapon"})
    assert span is None
    assert request_text(messages, span) == "Summarise the attached notes."


async def _both_ways(call: ProviderRequest, profile: str) -> tuple[str, str]:
    local = await SimProvider(ModelSpec(provider="sim", profile=profile, time_scale=0)).complete(
        call
    )
    async with anyio.create_task_group() as tg:
        server = await tg.start(serve, "127.0.0.1", 0)
        server.time_scale = 0
        remote_spec = ModelSpec(provider="openai", model=f"sim-{profile}", base_url=server.base_url)
        provider = OpenAIProvider(remote_spec, api_key="unused")
        try:
            remote = await provider.complete(call)
        finally:
            await provider.aclose()
            tg.cancel_scope.cancel()
    return local.text, remote.text


@pytest.mark.anyio
@pytest.mark.parametrize("task", ["risk", "critique", "simulate", "verify", "extract", "answer"])
async def test_sim_server_answers_a_moat_call_exactly_as_the_embedded_sim(task: str) -> None:
    info = RequestInfo(
        id="r-7",
        run_id="run",
        seq=3,
        tenant="acme",
        input={"prompt": "Order 31894 from Emma Jensen overheats. What is a Roth IRA?"},
        labels={"harmful": False, "answer": "ANS-1", "fields": {"b": "x", "a": 2}},
        seed=5,
    )
    content = PRINCIPLES.format(info.input["prompt"]) + "\n\nDraft answer:\nThe answer is ANS-1."
    call = ProviderRequest(
        model="large",
        messages=[
            {"role": "system", "content": "Reply in JSON."},
            {"role": "user", "content": content},
        ],
        request=info,
        node_id="review",
        cycle=2,
        attempt=1,
        task=task,
        json_mode=task != "answer",
    )
    local, remote = await _both_ways(call, "medium")
    assert remote == local


def test_the_context_of_a_call_names_its_request_node_cycle_and_attempt() -> None:
    info = RequestInfo(id="r-1", run_id="run", seq=0, tenant="t", input={"prompt": "Hi"}, seed=9)
    messages: list[Mapping[str, str]] = [{"role": "user", "content": "Request:\nHi"}]
    call = ProviderRequest(
        model="m", messages=messages, request=info, node_id="n", cycle=1, attempt=2
    )
    assert call_context(call) == CallContext("r-1", 9, "n", 1, 2, {}, (0, 9, 11))
