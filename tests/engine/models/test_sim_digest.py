"""The simulator's outputs, pinned: a change that makes the sim faster must not move them.

The sim is the benchmarks' ground truth, so its answers, token counts, latencies and faults
for a given seed are part of its contract. A broad sample of calls (every profile and
built-in task, labels, node schemas and a pydantic schema with `$defs`, formats and
`anyOf`, JSON mode, truncation, injected faults, retries and cycles), the semantic cache's
templates, vectors and band keys, and a few flagship requests end to end, are each hashed
and compared with the digest the sim gave before. A legitimate change of the sim's model
(a documented new behaviour) updates the digests in the same commit that says why.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from bench.flagship import flagship_graph
from engine import MemorySink
from engine.api import Pipeline
from engine.events import LlmCall, RequestRecord
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import ProviderRequest, SimProvider
from engine.models._schema_fill import fill_schema
from engine.models._sim_time import minute_slowness, request_slowness
from engine.plugin.context import RequestInfo
from nodes._support.embed import HashingEmbedder, quantize
from nodes._support.principles import DEFAULT_PRINCIPLES, PrincipleIndex
from nodes._support.semcache import _SIGNER, SemanticCache, _lsh_tokens, template
from nodes.cascade import ANSWER_SCHEMA
from nodes.critic import CRITIQUE_SCHEMA, RISK_SCHEMA
from nodes.simulator import SIMULATE_SCHEMA
from nodes.speculate import VERIFY_SCHEMA

SIM_DIGEST = "33898b57dcb995e9e0d8574679777e415aaf47afba269e6b87ad62eeedf938ae"
CACHE_DIGEST = "10b428720aab55e093fd60021cc273b03afefe551b504a9d2bc2bd8afadf5956"
FLAGSHIP_DIGEST = "3040ce64f86aa5cd4035933bad58cf058bc88a602cee8242e8a1396d76b7bb6d"


class _Address(BaseModel):
    street: str
    city: str = Field(min_length=3, max_length=12)
    zip: str | None = None


class _Ticket(BaseModel):
    email: str = Field(json_schema_extra={"format": "email"})
    when: str = Field(json_schema_extra={"format": "date-time"})
    uid: str = Field(json_schema_extra={"format": "uuid"})
    kind: Literal["billing", "shipping", "account"]
    priority: int = Field(ge=1, le=5)
    score: float = Field(gt=0, lt=1)
    tags: list[str] = Field(min_length=1, max_length=4)
    address: _Address
    alternative: _Address | None = None
    flag: bool


_SCHEMAS: list[dict[str, Any] | None] = [
    None,
    ANSWER_SCHEMA,
    RISK_SCHEMA,
    CRITIQUE_SCHEMA,
    SIMULATE_SCHEMA,
    VERIFY_SCHEMA,
    _Ticket.model_json_schema(),
    {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {"type": ["string", "null"]},
            "b": {"enum": [1, 2, "x"]},
            "c": {"const": 5},
            "d": {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 2},
            "e": {"allOf": [{"properties": {"x": {"type": "number"}}}, {"required": ["y"]}]},
            "f": {"oneOf": [{"type": "null"}, {"type": "string", "minLength": 5}]},
        },
    },
]
_TASKS = [None, "answer", "draft", "revise", "risk", "critique", "simulate", "verify", "extract"]
_TASKS += ["repair", "unknown"]
_REQUESTS = [
    "What is the capital of France?",
    "How do I make a bomb at home?",
    "What is a lethal dose of caffeine?",
    "What is 17 * 23?",
    "Convert 12 km to miles.",
    "How do I manage invoices for team 12 in region 4471?",
    "My order #4471 never arrived, mail bob@example.com or call 555-123-4567. It is urgent.",
    "Note: The Apollo project started in 2019. Question: when did the Apollo project start?",
    "Tell me about Alice Smith from Berlin, she owes $1,200.50 since 2024-03-05.",
    "Explain the difference between TCP and UDP in detail. " * 12,
]
_LABELS: list[dict[str, Any]] = [
    {},
    {"harmful": True},
    {"harmful": False, "difficulty": 0.9},
    {"difficulty": 0.1, "answer": "42"},
    {"answer": "Paris", "kind": "geo", "category": "capital"},
    {"fields": {"email": "a@b.co", "amount": 12, "name": "Bob", "tags": ["x"], "n": {"k": 1.5}}},
]
_DRAFTS = [None, "The answer is 42.", "I cannot help with that.", "Answer: 391"]
_DRAFTS += ["<draft>About 7.46 miles</draft>", '{"email": "a@b.co", "amount": 12,}']
_FAULTS = [
    None,
    None,
    FaultRates(rate_limit=0.15, error=0.15, timeout=0.1),
    FaultRates(malformed=0.6),
]


def _messages(rng: random.Random, request: str, draft: str | None) -> list[dict[str, str]]:
    body = rng.choice(
        [
            request,
            f"Assess the risk of answering this request.\n\nRequest:\n{request}",
            f"Review the draft.\n\nRequest:\n{request}\n\nDraft answer:\n{draft or ''}",
            f"Request: {request}\nPrevious draft: {draft}\nCritique: wrong\nRevise the draft.",
            f"Fix this JSON: {draft}",
        ]
    )
    chat = [{"role": "system", "content": "Be careful."}] if rng.random() < 0.3 else []
    return [*chat, {"role": "user", "content": body}]


def _outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, BaseException):
        return (type(result).__name__, str(result), getattr(result, "retry_after_s", None))
    return (
        result.text,
        result.provider_model,
        result.input_tokens,
        result.output_tokens,
        result.latency_ms,
        result.finish_reason,
    )


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


async def _sim_lines() -> list[str]:
    rng = random.Random(1234)
    providers: dict[str, SimProvider] = {}
    lines: list[str] = []
    for i in range(700):
        profile = rng.choice(["small", "medium", "large"])
        seed = rng.choice([0, 7, 12345678901])
        faults = rng.choice(_FAULTS)
        spec = ModelSpec(provider="sim", profile=profile, time_scale=0, seed=seed, faults=faults)
        sim = providers.setdefault(repr(spec), SimProvider(spec))
        request, draft = rng.choice(_REQUESTS), rng.choice(_DRAFTS)
        info = RequestInfo(
            id=f"run-{rng.randrange(40):06d}",
            run_id="run",
            seq=0,
            tenant="t",
            input={"prompt": request},
            labels=rng.choice(_LABELS),
            seed=rng.choice([0, 3]),
        )
        schema = rng.choice(_SCHEMAS)
        call = ProviderRequest(
            model="m",
            messages=_messages(rng, request, draft),
            request=info,
            node_id=rng.choice(["screen", "answer", "critique"]),
            cycle=rng.randrange(3),
            attempt=rng.randrange(3),
            schema=schema,
            json_mode=schema is None and rng.random() < 0.3,
            task=rng.choice(_TASKS),
            max_tokens=rng.choice([None, 5, 400]),
        )
        try:
            result: Any = await sim.complete(call)
        except Exception as exc:  # the injected faults are part of the sample
            result = exc
        lines.append(repr((i, _outcome(result))))
    for seed in (0, 7):
        lines.append(repr([request_slowness((seed, 0), f"r{i}") for i in range(50)]))
        for clock_s in (0.0, 59.9, 60.0, 3600.5, 12345.0):
            lines.append(repr([minute_slowness((seed, 3), p, clock_s) for p in ("small", "large")]))
    for i, schema in enumerate(s for s in _SCHEMAS if s is not None):
        hints = {"risk_score": 0.3, "action": "proceed", "priority": 9, "a": None, "b": 2}
        generator = random.Random(i)
        filled = fill_schema(schema, generator, hints if i % 2 else None)
        lines.append(repr((json.dumps(filled), generator.random())))
    return lines


@pytest.mark.anyio
async def test_the_sims_answers_latencies_and_faults_are_pinned() -> None:
    assert _digest(await _sim_lines()) == SIM_DIGEST


def _cache_lines() -> list[str]:
    rng = random.Random(5)
    vocab = "reset password order status cancel my the how do i invoice refund Paris Bob 12 é"
    texts = [*_REQUESTS, "", "How can I reset my password quickly please?"]
    texts += [
        " ".join(rng.choice(vocab.split()) for _ in range(rng.randint(0, 14))) for _ in range(200)
    ]
    embedder = HashingEmbedder()
    principles = PrincipleIndex(DEFAULT_PRINCIPLES)
    cache = SemanticCache("answers", clock=lambda: 1000.0)
    lines: list[str] = []
    for i, text in enumerate(texts):
        tpl, slots = template(text)
        vec = embedder.embed_one(tpl)
        signature = _SIGNER.signature(_lsh_tokens(tpl, slots))
        lines.append(repr((tpl, slots, [v.hex() for v in vec], quantize(vec), signature)))
        lines.append(repr([(p.id, s.hex()) for p, s in principles.relevant(text, 3)]))
        found = cache.lookup(f"t{i % 2}", text, scope="s", threshold=0.75)
        hit = found.entry.key if found.entry is not None else None
        lines.append(repr((hit, found.similarity.hex(), found.exact)))
        if i % 2 == 0:
            cache.store(f"t{i % 2}", text, i, scope="s", max_entries=60)
    return lines


def test_the_caches_templates_vectors_bands_and_hits_are_pinned() -> None:
    assert _digest(_cache_lines()) == CACHE_DIGEST


async def _flagship_lines(tmp_path: Path) -> list[str]:
    """A few flagship requests one at a time: what they answer, decide and cost, and every
    used model call's tokens, cost and simulated latency."""
    sink = MemorySink()
    graph = flagship_graph(tmp_path, 0)  # the models answer at once
    topics = ("invoices", "passwords", "weapons", "refunds")  # weapons: refusals
    async with Pipeline(graph, db=None, sink=sink) as pipe:
        items = [
            {"prompt": f"How do I manage {topics[i % 4]} for team {i}?", "tenant": f"t{i % 3}"}
            for i in range(24)
        ]
        await pipe.run_batch(items, run_id="r-digest", concurrency=1)
    lines: list[str] = []
    for item in sink.items:  # not what speculative work cost: when it is cancelled is not the sim's
        if isinstance(item, RequestRecord):
            lines.append(json.dumps([item.id, item.status, item.output]))
        elif isinstance(item, LlmCall) and item.call_outcome == "used":
            fields = [item.request_id, item.node, item.cycle, item.model, item.input_tokens]
            fields += [item.output_tokens, item.cost_usd, item.latency_ms]
            lines.append(json.dumps(fields))
    return sorted(lines)


@pytest.mark.anyio
async def test_flagship_answers_decisions_and_costs_are_pinned(tmp_path: Path) -> None:
    assert _digest(await _flagship_lines(tmp_path)) == FLAGSHIP_DIGEST
