"""Cost budgets hold against real OpenAI-compatible endpoints, measured from `llm_calls`.

Each test runs a small two-call graph with `budget.cost_usd` through `run_sync` (the public
path: `Pipeline`, scheduler, gateway, the official `openai` client, HTTP on loopback) at
concurrency 20 against `FakeOpenAI`, which bills every attempt as the worst legal provider
would. The invariants, per request:

- what moat charged (the sum of its `llm_calls.cost_usd`) never exceeds the budget;
- what moat charged is never less than what the endpoint billed (so the budget is real).

A non-compliant endpoint (one that bills more output than it was allowed) is the exception
the gateway cannot prevent, only bound: it is charged what it billed, the overrun is recorded
as a `BUDGET_COST_EXCEEDED` event, and the request goes over by that overrun at most.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import run_sync
from engine.graph.loader import load_graph_text
from tests.support.fake_openai import BEHAVIOURS, FakeOpenAI

PRICE_IN, PRICE_OUT = 0.15, 0.60
"""gpt-4o-mini's table price, dollars per million tokens."""
EPS = 1e-12
_TAGS = itertools.count()

GRAPH = """\
moat: 1
name: budgeted
models:
  large: {{provider: openai, model: gpt-4o-mini, base_url: "{base_url}",
          timeout_s: {timeout_s}, max_retries: 2}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
budget: {{cost_usd: {budget!r}}}
nodes:
  first:
    type: model
    with: {{model: large, prompt: "{{{{ input.prompt }}}}"}}
  second:
    type: model
    optional: true
    with: {{model: large, max_tokens: {max_tokens},
           prompt: "{{{{ first.text }}}} {{{{ input.prompt }}}}"}}
output: {{answer: "second.text if second else first.text"}}
"""

TIMEOUT_S = 1.5
"""The calls' timeout: well above a loopback call on a loaded 2-core machine (at 0.3 s, 20
concurrent first attempts could time out before the fake read them, and the breaker opened
before anything was billed), and half the `hang` behaviour's stall, which it must cut."""

PROMPTS = [
    "How do I reset my password?",
    "Как сбросить пароль в личном кабинете?",
    "如何重置我的密码？请详细说明每一个步骤。",  # noqa: RUF001 (Chinese punctuation, on purpose)
    "パスワードをリセットする方法を教えてください。",
    "🔑🔒🙈🙉🙊 password?? 👩‍👩‍👧‍👦🏳️‍🌈",
    "비밀번호를 재설정하려면 어떻게 해야 하나요?",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(hang_s=2 * TIMEOUT_S) as server:
        yield server


def _run(
    fake: FakeOpenAI, behaviour: str, prompts: list[str], budget: float, max_tokens: int
) -> tuple[dict[str, float], dict[str, int], dict[str, float], str]:
    """Run the graph on `prompts` (tagged by position); return what moat charged per request,
    each request's tag, the overruns it recorded per request, and the db path."""
    text = GRAPH.format(
        base_url=fake.base_url(behaviour), budget=budget, max_tokens=max_tokens, timeout_s=TIMEOUT_S
    )
    graph = load_graph_text(text, "budgeted.yaml")
    db = str(Path(tempfile.mkdtemp()) / "t.db")
    # tags unique across runs, so `flaky` and `hang` fail the first attempt of every request
    numbers = [next(_TAGS) for _ in prompts]
    inputs = [{"prompt": f"[[{n}]] {p}"} for n, p in zip(numbers, prompts, strict=True)]
    results = run_sync(graph, inputs, db=db, concurrency=20)
    tags = {r.request_id: n for n, r in zip(numbers, results, strict=True)}
    charged: dict[str, float] = defaultdict(float)
    overrun: dict[str, float] = defaultdict(float)
    with sqlite3.connect(db) as conn:
        for rid, cost in conn.execute("select request_id, cost_usd from llm_calls"):
            charged[rid] += cost
        rows = conn.execute(
            "select request_id, payload_json from orchestration_events "
            "where event_type = 'BUDGET_COST_EXCEEDED' and decision = 'overrun'"
        )
        for rid, payload in rows:
            data = json.loads(payload)
            overrun[rid] += data["charged"] - data["reserved"]
    return charged, tags, overrun, db


def _billed(fake: FakeOpenAI, behaviour: str, since: int) -> dict[int, float]:
    billed: dict[int, float] = defaultdict(float)
    for bill in fake.bills[since:]:
        if bill.behaviour == behaviour and bill.tag is not None:
            billed[bill.tag] += (
                bill.input_tokens * PRICE_IN + bill.output_tokens * PRICE_OUT
            ) / 1e6
    return billed


def _check(
    fake: FakeOpenAI, behaviour: str, prompts: list[str], budget: float, max_tokens: int
) -> None:
    since = len(fake.bills)
    charged, tags, overrun, _ = _run(fake, behaviour, prompts, budget, max_tokens)
    billed = _billed(fake, behaviour, since)
    assert billed, "the endpoint was called"
    for rid, tag in tags.items():
        assert charged[rid] >= billed[tag] - EPS, (behaviour, rid, charged[rid], billed[tag])
        if behaviour == "overrun":  # over by the recorded overrun at most
            assert charged[rid] <= budget + overrun[rid] + EPS, (rid, charged[rid], budget)
        else:
            assert charged[rid] <= budget + EPS, (behaviour, rid, charged[rid], budget)
            assert overrun[rid] == 0
    if behaviour == "overrun":
        assert sum(overrun.values()) > 0


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_no_request_is_charged_past_its_budget_or_below_its_bill(
    fake: FakeOpenAI, behaviour: str
) -> None:
    # 20 requests at concurrency 20; a budget that fits the first call but not always both
    prompts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) for i in range(20)]
    _check(fake, behaviour, prompts, budget=0.0012, max_tokens=600)


def test_a_compliant_endpoint_is_sent_the_reserved_output_limit(fake: FakeOpenAI) -> None:
    since = len(fake.bills)
    _run(fake, "exact", ["Hello"], budget=0.01, max_tokens=77)
    limits = sorted(
        b.body.get("max_tokens", b.body.get("max_completion_tokens")) for b in fake.bills[since:]
    )
    assert limits == [77, 1024]  # the node's own, and the default the gateway reserved


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    behaviour=st.sampled_from(BEHAVIOURS),
    prompts=st.lists(
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300),
        min_size=1,
        max_size=20,
    ),
    budget=st.floats(0.0007, 0.004),
    max_tokens=st.integers(1, 2000),
)
def test_budgets_hold_for_any_prompt_budget_and_endpoint(
    fake: FakeOpenAI, behaviour: str, prompts: list[str], budget: float, max_tokens: int
) -> None:
    _check(fake, behaviour, prompts, budget, max_tokens)
