"""The `sim` provider: a deterministic simulated model, so moat runs with no key and no network.

Profiles (`SIM_PROFILES`; prices in dollars per million tokens, input/output):

| profile | time to first token | per output token | price       | capability | malformed JSON |
|---------|---------------------|------------------|-------------|------------|----------------|
| small   | 80 ms               | 4 ms             | 0.15 / 0.60 | 0.55       | 8 %            |
| medium  | 200 ms              | 10 ms            | 1.00 / 4.00 | 0.75       | 3 %            |
| large   | 400 ms              | 20 ms            | 5.00 / 15.0 | 0.92       | 1 %            |

Latency is `(ttft + per_token * output_tokens) * jitter`, where jitter is log-normal
(sigma 0.2) and, for 2 % of calls, a further 2-4x tail, so p95/p99 look like a real
service. The simulated latency is what `Completion.latency_ms` reports; the provider
sleeps `latency * ModelSpec.time_scale` with `anyio.sleep`, so under a mock clock (or
with `time_scale: 0`) it costs no wall time. Tokens are estimated at ~4 characters each.

Everything is seeded: one `random.Random` per call from a blake2b hash of
(`ModelSpec.seed`, request seed and id, node id, cycle, attempt, profile, task, prompt),
never the global generator, so equal inputs give byte-identical answers and latencies.

The sim answers any JSON Schema with a conforming object (except at the malformed rate,
when it breaks the JSON: a trailing comma, prose around a code fence, a truncation or
Python quoting) and answers the built-in tasks (`task=`) plausibly: `risk`, `critique`,
`simulate`, `verify`, `answer`/`draft`/`revise`, `extract` and `repair`. Drafts to judge
are found in `<draft>...</draft>` (or `<answer>...</answer>`) tags, or after a line
starting with `Draft:`, `Draft answer:`, `Answer:` or `Previous draft:`; a `repair`
salvages the values of the broken JSON after `Text to fix:` (or `Broken JSON:`,
`Invalid JSON:`, `Fix this JSON:`), else of the first JSON-like text in the prompt.

Hidden labels (THE documented field list). A request line may carry `_labels`; the
scheduler passes them as `RequestInfo.labels`, and only this provider reads them. No
output copies a label: labels set the request's latents (difficulty, topic ambiguity, a
blind spot every model shares) and the latents set each call's chance of being right, as
documented in `engine.models._sim_model`; the call then draws right or wrong.

- `harmful` (bool): the truth a harm check (`risk`, `critique`, `simulate`, `verify`) is
  right or wrong about; without it, a request is harmful when its wording names a harm
  ("bomb", "weapon", "hack", "kill", "steal", "malware", ...). False flags depend on the
  wording the model was sent: near zero for plain questions, frequent for harm-adjacent
  (dual-use) wording. A harm check states its `confidence` in its verdict (calibrated);
  risk scores and `expected_harm` read that verdict as a probability of harm at even
  prior odds. Answers are given regardless: refusing is the
  critic's job.
- `difficulty` (0..1, default 0.3): how hard the request is, for every model.
- `kind`, `category` (str): the topic, whose ambiguity is a latent. The risk output's
  `category` is read from the request's wording (`other` when it names no harm), never
  from this label.
- `answer` (str): a short token a correct answer contains; a free-text answer contains it
  with `answer_chance`. A `revise` keeps a right draft right with 0.9 and answers a wrong
  one afresh at the same chance (no bonus for self-critique). Critique and verify judge a
  draft right when it contains the token, right about it with `judge_chance`; a
  critique states its `confidence` in its verdict (calibrated), and `score` reads the
  verdict as the probability that the draft is right at even prior odds.
- `fields` (dict): the true values for `extract`, each read right with
  `answer_chance(extract=True)`, else a plausible wrong value; a `repair` re-reads the
  fields the broken text lost the same way.

A JSON answer also states its `confidence`: the model's calibrated chance of being right.
The risk output's `pii` is what the engine's PII detector finds in the text the model was
sent, never a label.

Faults (`ModelSpec.faults`, probabilities per attempt): `rate_limit` raises
`RateLimited` (Retry-After 0.5 simulated seconds), `error` raises `TransientError` (a
simulated 500), `timeout` hangs for 30 simulated seconds then raises `ProviderTimeout`
(a shorter node or call timeout fires first), `malformed` overrides the profile's rate.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from engine.errors import RateLimited, TransientError
from engine.graph.spec import ModelSpec, Price
from engine.models._schema_fill import fill_schema
from engine.models._sim_call import locate_request, request_text
from engine.models._sim_tasks import SimCall, answer_task, is_text_task
from engine.models.base import ProviderRequest, ProviderResponse, ProviderTimeout, estimate_tokens

__all__ = [
    "SIM_PROFILES",
    "SIM_SERVER_PRICES",
    "SimProfile",
    "SimProvider",
    "break_json",
    "sim_profile",
]

TIMEOUT_HANG_S = 30.0
"""How long (simulated seconds) a `timeout` fault hangs before failing by itself."""
RETRY_AFTER_S = 0.5
"""The Retry-After (simulated seconds) of a `rate_limit` fault."""


@dataclass(frozen=True, slots=True)
class SimProfile:
    """One simulated model: its speed, price, quality and JSON reliability."""

    name: str
    ttft_ms: float
    """Time to first token."""
    ms_per_token: float
    """Time per output token."""
    price: Price
    """Dollars per million tokens."""
    capability: float
    """0..1: how often it is right (answers, detection, judgement, repairs)."""
    malformed_rate: float
    """Probability that JSON it is asked for comes out broken."""
    answer_tokens: int
    """Typical length of a free-text answer."""

    @property
    def provider_model(self) -> str:
        """The name the sim reports as the provider's model (`sim-small`)."""
        return f"sim-{self.name}"


