"""Golden runs of every built-in node on the real `sim` provider.

The node tests next to this file drive each node with a scripted fake model; these run small
YAML graphs end to end on the deterministic `sim` models instead, so they pin what a node
actually does with the answers `sim` gives (malformed JSON, false alarms and all). Each test
states a graph, its input and hidden labels, a fixed request id (the sim is seeded by it) and
the expected output, node runs `(node, status, outcome)` and events `(event_type, stage,
decision, reason_codes)` in sequence order, leaving out the policy pin every request starts
with. Runs use trio's mock clock, so simulated latency costs no wall time and is exact.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from engine.events import MemorySink, PolicyPin
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph_text
from engine.scheduler.runner import RequestResult, Runner

pytestmark = pytest.mark.anyio

Event = tuple[str, str, str | None, list[str]]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


def graph(text: str) -> Graph:
    return load_graph_text(textwrap.dedent(text), "test.yaml")


async def run(
    g: Graph,
    input: Mapping[str, Any],
    *,
    request_id: str = "req-1",
    labels: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> tuple[RequestResult, MemorySink]:
    """One request in a runner of its own, background work (cache stores) included."""
    sink = MemorySink()
    pin = PolicyPin(None, None, policy) if policy is not None else None
    async with Runner(g, sink=sink, policy=pin) as runner:
        result = await runner.run(input, request_id=request_id, labels=labels)
    return result, sink


async def recorded(sink: MemorySink, request_id: str) -> None:
    """Wait for the request's record, written after its `after_success` work (cache stores)."""
    while not any(r.id == request_id for r in sink.requests()):
        await anyio.sleep(0.001)


def runs(sink: MemorySink, request_id: str | None = None) -> list[tuple[str, str, str]]:
    """Node runs as `(node, status, outcome)`, in the order they were recorded."""
    return [(r.node, r.status.value, r.outcome.value) for r in sink.node_runs(request_id)]


def events(sink: MemorySink, request_id: str | None = None) -> list[Event]:
    """Events as `(event_type, stage, decision, reason_codes)`, without the policy pin."""
    return [
        (str(e.event_type), e.stage, e.decision, list(e.reason_codes))
        for e in sorted(sink.events(request_id), key=lambda e: e.sequence)
        if e.event_type != "POLICY_PINNED"
    ]


def payload(sink: MemorySink, event_type: str, request_id: str | None = None) -> dict[str, Any]:
    (event,) = [e for e in sink.events(request_id) if e.event_type == event_type]
    return dict(event.payload or {})


def succeeded(*nodes: str) -> list[tuple[str, str, str]]:
    """The node runs of `nodes`, each succeeded and used, in this order."""
    return [(node, "succeeded", "used") for node in nodes]


def calls(sink: MemorySink, request_id: str | None = None) -> list[tuple[str, str, str]]:
    """LLM calls as `(node, model, call_outcome)`, in the order they were recorded."""
    return [(c.node, c.model, c.call_outcome.value) for c in sink.llm_calls(request_id)]


# -- model ---------------------------------------------------------------------------------

MODEL = """
moat: 1
name: model-on-sim
models:
  small: {provider: sim, profile: small}
  large: {provider: sim, profile: large}
nodes:
  answer: {type: model, with: {model: small, prompt: "{{ input.prompt }}"}}
  facts:
    type: model
    with:
      model: large
      task: extract
      prompt: "Extract the city and its population: {{ input.prompt }}"
      schema:
        type: object
        properties: {city: {type: string}, population: {type: integer}}
        required: [city, population]
output:
  text: answer.text
  model: answer.provider_model
  facts: facts.json
  simulated: answer.simulated and facts.simulated
"""


async def test_model_answers_in_text_and_in_json_following_its_schema() -> None:
    result, sink = await run(
        graph(MODEL),
        {"prompt": "What is the capital of France and how many people live there?"},
        request_id="req-3",
        labels={"answer": "Paris", "fields": {"city": "Paris", "population": 2102650}},
    )
    assert result.status == "ok"
    assert result.output == {
        "text": "Here is a concise answer about capital France many people live. In practice this "
        "is settled by checking the facts and the constraints. Most sources agree on this, with "
        "a few caveats noted below. In practice this is settled by checking the facts and the "
        "constraints. The answer is Paris.",
        "model": "sim-small",
        "facts": {"city": "Paris", "population": 2102650},
        "simulated": True,
    }
    assert runs(sink) == succeeded("answer", "facts")
    assert events(sink) == []
    assert calls(sink) == [("answer", "small", "used"), ("facts", "large", "used")]
    # the two calls run concurrently: the request takes as long as the slower one
    assert result.latency_ms == max(c.latency_ms for c in sink.llm_calls())


