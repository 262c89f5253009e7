"""The `sim` provider: a deterministic simulated model, so moat runs with no key and no network.

Profiles (`SIM_PROFILES`) are modelled on one real family, OpenAI's GPT-4.1 models
(`engine.models.prices.SIM_MODELS`), and billed at that family's list prices, dollars per
million tokens input/output, from the dated table of `engine.models.prices`:

| profile | modelled on  | price       | TTFT   | prefill/1k in | decode   | capability | bad JSON |
|---------|--------------|-------------|--------|---------------|----------|------------|----------|
| small   | gpt-4.1-nano | 0.10 / 0.40 | 630 ms | 15 ms         | 96 tok/s | 0.683      | 8 %      |
| medium  | gpt-4.1-mini | 0.40 / 1.60 | 720 ms | 21 ms         | 62 tok/s | 0.789      | 3 %      |
| large   | gpt-4.1      | 2.00 / 8.00 | 750 ms | 30 ms         | 68 tok/s | 0.813      | 1 %      |

Sources, all public: decode speeds are one client's same-day measurement of the three
models on OpenAI's API (community.openai.com, "Inference speed of different models", 2025:
95.9, 61.7 and 67.6 tok/s averaged over runs of 500 output tokens); times to first token
are the OpenAI-served averages listed by the ZenMux gateway for gpt-4.1-nano (628 ms) and
gpt-4.1-mini (719 ms), gpt-4.1's taken a little above mini's since no like-for-like figure
was found; prefill is the growth of TTFT with the prompt that Artificial Analysis reports
for gpt-4.1-mini (0.93 s at 10k input tokens, about 21 ms per 1k above the short-prompt
TTFT), scaled with model size. A profile's `capability` (its chance of being right on a
request of default difficulty, `engine.models._sim_model`) is the mean of the three scores
OpenAI published for all three models at launch (MMLU 80.1/87.5/90.2, GPQA Diamond
50.3/65.0/66.3, IFEval 74.5/84.1/87.4 %): the real gap between the small and the large
model is about 0.7 logits, and the mini model is nearly as good as the large one. The
malformed-JSON rates are not published; they are guesses ordered by size.

Latency (`engine.models._sim_time`): time to first token plus prefill growing with the
input, plus decode at the profile's speed, times a per-attempt jitter (fresh on every
retry), a slowness shared by every call of the same request and a "slow minute" shared by
every call to the same profile started in it (minutes counted from the provider's first
call). The simulated latency is what
`Completion.latency_ms` reports; the provider answers `latency * ModelSpec.time_scale` after
the call reached it (the time it takes to write the simulated answer included, as a
remote model's is in its latency), sleeping with `anyio.sleep`, so under a mock clock (or
with `time_scale: 0`) it costs no wall time.
Tokens are estimated at ~4 characters each. A call cancelled while it runs has generated
the output tokens its decode reached by then (`output_before_cancel`); the gateway bills
them with the prompt.

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
  (dual-use) wording. A harm check states its `confidence` in its verdict, computed
  without the truth: the posterior that the verdict is right, from the model's chances on
  a harmful and on a benign request worded so and a prior by wording
  (`engine.models._sim_tasks.HARM_PRIOR`); the label reaches a harm check only through its
  verdict's draw. Risk scores and `expected_harm` are that posterior read as the
  probability that the request is harmful. Answers are given regardless: refusing is the
  critic's job.
- `difficulty` (0..1, default 0.3): how hard the request is, for every model.
- `kind`, `category` (str): the topic, whose ambiguity is a latent. The risk output's
  `category` is read from the request's wording (`other` when it names no harm), never
  from this label.
- `answer` (str): a short token a correct answer contains; a free-text answer contains it
  with `answer_chance`, else a wrong one drawn without looking at the token (never the
  token reversed or a number next to it, which would give it away). A `revise` keeps a
  right draft right with 0.9 and answers a wrong one afresh at the same chance (no bonus
  for self-critique). Critique and verify judge a draft right when it contains the token,
  right about it with `judge_chance`; a critique states its `confidence` in its verdict
  (calibrated), and `score` reads the verdict as the probability that the draft is right
  at even prior odds.
- `fields` (dict): the true values for `extract`, each read right with
  `answer_chance(extract=True)`, else a wrong value of the same type drawn without looking
  at the true one (a yes/no field has one wrong value); a `repair` re-reads the fields the
  broken text lost the same way.

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
from engine.models._sim_time import call_latency_ms, minute_slowness, request_slowness
from engine.models.base import ProviderRequest, ProviderResponse, ProviderTimeout, estimate_tokens
from engine.models.prices import PRICES, SIM_MODELS, SIM_SERVER_PRICES

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
    """One simulated model: the real model it is modelled on, its speed, price and quality."""

    name: str
    after: str
    """The real model it is modelled on (`engine.models.prices.SIM_MODELS`)."""
    ttft_ms: float
    """Time to first token of a short prompt."""
    prefill_ms_per_1k: float
    """Extra time to first token per 1,000 input tokens."""
    tokens_per_s: float
    """Decode speed."""
    capability: float
    """0..1: how often it is right (answers, detection, judgement, repairs)."""
    malformed_rate: float
    """Probability that JSON it is asked for comes out broken."""
    answer_tokens: int
    """Typical length of a free-text answer."""

    @property
    def price(self) -> Price:
        """Dollars per million tokens: the list price of the model it is modelled on."""
        return PRICES[self.after]

    @property
    def ms_per_token(self) -> float:
        """Time per output token."""
        return 1000.0 / self.tokens_per_s

    @property
    def provider_model(self) -> str:
        """The name the sim reports as the provider's model (`sim-small`)."""
        return f"sim-{self.name}"


