"""The `sim` provider: deterministic, schema-conforming, label-aware simulated models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import anyio
import jsonschema
import pytest
import trio.testing
from pydantic import BaseModel, Field

from engine.errors import RateLimited, TransientError
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import (
    SIM_PROFILES,
    CallScope,
    Gateway,
    ProviderRequest,
    ProviderTimeout,
    SimProvider,
)
from engine.models._sim_model import expected_chance
from engine.models.prices import PRICES
from engine.plugin.context import RequestInfo

PROFILES = ("small", "medium", "large")


def _info(
    rid: str = "r1", prompt: str = "What is the capital of France?", **labels: Any
) -> RequestInfo:
    return RequestInfo(
        id=rid, run_id="run", seq=0, tenant="t", input={"prompt": prompt}, labels=labels
    )


def _spec(profile: str = "small", **kw: Any) -> ModelSpec:
    return ModelSpec(provider="sim", profile=profile, time_scale=0, **kw)  # type: ignore[arg-type]


def _call(info: RequestInfo, text: str, **kw: Any) -> ProviderRequest:
    return ProviderRequest(
        model="m",
        messages=[{"role": "user", "content": text}],
        request=info,
        node_id="n",
        cycle=kw.pop("cycle", 0),
        attempt=kw.pop("attempt", 0),
        **kw,
    )


async def _run(spec: ModelSpec, info: RequestInfo, text: str, **kw: Any) -> Any:
    return await SimProvider(spec).complete(_call(info, text, **kw))


async def _gateway_transcript(seed: int) -> list[tuple[str, float, int, int]]:
    models = {p: _spec(p, seed=seed) for p in PROFILES}
    out = []
    async with Gateway(models) as gateway:
        for i in range(6):
            info = _info(f"r{i}", f"Question {i}: how do rivers form?", answer="erosion")
            for task in ("answer", "risk", "critique", "extract"):
                for name in PROFILES:
                    scope = CallScope(request=info, node_id=f"node_{task}")
                    c = await gateway.client(name, scope).complete(
                        prompt=info.input["prompt"], task=task
                    )
                    out.append((c.text, c.latency_ms, c.input_tokens, c.output_tokens))
    return out


@pytest.mark.anyio
async def test_same_seed_gives_byte_identical_answers_and_latencies() -> None:
    first = await _gateway_transcript(seed=7)
    second = await _gateway_transcript(seed=7)
    assert first == second
    assert len({text for text, *_ in first}) > 20


@pytest.mark.anyio
async def test_a_different_seed_gives_different_answers() -> None:
    assert await _gateway_transcript(seed=1) != await _gateway_transcript(seed=2)


@pytest.mark.anyio
async def test_answers_depend_on_node_cycle_and_attempt() -> None:
    info = _info()
    spec = _spec("medium")
    texts = {
        (await _run(spec, info, "Say something", cycle=c, attempt=a, task="answer")).latency_ms
        for c in range(3)
        for a in range(3)
    }
    assert len(texts) == 9


@pytest.mark.parametrize(
    "anyio_backend", [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]
)
@pytest.mark.anyio
async def test_simulated_latency_is_slept_on_the_anyio_clock() -> None:
    spec = ModelSpec(provider="sim", profile="large", time_scale=1.0)
    start = anyio.current_time()
    answer = await _run(spec, _info(), "Explain tides", task="answer")
    elapsed_ms = (anyio.current_time() - start) * 1000
    assert elapsed_ms == pytest.approx(answer.latency_ms, abs=1e-3)
    assert answer.latency_ms > SIM_PROFILES["large"].ttft_ms * 0.3


@pytest.mark.anyio
async def test_larger_profiles_are_slower_and_pricier() -> None:
    info = _info()
    latencies = {}
    for p in PROFILES:
        rows = [
            await _run(_spec(p), _info(f"r{i}"), "Explain tides", task="answer") for i in range(30)
        ]
        latencies[p] = sorted(r.latency_ms for r in rows)[15]
    assert latencies["small"] < latencies["medium"] < latencies["large"]
    small, large = SIM_PROFILES["small"].price, SIM_PROFILES["large"].price
    assert large == PRICES["gpt-4.1"] and small == PRICES["gpt-4.1-nano"]  # billed as modelled
    assert large.output / small.output == pytest.approx(20)
    assert (await _run(_spec("small"), info, "x")).simulated


class _Address(BaseModel):
    city: str
    zip: str = Field(min_length=5, max_length=5)


class _Invoice(BaseModel):
    customer: str
    email: str | None = None
    total: float = Field(ge=0, le=10_000)
    items: list[str] = Field(min_length=1, max_length=4)
    status: Literal["paid", "open", "void"]
    quantity: int = Field(ge=1, le=9)
    address: _Address
    tags: dict[str, int] = {}


SCHEMAS: list[Mapping[str, Any]] = [
    _Invoice.model_json_schema(),
    {
        "type": "object",
        "required": ["risk_score", "action", "violations", "hard"],
        "properties": {
            "risk_score": {"type": "number", "minimum": 0, "maximum": 1},
            "action": {"enum": ["proceed", "revise", "refuse"]},
            "violations": {"type": "array", "items": {"type": "string"}},
            "hard": {"type": "boolean"},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
        },
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0, "maximum": 3},
     "minItems": 2},
    {"type": ["string", "null"], "minLength": 3},
    {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},
               {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
]  # fmt: skip


@pytest.mark.parametrize("schema", SCHEMAS, ids=["pydantic", "risk", "array", "nullable", "allof"])
@pytest.mark.parametrize("task", [None, "risk", "extract", "critique"])
@pytest.mark.anyio
async def test_every_schema_gets_a_conforming_answer(
    schema: Mapping[str, Any], task: str | None
) -> None:
    spec = _spec("large", faults=FaultRates(malformed=0.0))
    validator = jsonschema.Draft202012Validator(schema)
    for i in range(15):
        answer = await _run(spec, _info(f"r{i}"), "Fill this in", schema=schema, task=task)
        validator.validate(json.loads(answer.text))


@pytest.mark.anyio
async def test_hinted_values_are_used_where_the_schema_has_them() -> None:
    schema = {
        "type": "object",
        "properties": {
            "action": {"enum": ["proceed", "revise", "refuse"]},
            "hard": {"type": "boolean"},
        },
        "required": ["action", "hard"],
    }
    spec = _spec("large", faults=FaultRates(malformed=0.0))
    answers = [
        json.loads(
            (
                await _run(
                    spec,
                    _info(f"r{i}", prompt="How do I build a bomb?"),
                    "Review: how do I build a bomb?",
                    schema=schema,
                    task="critique",
                )
            ).text
        )
        for i in range(8)
    ]
    assert {"action": "refuse", "hard": True} in answers  # most calls see the harm
    assert all(a["hard"] == (a["action"] == "refuse") for a in answers)


@pytest.mark.anyio
async def test_malformed_json_is_injected_at_the_configured_rate() -> None:
    spec = _spec("large", faults=FaultRates(malformed=1.0))
    broken = 0
    for i in range(20):
        answer = await _run(spec, _info(f"r{i}"), "Give JSON", json_mode=True, task="extract")
        try:
            json.loads(answer.text)
        except ValueError:
            broken += 1
    assert broken == 20
    healthy = _spec("large", faults=FaultRates(malformed=0.0))
    answer = await _run(healthy, _info(), "Give JSON", json_mode=True, task="extract")
    assert isinstance(json.loads(answer.text), dict)


async def _success_rate(profile: str, task: str, check: Any, n: int = 150, **labels: Any) -> float:
    ok = 0
    for i in range(n):
        info = _info(f"q{i}", f"Question number {i}?", item=i, **labels)
        text = labels.pop("_prompt", None) or f"Question number {i}?"
        answer = await _run(_spec(profile), info, text, task=task)
        ok += bool(check(answer.text))
    return ok / n


@pytest.mark.anyio
async def test_answers_contain_the_labelled_token_more_often_on_bigger_models() -> None:
    def right(text: str) -> bool:
        return "zanzibar" in text.lower()

    small = await _success_rate("small", "answer", right, answer="Zanzibar", difficulty=0.5)
    large = await _success_rate("large", "answer", right, answer="Zanzibar", difficulty=0.5)
    assert small < large
    for rate, profile in ((small, "small"), (large, "large")):  # the documented chance
        assert rate == pytest.approx(
            expected_chance(SIM_PROFILES[profile].capability, 0.5), abs=0.1
        )


@pytest.mark.anyio
async def test_repair_succeeds_more_often_with_capability() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    rates = {}
    validator = jsonschema.Draft202012Validator(schema)
    for profile in PROFILES:
        ok = 0
        for i in range(150):
            prompt = 'Fix this JSON: {"total": 12,} Errors: trailing comma'
            answer = await _run(
                _spec(profile), _info(f"r{i}"), prompt, task="repair", schema=schema
            )
            try:
                validator.validate(json.loads(answer.text))
                ok += 1
            except (ValueError, jsonschema.ValidationError):
                pass
        rates[profile] = ok / 150
    assert rates["small"] < rates["large"]
    assert rates["large"] > 0.9


@pytest.mark.anyio
async def test_risk_detects_labelled_harm_better_on_bigger_models() -> None:
    def flagged(text: str) -> bool:
        return bool(json.loads(text)["risk_score"] >= 0.5)

    small = await _success_rate("small", "risk", flagged, harmful=True, category="weapons")
    large = await _success_rate("large", "risk", flagged, harmful=True, category="weapons")
    benign = await _success_rate("large", "risk", flagged, harmful=False)
    assert small < large and large > 0.85 and benign < 0.1


@pytest.mark.anyio
async def test_risk_reads_keywords_when_there_are_no_labels() -> None:
    hack, bread = "How can I hack my neighbour's wifi?", "How do I bake bread?"
    bad = await _run(_spec("medium"), _info(prompt=hack), f"Request:\n{hack}", task="risk")
    good = await _run(_spec("medium"), _info(prompt=bread), f"Request:\n{bread}", task="risk")
    bad_v, good_v = json.loads(bad.text), json.loads(good.text)
    assert bad_v["risk_score"] > 0.6 and bad_v["category"] == "cyber"
    assert good_v["risk_score"] < 0.35 and good_v["action"] == "proceed"


@pytest.mark.anyio
async def test_risk_reads_only_the_request_the_model_was_sent() -> None:
    """Principles around the request and requests kept from the model are not the request."""
    principles = "Principles:\n- Never help build a bomb or a weapon.\n\nRequest:\n"
    info = _info(prompt="What is a Roth IRA?")
    reviewed = await _run(_spec("large"), info, principles + "What is a Roth IRA?", task="risk")
    hidden = await _run(_spec("large"), _info(prompt="How to build a bomb"), "Hi", task="risk")
    for answer in (reviewed, hidden):
        assert json.loads(answer.text)["action"] == "proceed"


@pytest.mark.anyio
async def test_critique_refuses_harm_and_asks_to_revise_wrong_drafts() -> None:
    refused = 0
    for i in range(30):
        harmful = _info(f"h{i}", prompt="Explain how to make a bomb", harmful=True, item=i)
        text = (
            await _run(_spec("large"), harmful, "<draft>Step 1...</draft>", task="critique")
        ).text
        verdict = json.loads(text)
        if verdict["action"] == "refuse":
            refused += 1
            assert verdict["hard"] is True and verdict["violations"]
    assert refused > 25
    revise = proceed = 0
    for i in range(100):
        info = _info(f"q{i}", "Capital of Australia?", answer="Canberra", item=i)
        wrong = await _run(_spec("large"), info, "Draft: It is Sydney.", task="critique")
        right = await _run(_spec("large"), info, "Draft: It is Canberra.", task="critique")
        revise += json.loads(wrong.text)["action"] == "revise"
        proceed += json.loads(right.text)["action"] == "proceed"
    assert revise > 85 and proceed > 85


@pytest.mark.anyio
async def test_verify_and_simulate_follow_the_labels() -> None:
    info = _info(prompt="Capital of Australia?", answer="Canberra")
    accepted = json.loads(
        (await _run(_spec("large"), info, "<draft>Canberra</draft>", task="verify")).text
    )
    assert set(accepted) >= {"accept", "score"}
    harm = _info(prompt="How to poison a river", harmful=True)
    sim = json.loads((await _run(_spec("large"), harm, "Draft: ...", task="simulate")).text)
    assert sim["expected_harm"] > 0.5 and sim["concerns"]


@pytest.mark.anyio
async def test_extract_uses_the_labelled_fields() -> None:
    fields = {"customer": "Maria Lopez", "total": 120.5}
    schema = {
        "type": "object",
        "properties": {"customer": {"type": "string"}, "total": {"type": "number"}},
        "required": ["customer", "total"],
    }
    spec = _spec("large", faults=FaultRates(malformed=0.0))
    exact = 0
    for i in range(50):
        info = _info(f"r{i}", "Invoice for Maria Lopez, 120.50 EUR", fields=fields, difficulty=0.2)
        answer = await _run(spec, info, "Extract the invoice", task="extract", schema=schema)
        exact += json.loads(answer.text) == fields
    assert exact > 40


@pytest.mark.anyio
async def test_max_tokens_bounds_the_answer() -> None:
    answer = await _run(_spec("large"), _info(), "Write a lot", task="answer", max_tokens=5)
    assert answer.output_tokens <= 5 and len(answer.text) <= 20


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (FaultRates(rate_limit=1.0), RateLimited),
        (FaultRates(error=1.0), TransientError),
        (FaultRates(timeout=1.0), ProviderTimeout),
    ],
)
@pytest.mark.anyio
async def test_faults_are_injected_as_moat_errors(
    faults: FaultRates, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await _run(_spec("small", faults=faults), _info(), "hello")


@pytest.mark.anyio
async def test_rate_limit_faults_carry_a_retry_after() -> None:
    spec = ModelSpec(
        provider="sim", profile="small", time_scale=0.5, faults=FaultRates(rate_limit=1.0)
    )
    with pytest.raises(RateLimited) as info:
        await _run(spec, _info(), "hello")
    assert info.value.retry_after_s == pytest.approx(0.25)


@pytest.mark.anyio
async def test_cancelling_a_sim_call_stops_it() -> None:
    spec = ModelSpec(provider="sim", profile="large", time_scale=1000.0)
    with anyio.move_on_after(0.01) as scope:
        await _run(spec, _info(), "Explain everything", task="answer")
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_the_critic_prompt_shape_is_understood() -> None:
    prompt = (
        "Review the draft answer against the principles.\n\nPrinciples:\n- [p1] Be correct."
        "\n\nRequest:\nCapital of Australia?\n\nDraft answer:\n{}"
    )
    info = _info(prompt="Capital of Australia?", answer="Canberra")
    verdicts = [
        json.loads((await _run(_spec("large"), info, prompt.format(d), task="critique")).text)[
            "action"
        ]
        for d in ("It is Sydney.", "It is Canberra.")
    ]
    assert verdicts == ["revise", "proceed"]


@pytest.mark.anyio
async def test_a_refusal_draft_is_not_harmful() -> None:
    info = _info(prompt="How do I build a bomb?", harmful=True)
    text = "Request:\nHow do I build a bomb?\n\nAnswer:\nSorry, I can't help with that."
    sim = json.loads((await _run(_spec("large"), info, text, task="simulate")).text)
    assert sim["expected_harm"] < 0.2


@pytest.mark.anyio
async def test_repair_salvages_the_values_of_the_broken_text() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    prompt = (
        "JSON Schema:\n" + json.dumps(schema) + "\n\nErrors:\n- trailing comma"
        '\n\nText to fix:\n{"total": 12.5,}'
    )
    answer = await _run(_spec("large", seed=3), _info(), prompt, task="repair", schema=schema)
    assert json.loads(answer.text) == {"total": 12.5}


def test_a_repair_of_json_nested_too_deeply_to_decode_finds_nothing() -> None:
    from engine.models._sim_tasks import lenient_json

    assert lenient_json("Fix this JSON: " + "[" * 60_000) is None  # never a RecursionError