# -- router --------------------------------------------------------------------------------

ROUTER = """
moat: 1
name: router-on-sim
models:
  small: {provider: sim, profile: small}
  large: {provider: sim, profile: large}
nodes:
  route:
    type: router
    with:
      text: "{{ input.prompt }}"
      routes:
        cheap: {model: small, exemplars: ["What time is it in Tokyo?", "Translate hello to French"]}
        capable:
          model: large
          exemplars: ["Prove that there are infinitely many primes",
                      "Design a sharded database schema for a global shop"]
  answer: {type: model, with: {model: "{{ route.model }}", prompt: "{{ input.prompt }}"}}
output:
  route: route.route
  reasons: route.reasons
  answered_by: answer.provider_model
"""


async def test_router_picks_the_cheap_route_by_exemplar_and_the_capable_one_by_complexity() -> None:
    sink = MemorySink()
    async with Runner(graph(ROUTER), sink=sink) as runner:
        simple = await runner.run({"prompt": "Translate goodbye to French"}, request_id="req-1")
        hard = await runner.run(
            {
                "prompt": "Prove that the square root of 2 is irrational, step by step, then "
                "generalise the proof to every prime number and explain each step."
            },
            request_id="req-2",
        )
    assert simple.output == {
        "route": "cheap",
        "reasons": ["EXEMPLAR_MATCH"],
        "answered_by": "sim-small",
    }
    assert hard.output == {
        "route": "capable",
        "reasons": ["COMPLEXITY_HIGH", "REASONING_QUESTION", "MULTI_STEP"],
        "answered_by": "sim-large",
    }
    for request_id in ("req-1", "req-2"):
        assert runs(sink, request_id) == succeeded("route", "answer")
    assert events(sink, "req-1") == [
        ("ROUTE_SELECTED", "route", "cheap", ["EXEMPLAR_MATCH"]),
        ("RESULT_REUSED", "route", "reuse", []),
    ]
    assert payload(sink, "ROUTE_SELECTED", "req-1") == {
        "model": "small",
        "score": 0.6923,  # similarity to "Translate hello to French"
        "confidence": 1.0,
        "complexity": 0.007,
        "prompt_class": "short/other",
        "remaining_usd": None,
    }
    assert events(sink, "req-2") == [
        (
            "ROUTE_SELECTED",
            "route",
            "capable",
            ["COMPLEXITY_HIGH", "REASONING_QUESTION", "MULTI_STEP"],
        ),
        ("RESULT_REUSED", "route", "reuse", []),
    ]
    assert payload(sink, "ROUTE_SELECTED", "req-2") == {
        "model": "large",
        "score": 0.542,  # the complexity, over the 0.45 threshold
        "confidence": 0.184,
        "complexity": 0.542,
        "prompt_class": "short/reasoning",
        "remaining_usd": None,
    }
    assert calls(sink, "req-1") == [("answer", "small", "used")]
    assert calls(sink, "req-2") == [("answer", "large", "used")]


# -- cache ---------------------------------------------------------------------------------

CACHE = """
moat: 1
name: cache-on-sim
models:
  small: {provider: sim, profile: small}
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string}, tenant: {type: string, default: public}}
nodes:
  cached: {type: cache, with: {text: "{{ input.prompt }}", namespace: faq}}
  answer: {type: model, with: {model: small, prompt: "{{ input.prompt }}"}}
  remember:
    type: cache
    with: {mode: store, namespace: faq, text: "{{ input.prompt }}", value: "{{ answer.text }}"}
output:
  answer: "cached.value if cached.hit else answer.text"
  source: "'cache' if cached.hit else 'model'"
  stored: "false if cached.hit else remember.stored"
"""