def _profile(name: str, *figures: float, malformed: float, answer_tokens: int) -> SimProfile:
    ttft, prefill, speed, capability = figures
    after = SIM_MODELS[name]
    return SimProfile(name, after, ttft, prefill, speed, capability, malformed, answer_tokens)


SIM_PROFILES: Mapping[str, SimProfile] = {
    "small": _profile("small", 630.0, 15.0, 96.0, 0.683, malformed=0.08, answer_tokens=60),
    "medium": _profile("medium", 720.0, 21.0, 62.0, 0.789, malformed=0.03, answer_tokens=90),
    "large": _profile("large", 750.0, 30.0, 68.0, 0.813, malformed=0.01, answer_tokens=120),
}
"""The built-in profiles, by name (sources in the module docstring)."""


def sim_profile(spec: ModelSpec) -> SimProfile:
    """The profile a `sim` model spec uses (`medium` when none is named)."""
    return SIM_PROFILES[spec.profile or "medium"]


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
        self._cancelled: dict[tuple[str, str, int, int], int] = {}
        self._origin: float | None = None
        """When the first call started: minutes of the clock are counted from it, so the
        embedded provider and `moat sim-server` put the slow minutes at the same calls."""

    async def aclose(self) -> None:
        """Nothing to release."""

    def _identity(self, call: ProviderRequest) -> hashlib.blake2b:
        """What seeds the call's generators: the hash of `repr(base)` without its closing
        parenthesis, left open.

        Separate streams (`_stream`) so that, e.g., enabling faults does not reshuffle the
        answers. Each seed is the 8-byte blake2b of `repr((*base, salt))`; the text of `base`
        is written and hashed once for all of them (the repr of a tuple is its items'
        reprs, comma-separated, in parentheses), each stream hashing only its own end.
        """
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
        return hashlib.blake2b(f"{repr(base)[:-1]}, ".encode(), digest_size=8)

    @staticmethod
    def _stream(identity: hashlib.blake2b, salt: str) -> random.Random:
        """The call's generator for one purpose (`fault`, `latency` or `content`)."""
        hasher = identity.copy()
        hasher.update(f"{salt!r})".encode())
        return random.Random(int.from_bytes(hasher.digest(), "big"))

    def latency_ms(
        self, call: ProviderRequest, input_tokens: int, output_tokens: int, rng: random.Random
    ) -> tuple[float, float]:
        """(latency, time to first token) in simulated ms of one attempt of `call` started
        now (`engine.models._sim_time`)."""
        p = self.profile
        seed = (self.spec.seed, call.request.seed)
        scale = self.spec.time_scale
        clock_s = 0.0  # no simulated time passes when the models answer at once
        if scale > 0:
            now = anyio.current_time()
            if self._origin is None:
                self._origin = now
            clock_s = (now - self._origin) / scale
        shared = request_slowness(seed, call.request.id) * minute_slowness(seed, p.name, clock_s)
        return call_latency_ms(
            ttft_ms=p.ttft_ms,
            prefill_ms_per_1k=p.prefill_ms_per_1k,
            tokens_per_s=p.tokens_per_s,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            shared=shared,
            rng=rng,
        )

    def output_before_cancel(self, request_id: str, node_id: str, cycle: int, attempt: int) -> int:
        """The output tokens an attempt cancelled while it ran had generated (0 when it was
        not cancelled mid-answer); asking forgets it."""
        return self._cancelled.pop((request_id, node_id, cycle, attempt), 0)

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        """Answer one attempt, after sleeping its (scaled) simulated latency.

        Raises:
            RateLimited: an injected `rate_limit` fault.
            TransientError: an injected `error` fault.
            ProviderTimeout: an injected `timeout` fault, after hanging.
        """
        identity = self._identity(call)
        if self.spec.faults is not None:  # without faults, the fault stream is never read
            await self._maybe_fault(self._stream(identity, "fault"))
        scale = self.spec.time_scale
        begun = anyio.current_time() if scale > 0 else 0.0
        messages_text = "\n".join(m.get("content", "") for m in call.messages)
        text = self._content(call, self._stream(identity, "content"), messages_text)
        output_tokens = estimate_tokens(text)
        truncated = call.max_tokens is not None and output_tokens > call.max_tokens
        if truncated:
            text = text[: (call.max_tokens or 0) * 4]
            output_tokens = estimate_tokens(text)
        input_tokens = estimate_tokens(messages_text)
        latency_rng = self._stream(identity, "latency")
        latency, first = self.latency_ms(call, input_tokens, output_tokens, latency_rng)
        # A remote model writes its answer within its latency: the time taken here to
        # write the simulated one is part of the latency, not added to it (it would show
        # as the engine's overhead between calls). Under a mock clock none has passed.
        delay = 0.0
        if scale > 0:
            delay = latency / 1000 * scale
            spent = anyio.current_time() - begun
            if spent > 0:
                delay = max(0.0, delay - spent)
        try:
            await anyio.sleep(delay)
        except anyio.get_cancelled_exc_class():
            if scale > 0:
                elapsed_ms = (anyio.current_time() - begun) / scale * 1000
                per_token = (latency - first) / output_tokens if output_tokens else 0.0
                done = int((elapsed_ms - first) / per_token) if per_token > 0 else 0
                key = (call.request.id, call.node_id, call.cycle, call.attempt)
                self._cancelled[key] = max(0, min(output_tokens, done))
            raise
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

    def _content(self, call: ProviderRequest, rng: random.Random, messages_text: str) -> str:
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