SIM_PROFILES: Mapping[str, SimProfile] = {
    "small": SimProfile("small", 80.0, 4.0, Price(input=0.15, output=0.6), 0.55, 0.08, 60),
    "medium": SimProfile("medium", 200.0, 10.0, Price(input=1.0, output=4.0), 0.75, 0.03, 90),
    "large": SimProfile("large", 400.0, 20.0, Price(input=5.0, output=15.0), 0.92, 0.01, 120),
}
"""The built-in profiles, by name."""
SIM_SERVER_PRICES: Mapping[str, Price] = {p.provider_model: p.price for p in SIM_PROFILES.values()}
"""The prices of the models `moat sim-server` serves (`sim-small`, ...), by model name."""


def sim_profile(spec: ModelSpec) -> SimProfile:
    """The profile a `sim` model spec uses (`medium` when none is named)."""
    return SIM_PROFILES[spec.profile or "medium"]


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _request_text(call: ProviderRequest) -> str:
    """The request as this call saw it: never text the graph kept from the model, nor the
    rest of the prompt (principles, instructions, drafts) that surrounds it."""
    return request_text(call.messages, locate_request(call.messages, call.request.input))


def break_json(text: str, value: Any, rng: random.Random) -> str:
    """`text` (a JSON document of `value`) broken the way real models break JSON."""
    kind = rng.randrange(4)
    if kind == 0 and len(text) > 2 and text.endswith(("}", "]")):
        return text[:-1] + "," + text[-1]
    if kind == 1:
        return f"Sure! Here is the JSON you asked for:\n```json\n{text}\n```\nAnything else?"
    if kind == 2 and isinstance(value, dict) and value:
        return repr(value)
    return text[: max(1, int(len(text) * rng.uniform(0.4, 0.9)))]