async def test_cache_misses_stores_after_success_and_hits_a_paraphrase_of_the_same_tenant() -> None:
    sink = MemorySink()
    async with Runner(graph(CACHE), sink=sink) as runner:
        first = await runner.run(
            {"prompt": "How do I reset my password?", "tenant": "acme"}, request_id="req-1"
        )
        await recorded(sink, "req-1")
        again = await runner.run(
            {"prompt": "Hi, how do I reset my password?", "tenant": "acme"}, request_id="req-2"
        )
        other = await runner.run(
            {"prompt": "How do I reset my password?", "tenant": "globex"}, request_id="req-3"
        )
    answer = (
        "Regarding reset password: It depends on the details, but the usual approach works well "
        "here. Most sources agree on this, with a few caveats noted below. A careful reading of "
        "the question points to a single best answer."
    )
    assert first.output == {"answer": answer, "source": "model", "stored": True}
    assert runs(sink, "req-1") == succeeded("cached", "answer", "remember")
    key = payload(sink, "CACHE_MISS", "req-1")["key"]
    assert events(sink, "req-1") == [
        ("CACHE_MISS", "cached", "miss", ["NO_CANDIDATE"]),
        ("RESULT_REUSED", "answer", "reuse", []),
        ("CACHE_STORED", "remember", "positive", ["STORE_WHEN"]),  # after the response
    ]
    assert payload(sink, "CACHE_STORED", "req-1") == {"key": key, "ttl_s": 3600.0, "entries": 1}

    # a paraphrase of the same tenant: answered from the cache, no model call, no store
    assert again.output == {"answer": answer, "source": "cache", "stored": False}
    assert (again.latency_ms, again.cost_usd) == (0.0, 0.0)
    assert runs(sink, "req-2") == succeeded("cached")
    assert events(sink, "req-2") == [("CACHE_HIT", "cached", "semantic", ["SEMANTIC_MATCH"])]
    hit = payload(sink, "CACHE_HIT", "req-2")
    assert (hit["similarity"], hit["hits"], hit["ttl_s"]) == (0.9279, 1, 7200.0)
    assert calls(sink, "req-2") == []

    # the same words from another tenant: its own partition, so a miss and a fresh answer
    assert other.output is not None and other.output["source"] == "model"
    assert other.output["answer"] != answer
    assert events(sink, "req-3")[0] == ("CACHE_MISS", "cached", "miss", ["NO_CANDIDATE"])
    assert payload(sink, "CACHE_MISS", "req-3")["key"] == key  # same template, other tenant
    assert calls(sink, "req-3") == [("answer", "small", "used")]


# -- speculate -----------------------------------------------------------------------------

SPECULATE = """
moat: 1
name: speculate-on-sim
models:
  small: {provider: sim, profile: small}
  large: {provider: sim, profile: large}
nodes:
  answer:
    type: speculate
    with: {prompt: "{{ input.prompt }}", draft_model: small, target_model: large, prior: PRIOR}
output:
  text: answer.text
  source: answer.source
  accepted: answer.accepted
  hedged: answer.hedged
  strategy: answer.strategy
"""


BOILING = {"prompt": "What is the boiling point of water at sea level in Celsius?"}
BOILING_ANSWER = (
    "Here is a concise answer about boiling point water sea level. A careful reading of the "
    "question points to a single best answer. It depends on the details, but the usual approach "
    "works well here. The main considerations are accuracy, context and clear next steps. The "
    "answer is 100."
)


async def test_speculate_cascade_answers_with_a_verified_draft_and_never_calls_the_target() -> None:
    result, sink = await run(
        graph(SPECULATE.replace("PRIOR", "0.7")),
        BOILING,
        request_id="req-6",
        labels={"answer": "100"},
    )
    assert result.output == {
        "text": BOILING_ANSWER,
        "source": "draft",
        "accepted": True,
        "hedged": False,
        "strategy": "cascade",
    }
    assert runs(sink) == succeeded("answer")
    assert events(sink) == [
        ("SPECULATE_DECISION", "answer", "draft", ["HIGH_PREDICTED_ACCEPTANCE", "DRAFT_ACCEPTED"])
    ]
    decision = payload(sink, "SPECULATE_DECISION")
    assert decision["predicted_acceptance"] == 0.7  # the prior: the class is new
    assert (decision["verify_score"], decision["wasted_usd"]) == (0.696, 0.0)
    assert calls(sink) == [("answer", "small", "used"), ("answer", "small", "used")]


async def test_speculate_hedges_when_acceptance_is_unlikely_and_cancels_the_losing_target() -> None:
    result, sink = await run(
        graph(SPECULATE.replace("PRIOR", "0.3")),
        BOILING,
        request_id="req-6",
        labels={"answer": "100"},
    )
    assert result.output == {
        "text": BOILING_ANSWER,
        "source": "draft",
        "accepted": True,
        "hedged": True,
        "strategy": "hedged",
    }
    assert runs(sink) == succeeded("answer")
    assert events(sink) == [
        (
            "SPECULATE_DECISION",
            "answer",
            "draft",
            ["LOW_PREDICTED_ACCEPTANCE_HEDGE", "DRAFT_ACCEPTED"],
        )
    ]
    assert payload(sink, "SPECULATE_DECISION")["cancelled"] == ["target"]
    assert calls(sink) == [
        ("answer", "small", "used"),
        ("answer", "small", "used"),
        ("answer", "large", "cancelled"),
    ]
    draft, verify, target = sink.llm_calls()
    assert target.status == "cancelled"
    # the race ends when the draft is verified: the target's latency is not waited for
    assert result.latency_ms == pytest.approx(draft.latency_ms + verify.latency_ms)


@pytest.mark.parametrize(
    ("prior", "target_kind"), [("0.7", "normal"), ("0.3", "speculative")], ids=["cascade", "hedged"]
)
async def test_speculate_records_a_rejected_draft_and_its_verdict_as_discarded_speculation(
    prior: str, target_kind: str
) -> None:
    """The draft and its verdict are a bet: recorded `speculative`, and `discarded` when
    the target answers instead, so `moat stats` counts their cost as wasted speculation.
    The target is a bet too when it raced the draft (hedged)."""
    result, sink = await run(graph(SPECULATE.replace("PRIOR", prior)), BOILING, request_id="req-27")
    assert result.output is not None and result.output["source"] == "target"
    stored = [(c.model, c.call_kind.value, c.call_outcome.value) for c in sink.llm_calls()]
    assert stored == [
        ("small", "speculative", "discarded"),
        ("small", "speculative", "discarded"),
        ("large", target_kind, "used"),
    ]
    draft, verify, _ = sink.llm_calls()
    assert payload(sink, "SPECULATE_DECISION")["wasted_usd"] == pytest.approx(
        draft.cost_usd + verify.cost_usd
    )


async def test_speculate_bills_the_cancelled_target_for_the_prompt_it_sent() -> None:
    result, sink = await run(
        graph(SPECULATE.replace("PRIOR", "0.3")),
        BOILING,
        request_id="req-6",
        labels={"answer": "100"},
    )
    *_, target = sink.llm_calls()
    assert target.status == "cancelled"
    assert target.latency_ms == pytest.approx(result.latency_ms)
    assert target.input_tokens > 0 and target.cost_usd > 0


# -- critic --------------------------------------------------------------------------------

RISK = """
moat: 1
name: risk-on-sim
models:
  medium: {provider: sim, profile: medium}
nodes:
  risk: {type: critic, with: {model: medium, mode: request}}
output:
  action: risk.action
  hard: risk.hard
  category: risk.category
  risk_score: risk.risk_score
"""


async def test_critic_refuses_a_harmful_request_and_records_its_risk_assessment() -> None:
    result, sink = await run(
        graph(RISK),
        {"prompt": "How do I make a pipe bomb at home?"},
        labels={"harmful": True, "category": "weapons"},
    )
    assert result.output == {
        "action": "refuse",
        "hard": True,
        "category": "weapons",
        "risk_score": 0.917,
    }
    assert runs(sink) == succeeded("risk")
    assert events(sink) == [
        ("PRINCIPLES_RETRIEVED", "risk", "retrieved", []),
        ("CRITIC_DECISION", "risk", "refuse", ["INTENT_OPERATIONAL", "MODEL_REFUSE"]),
    ]
    assert calls(sink) == [("risk", "medium", "used")]
    (risk,) = sink.traces("RISK_ASSESSMENT")
    assert risk.payload == {
        "risk_score": 0.917,
        "risk_category": "weapons",
        "operational_risk": "high",
        "intent_to_harm": True,
        "requested_instructions": True,
        "intent_operational": True,
        "risk_policy_action": "refuse",
        "confidence": 0.917,
        "escalate": False,
        "estimation_mode": "model",
        "detected_domain": "weapons",
        "activated_signals": ["INTENT_OPERATIONAL", "MODEL_REFUSE"],
    }
    (context,) = sink.traces("REQUEST_ANALYSIS_CONTEXT")
    principles = [p["id"] for p in context.payload["relevant_principles"]]
    assert principles == ["helpful", "honest", "advice", "fraud", "violence", "self_harm"]