class SimProvider:
    """The embedded simulated provider for one `sim` model spec.

    Args:
        spec: the model's spec (`profile`, `seed`, `faults`, `time_scale`, `price`).
    """

    name = "sim"

    def __init__(self, spec: ModelSpec) -> None:
        if spec.provider != "sim":
            raise ValueError(f"SimProvider needs a `provider: sim` spec, got {spec.provider!r}")
        self.spec = spec
        self.profile = sim_profile(spec)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _rngs(self, call: ProviderRequest) -> tuple[random.Random, random.Random, random.Random]:
        prompt = "\n".join(f"{m.get('role')}:{m.get('content')}" for m in call.messages)
        base = (
            self.spec.seed,
            call.request.seed,
            call.request.id,
            call.node_id,
            call.cycle,
            call.attempt,
            self.profile.name,
            call.task,
            hashlib.sha256(prompt.encode()).hexdigest(),
        )
        # Separate streams so that, e.g., enabling faults does not reshuffle the answers.
        return tuple(random.Random(_seed(*base, salt)) for salt in ("fault", "latency", "content"))  # type: ignore[return-value]

    def latency_ms(self, output_tokens: int, rng: random.Random) -> float:
        """The simulated latency of an answer of `output_tokens` tokens."""
        p = self.profile
        jitter = rng.lognormvariate(0.0, 0.2)
        if rng.random() < 0.02:
            jitter *= rng.uniform(2.0, 4.0)
        return round((p.ttft_ms + p.ms_per_token * output_tokens) * jitter, 3)

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        """Answer one attempt, after sleeping its (scaled) simulated latency.

        Raises:
            RateLimited: an injected `rate_limit` fault.
            TransientError: an injected `error` fault.
            ProviderTimeout: an injected `timeout` fault, after hanging.
        """
        fault_rng, latency_rng, content_rng = self._rngs(call)
        await self._maybe_fault(fault_rng)
        text = self._content(call, content_rng)
        truncated = call.max_tokens is not None and estimate_tokens(text) > call.max_tokens
        if truncated:
            text = text[: (call.max_tokens or 0) * 4]
        input_tokens = estimate_tokens("\n".join(m.get("content", "") for m in call.messages))
        output_tokens = estimate_tokens(text)
        latency = self.latency_ms(output_tokens, latency_rng)
        await anyio.sleep(latency / 1000 * self.spec.time_scale)
        return ProviderResponse(
            text=text,
            provider_model=self.profile.provider_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency,
            simulated=True,
            finish_reason="length" if truncated else "stop",
        )

    async def _maybe_fault(self, rng: random.Random) -> None:
        faults = self.spec.faults
        if faults is None:
            return
        scale = self.spec.time_scale
        draw = rng.random()
        if draw < faults.rate_limit:
            await anyio.sleep(self.profile.ttft_ms / 4000 * scale)
            raise RateLimited(
                "sim: simulated rate limit (429)", retry_after_s=RETRY_AFTER_S * scale
            )
        draw -= faults.rate_limit
        if draw < faults.error:
            await anyio.sleep(self.profile.ttft_ms / 1000 * scale)
            raise TransientError("sim: simulated server error (500)")
        draw -= faults.error
        if draw < faults.timeout:
            await anyio.sleep(TIMEOUT_HANG_S * scale)
            raise ProviderTimeout(f"sim: simulated timeout after {TIMEOUT_HANG_S:g} s")

    def _content(self, call: ProviderRequest, rng: random.Random) -> str:
        messages_text = "\n".join(m.get("content", "") for m in call.messages)
        answer = answer_task(
            SimCall(
                task=call.task,
                prompt=messages_text,
                request_text=_request_text(call),
                labels=call.request.labels,
                capability=self.profile.capability,
                rng=rng,
                answer_tokens=self.profile.answer_tokens,
                profile=self.profile.name,
                seed=call.request.seed,
            )
        )
        structured = call.schema is not None or call.json_mode
        if not structured:
            return answer.text if is_text_task(call.task) else json.dumps(answer.values)
        value: Any = (
            fill_schema(call.schema, rng, answer.values)
            if call.schema is not None
            else answer.values
        )
        text = json.dumps(value)
        rate = self.profile.malformed_rate
        if self.spec.faults is not None and self.spec.faults.malformed is not None:
            rate = self.spec.faults.malformed
        broken = answer.malformed if answer.malformed is not None else rng.random() < rate
        return break_json(text, value, rng) if broken else text