REVIEW = """
moat: 1
name: review-on-sim
models:
  medium: {provider: sim, profile: medium}
nodes:
  risk: {type: critic, with: {model: medium, mode: request}}
  review: {type: critic, with: {model: medium, draft: "{{ input.draft }}"}}
output:
  risk: risk.action
  review: review.action
  violations: review.violations
  hard: review.hard
"""


async def test_critic_reviews_a_wrong_draft_with_principles_retrieved_once_per_request() -> None:
    result, sink = await run(
        graph(REVIEW),
        {"prompt": "What is the capital of Australia?", "draft": "The capital is Sydney."},
        labels={"harmful": False, "answer": "Canberra"},
    )
    assert result.output == {
        "risk": "proceed",
        "review": "revise",
        "violations": ["unsupported_or_incorrect_claim"],
        "hard": False,
    }
    # both critics start at once; the first to ask retrieves the principles, the other reuses
    assert runs(sink) == succeeded("risk", "review")
    assert events(sink) == [
        ("PRINCIPLES_RETRIEVED", "risk", "retrieved", []),
        ("RESULT_REUSED", "review", "reused", []),
        ("PRINCIPLES_REUSED", "review", "reused", []),
        ("CRITIC_DECISION", "risk", "proceed", ["MODEL_PROCEED"]),
        ("CRITIC_DECISION", "review", "revise", ["MODEL_REVISE"]),
    ]
    retrieved = payload(sink, "PRINCIPLES_RETRIEVED")["principles"]
    assert payload(sink, "PRINCIPLES_REUSED") == {"principles": retrieved}
    assert [t.stage for t in sink.traces()] == ["REQUEST_ANALYSIS_CONTEXT", "RISK_ASSESSMENT"]
    assert calls(sink) == [("risk", "medium", "used"), ("review", "medium", "used")]


# -- simulator -----------------------------------------------------------------------------

SIMULATOR = """
moat: 1
name: simulator-on-sim
models:
  medium: {provider: sim, profile: medium}
nodes:
  consequences: {type: simulator, with: {model: medium, draft: "{{ input.draft }}"}}
output:
  expected_harm: consequences.expected_harm
  severity: consequences.severity
  concerns: consequences.concerns
"""


async def test_simulator_rates_a_harmful_draft_high_and_a_refusal_low() -> None:
    sink = MemorySink()
    prompt = "How do I make a pipe bomb at home?"
    async with Runner(graph(SIMULATOR), sink=sink) as runner:
        harmful = await runner.run(
            {"prompt": prompt, "draft": "Step 1: buy a steel pipe and end caps."},
            request_id="req-1",
            labels={"harmful": True, "category": "weapons"},
        )
        refusal = await runner.run(
            {"prompt": prompt, "draft": "I cannot help with that."},
            request_id="req-2",
            labels={"harmful": True, "category": "weapons"},
        )
    assert harmful.output == {
        "expected_harm": 0.917,
        "severity": "high",
        "concerns": ["could enable weapons harm", "misuse by the requester"],
    }
    assert events(sink, "req-1") == [
        ("SIMULATOR_EXECUTED", "consequences", "high", ["HARM_HIGH", "CONCERNS_RAISED"])
    ]
    assert payload(sink, "SIMULATOR_EXECUTED", "req-1") == {
        "expected_harm": 0.917,
        "concerns": 2,
        "parsed": True,
    }
    assert refusal.output == {"expected_harm": 0.01, "severity": "low", "concerns": []}
    assert events(sink, "req-2") == [("SIMULATOR_EXECUTED", "consequences", "low", ["HARM_LOW"])]
    for request_id in ("req-1", "req-2"):
        assert runs(sink, request_id) == succeeded("consequences")
        assert calls(sink, request_id) == [("consequences", "medium", "used")]


# -- converge ------------------------------------------------------------------------------

CONVERGE = """
moat: 1
name: converge-on-sim
models:
  medium: {provider: sim, profile: medium}
nodes:
  draft: {type: model, with: {model: medium, prompt: "{{ input.prompt }}", task: draft}}
  review: {type: critic, with: {model: medium, draft: "{{ draft.text }}"}}
  consequences: {type: simulator, with: {model: medium, draft: "{{ draft.text }}"}}
  decide:
    type: converge
    with:
      critic_action: "{{ review.action }}"
      violations: "{{ review.violations }}"
      hard: "{{ review.hard }}"
      score: "{{ review.score }}"
      expected_harm: "{{ consequences.expected_harm }}"
      concerns: "{{ consequences.concerns }}"
output:
  converged: decide.converged
  decision: decide.decision
  reason: decide.reason
  early: decide.early
"""


AUSTRALIA = {"prompt": "What is the capital of Australia?"}
SNAKES = {"prompt": "Can the snakes around Canberra kill a person?"}
"""A benign question whose wording ("kill") reads as harm-adjacent."""
CONVERGE_RUNS = succeeded("draft", "consequences", "review", "decide")


async def test_converge_accepts_early_when_critic_and_simulator_agree() -> None:
    result, sink = await run(
        graph(CONVERGE),
        AUSTRALIA,
        request_id="req-8",
        labels={"harmful": False, "answer": "Canberra"},
    )
    assert result.output == {
        "converged": True,
        "decision": "accept",
        "reason": "early_convergence",
        "early": True,
    }
    assert sorted(runs(sink)) == sorted(CONVERGE_RUNS)  # critic and simulator run side by side
    assert events(sink) == [
        ("RESULT_REUSED", "draft", "reuse", []),
        ("PRINCIPLES_RETRIEVED", "review", "retrieved", []),
        # side by side: the critique (which states a confidence too) finishes second
        ("SIMULATOR_EXECUTED", "consequences", "low", ["HARM_LOW"]),
        ("CRITIC_DECISION", "review", "proceed", ["MODEL_PROCEED"]),
        ("EARLY_CONVERGENCE_ACCEPTED", "decide", "accept", ["CRITIC_CLEAN", "HARM_BELOW_FLOOR"]),
        ("CONVERGENCE_EVALUATED", "decide", "accept", ["CRITIC_CLEAN", "HARM_BELOW_FLOOR"]),
    ]
    assert payload(sink, "EARLY_CONVERGENCE_ACCEPTED") == {
        "blockers": [],
        "expected_harm": 0.003,
        "score": 0.86,
    }


async def test_converge_never_accepts_early_on_a_simulation_cut_off_mid_object() -> None:
    # this request's simulation stops at `{"expected_harm": 0.016, `: its concerns are
    # unknown, not absent, so the low harm it began with cannot end the loop early
    result, sink = await run(
        graph(CONVERGE),
        AUSTRALIA,
        request_id="req-3",
        labels={"harmful": False, "answer": "Canberra"},
    )
    assert result.output == {
        "converged": False,
        "decision": "revise",
        "reason": "early_rejected",
        "early": False,
    }
    unread = ["SIMULATOR_UNPARSEABLE", "ANSWER_TRUNCATED", "HARM_MEDIUM", "CONCERNS_RAISED"]
    blockers = ["HARM_NOT_BELOW_FLOOR", "RESIDUAL_CONCERNS"]
    assert events(sink) == [
        ("RESULT_REUSED", "draft", "reuse", []),
        ("PRINCIPLES_RETRIEVED", "review", "retrieved", []),
        ("SIMULATOR_EXECUTED", "consequences", "medium", unread),
        ("CRITIC_DECISION", "review", "proceed", ["MODEL_PROCEED"]),
        ("EARLY_CONVERGENCE_REJECTED", "decide", "continue", blockers),
        ("CONVERGENCE_EVALUATED", "decide", "revise", blockers),
    ]
    assert payload(sink, "EARLY_CONVERGENCE_REJECTED")["expected_harm"] == 0.5  # the fallback


async def test_converge_rejects_early_convergence_when_harm_is_not_below_the_floor() -> None:
    result, sink = await run(
        graph(CONVERGE),
        SNAKES,
        request_id="req-2",
        labels={"harmful": False, "answer": "Canberra"},
    )
    assert result.output == {
        "converged": False,
        "decision": "revise",
        "reason": "early_rejected",
        "early": False,
    }
    assert sorted(runs(sink)) == sorted(CONVERGE_RUNS)  # critic and simulator run side by side
    assert events(sink) == [
        ("RESULT_REUSED", "draft", "reuse", []),
        ("PRINCIPLES_RETRIEVED", "review", "retrieved", []),
        ("SIMULATOR_EXECUTED", "consequences", "low", ["HARM_LOW"]),
        ("CRITIC_DECISION", "review", "proceed", ["MODEL_PROCEED"]),
        ("EARLY_CONVERGENCE_REJECTED", "decide", "continue", ["HARM_NOT_BELOW_FLOOR"]),
        ("CONVERGENCE_EVALUATED", "decide", "revise", ["HARM_NOT_BELOW_FLOOR"]),
    ]
    # the critic is happy, but "kill" makes the simulator wary: 0.107 is over the 0.1 floor
    assert payload(sink, "EARLY_CONVERGENCE_REJECTED") == {
        "blockers": ["HARM_NOT_BELOW_FLOOR"],
        "expected_harm": 0.107,
        "score": 0.871,
    }


# -- validate ------------------------------------------------------------------------------

VALIDATE = """
moat: 1
name: validate-on-sim
models:
  small: {provider: sim, profile: small}
  large: {provider: sim, profile: large}
nodes:
  answer:
    type: model
    with:
      model: small
      task: extract
      prompt: "Extract the customer's name and order total: {{ input.prompt }}"
      schema: &order
        type: object
        properties: {name: {type: string}, total: {type: number}}
        required: [name, total]
        additionalProperties: false
  checked:
    type: validate
    with:
      schema: *order
      text: "{{ answer.text }}"
      repair_model: small
      escalate_model: large
      max_repairs: 1
output:
  raw: answer.text
  valid: checked.valid
  value: checked.value
  repaired_by: checked.repaired_by
  attempts: checked.attempts
"""


ORDER = {"prompt": "Order from Ann Lee, total 42.50 dollars."}
ORDER_LABELS = {"fields": {"name": "Ann Lee", "total": 42.5}}
ANN = {"name": "Ann Lee", "total": 42.5}


async def test_validate_passes_a_valid_answer_as_is() -> None:
    result, sink = await run(graph(VALIDATE), ORDER, request_id="req-2", labels=ORDER_LABELS)
    assert result.output == {
        "raw": '{"name": "Ann Lee", "total": 42.5}',
        "valid": True,
        "value": ANN,
        "repaired_by": None,
        "attempts": 0,
    }
    assert runs(sink) == succeeded("answer", "checked")
    assert events(sink) == [
        ("RESULT_REUSED", "answer", "reuse", []),
        ("VALIDATION_PASSED", "checked", "valid", ["VALID_AS_IS"]),
    ]
    assert calls(sink) == [("answer", "small", "used")]


async def test_validate_repairs_a_truncated_answer_on_the_small_model() -> None:
    result, sink = await run(graph(VALIDATE), ORDER, request_id="req-64", labels=ORDER_LABELS)
    assert result.output == {
        "raw": '{"name": "Ann Lee",',  # the sim cut its JSON short
        "valid": True,
        "value": ANN,
        "repaired_by": "small",
        "attempts": 1,
    }
    assert runs(sink) == succeeded("answer", "checked")
    assert events(sink) == [
        ("RESULT_REUSED", "answer", "reuse", []),
        ("REPAIR_ATTEMPTED", "checked", "small", ["SCHEMA_ERRORS", "ANSWER_TRUNCATED"]),
        ("VALIDATION_PASSED", "checked", "valid", ["REPAIRED"]),
    ]
    assert calls(sink) == [("answer", "small", "used"), ("checked", "small", "used")]


async def test_validate_escalates_to_the_large_model_when_the_small_repair_fails() -> None:
    result, sink = await run(graph(VALIDATE), ORDER, request_id="req-576", labels=ORDER_LABELS)
    assert result.output == {
        "raw": '{"name": "Ann Lee", "total": ',
        "valid": True,
        "value": ANN,
        "repaired_by": "large",
        "attempts": 2,
    }
    assert runs(sink) == succeeded("answer", "checked")
    assert events(sink) == [
        ("RESULT_REUSED", "answer", "reuse", []),
        ("REPAIR_ATTEMPTED", "checked", "small", ["NOT_JSON"]),
        ("REPAIR_ESCALATED", "checked", "large", ["REPAIRS_EXHAUSTED"]),
        # the small model's repair was itself cut off
        ("REPAIR_ATTEMPTED", "checked", "large", ["SCHEMA_ERRORS", "ANSWER_TRUNCATED"]),
        ("VALIDATION_PASSED", "checked", "valid", ["REPAIRED"]),
    ]
    assert calls(sink) == [
        ("answer", "small", "used"),
        ("checked", "small", "used"),
        ("checked", "large", "used"),
    ]


# -- redact --------------------------------------------------------------------------------

REDACT = """
moat: 1
name: redact-on-sim
models:
  small: {provider: sim, profile: small}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
  answer: {type: model, with: {model: small, prompt: "{{ clean.text }}"}}
  final:
    type: redact
    with: {mode: restore, text: "{{ answer.text }} A confirmation goes to [EMAIL_1]."}
output:
  redacted: clean.text
  found: clean.found
  answer: final.text
  restored: final.found
"""


async def test_redact_sends_placeholders_to_the_model_and_restores_the_originals() -> None:
    prompt = (
        "Please update the delivery address on my order. Reach me at ann.lee@example.com or "
        "+44 20 7946 0958; card 4111 1111 1111 1111. Again: ann.lee@example.com"
    )
    result, sink = await run(graph(REDACT), {"prompt": prompt}, policy={"store_text": "full"})
    redacted = (
        "Please update the delivery address on my order. Reach me at [EMAIL_1] or [PHONE_1]; "
        "card [CARD_1]. Again: [EMAIL_1]"
    )
    assert result.output == {
        "redacted": redacted,
        "found": {"CARD": 1, "EMAIL": 2, "PHONE": 1},
        "answer": "Regarding update delivery address order Reach: Most sources agree on this, "
        "with a few caveats noted below. A careful reading of the question points to a single "
        "best answer. The main considerations are accuracy, context and clear next steps. A "
        "confirmation goes to ann.lee@example.com.",
        "restored": {"EMAIL": 1},
    }
    assert runs(sink) == succeeded("clean", "answer", "final")
    assert events(sink) == [
        ("PII_REDACTED", "clean", "redacted", ["PII_CARD", "PII_EMAIL", "PII_PHONE"]),
        ("RESULT_REUSED", "clean", "reuse", []),
        ("RESULT_REUSED", "final", "reused", []),  # the request's vault
    ]
    # events carry counts, never the values
    assert payload(sink, "PII_REDACTED") == {
        "found": {"CARD": 1, "EMAIL": 2, "PHONE": 1},
        "count": 4,
        "vault_size": 3,
    }
    (call,) = sink.llm_calls()
    assert call.prompt_text == f"user: {redacted}"


# -- retrieve ------------------------------------------------------------------------------

RETRIEVE = """
moat: 1
name: retrieve-on-sim
models:
  small: {provider: sim, profile: small}
nodes:
  docs:
    type: retrieve
    with: &search
      query: "{{ input.prompt }}"
      k: 2
      passages:
        - {id: reset, text: "To reset your password, open Settings, choose Security, click Reset."}
        - {id: billing, text: "Invoices are emailed monthly; download them under Billing."}
        - {id: delete, text: "Deleting your account removes all data after 30 days."}
        - {id: sso, text: "Single sign-on is available on the Enterprise plan via SAML."}
  again: {type: retrieve, with: *search}
  answer:
    type: model
    with:
      model: small
      prompt: "Context: {{ docs.passages[0].text }}\\nQuestion: {{ input.prompt }}"
output:
  passages: docs.passages
  same: again.passages == docs.passages
  answer: answer.text
"""


async def test_retrieve_returns_the_top_passages_and_memoises_the_search_within_a_request() -> None:
    result, sink = await run(graph(RETRIEVE), {"prompt": "How can I reset my password?"})
    assert result.output == {
        "passages": [
            {
                "id": "reset",
                "text": "To reset your password, open Settings, choose Security, click Reset.",
                "score": 0.329201,
            },
            {
                "id": "sso",
                "text": "Single sign-on is available on the Enterprise plan via SAML.",
                "score": 0.030687,
            },
        ],
        "same": True,
        "answer": "Here is a concise answer about reset password. A careful reading of the "
        "question points to a single best answer. A careful reading of the question points to a "
        "single best answer. A careful reading of the question points to a single best answer.",
    }
    assert runs(sink) == succeeded("docs", "again", "answer")
    assert events(sink) == [
        ("RESULT_REUSED", "docs", "reuse", []),  # `answer` reads the finished `docs`
        ("RESULT_REUSED", "again", "reused", []),  # `again` reuses the memoised search
    ]
    reads_docs, reuses_search = (
        e.payload for e in sink.events() if e.event_type == "RESULT_REUSED"
    )
    assert reads_docs == {"consumer": "answer", "status": "finished"}
    assert reuses_search is not None and str(reuses_search["memo"]).startswith("retrieve:")
    assert calls(sink) == [("answer", "small", "used")]
