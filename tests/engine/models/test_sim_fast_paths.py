"""The sim's cheaper paths give exactly what the plain computations they replace give.

Simulated answers must not change for the same seed when the sim gets faster: each fast
path here is compared with the straightforward computation it stands for.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from statistics import NormalDist
from typing import Any

import anyio
import pytest
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from engine.graph.spec import ModelSpec
from engine.models import ProviderRequest, SimProvider
from engine.models._sim_call import locate_request
from engine.models._sim_model import STRONG_CUES, WEAK_CUES, harm_cue, latents
from engine.models._sim_solve import solve
from engine.models._sim_tasks import _topic, find_draft
from engine.models._sim_time import (
    REQUEST_SIGMA,
    REQUEST_TAIL,
    REQUEST_TAIL_RATE,
    SLOW_MINUTE,
    SLOW_MINUTE_RATE,
    minute_slowness,
    request_slowness,
)
from engine.plugin.context import RequestInfo

_CUE_WORDS = [*STRONG_CUES, *WEAK_CUES, "bombastic", "skill", "gunther", "a", "the", "dose"]
_texts = st.lists(
    st.one_of(st.sampled_from(_CUE_WORDS), st.text(alphabet="abcdeKILL -.,'\n", max_size=6)),
    max_size=6,
).map(" ".join)


def _plain_harm_cue(request_text: str) -> tuple[float, str | None]:
    lowered = request_text.lower()
    for word, category in STRONG_CUES.items():
        if re.search(rf"\b{word}", lowered):
            return 1.0, category
    if any(re.search(rf"\b{re.escape(cue)}", lowered) for cue in WEAK_CUES):
        return 0.5, None
    return 0.0, None


@given(_texts)
def test_harm_cue_matches_trying_each_cue_in_turn(text: str) -> None:
    assert harm_cue(text) == _plain_harm_cue(text)
    assert harm_cue(text) == _plain_harm_cue(text)  # and again, from the kept answers


@given(
    _texts,
    st.dictionaries(
        st.sampled_from(["difficulty", "kind", "category", "variant", "answer"]),
        st.sampled_from([0, 1, 0.25, "x", "y"]),
        max_size=3,
    ),
    st.one_of(st.integers(0, 5), st.just(1.0)),
)
def test_latents_kept_are_the_latents_computed(
    text: str, labels: dict[str, Any], seed: Any
) -> None:
    first = latents(labels, text, seed)
    assert latents(dict(labels), text, seed) == first
    # a seed equal to another of another type is another seed (its text differs)
    other = latents(labels, text, float(seed) if isinstance(seed, int) else int(seed))
    assert other.key != first.key


def _call(text: str, **kw: Any) -> ProviderRequest:
    info = RequestInfo(
        id="r1", run_id="run", seq=0, tenant="t", input={"prompt": text}, labels={}, seed=3
    )
    return ProviderRequest(
        model="m",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": text}],
        request=info,
        node_id="n",
        cycle=kw.pop("cycle", 1),
        attempt=kw.pop("attempt", 0),
        **kw,
    )


@given(st.text(max_size=40), st.sampled_from([None, "risk", "answer"]), st.integers(0, 3))
def test_each_stream_is_seeded_from_the_hash_of_its_whole_identity(
    text: str, task: str | None, attempt: int
) -> None:
    sim = SimProvider(ModelSpec(provider="sim", profile="small", time_scale=0, seed=7))
    call = _call(text, task=task, attempt=attempt)
    prompt = "\n".join(f"{m.get('role')}:{m.get('content')}" for m in call.messages)
    base = (7, 3, "r1", "n", 1, attempt, "small", task, hashlib.sha256(prompt.encode()).hexdigest())
    identity = sim._identity(call)
    for salt in ("fault", "latency", "content"):
        digest = hashlib.blake2b(repr((*base, salt)).encode(), digest_size=8).digest()
        expected = random.Random(int.from_bytes(digest, "big"))
        assert sim._stream(identity, salt).random() == expected.random()


def test_the_request_is_found_again_in_later_calls() -> None:
    messages = [{"role": "user", "content": "Request: mail [EMAIL] now\nthanks"}]
    data = {"prompt": "mail bob@example.com now"}
    first = locate_request(messages, data)
    assert first == (0, 9, 25)
    assert locate_request(messages, data) == first


_CLOCK = trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.parametrize("anyio_backend", [("trio", {"clock": _CLOCK})])
@pytest.mark.anyio
async def test_writing_the_answer_is_part_of_the_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(provider="sim", profile="large", time_scale=1.0)
    plain = SimProvider._content

    def slow_content(
        self: SimProvider, call: ProviderRequest, rng: random.Random, messages_text: str
    ) -> str:
        _CLOCK.jump(0.2)  # 200 ms spent writing the answer
        return plain(self, call, rng, messages_text)

    monkeypatch.setattr(SimProvider, "_content", slow_content)
    start = anyio.current_time()
    answer = await SimProvider(spec).complete(_call("Explain tides", task="answer"))
    elapsed_ms = (anyio.current_time() - start) * 1000
    assert answer.latency_ms > 200
    assert elapsed_ms == pytest.approx(answer.latency_ms, abs=1e-3)  # not 200 ms more


def _plain_unit(*parts: Any) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


_seeds = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([1.0, True, "1"]),
    st.tuples(st.integers(0, 3), st.one_of(st.integers(0, 3), st.just(1.0))),
)


@given(_seeds, st.text(max_size=8), st.floats(0, 10_000))
def test_kept_slowness_is_the_slowness_computed(seed: Any, request_id: str, clock_s: float) -> None:
    normal = NormalDist()
    slow = math.exp(REQUEST_SIGMA * normal.inv_cdf(_plain_unit("request-slow", seed, request_id)))
    if _plain_unit("request-tail", seed, request_id) < REQUEST_TAIL_RATE:
        lo, hi = REQUEST_TAIL
        slow *= lo + (hi - lo) * _plain_unit("request-tail-size", seed, request_id)
    assert request_slowness(seed, request_id) == slow
    minute = math.floor(clock_s / 60.0)
    minute_factor = 1.0
    if _plain_unit("slow-minute", seed, "small", minute) < SLOW_MINUTE_RATE:
        lo, hi = SLOW_MINUTE
        minute_factor = lo + (hi - lo) * _plain_unit("slow-minute-size", seed, "small", minute)
    assert minute_slowness(seed, "small", clock_s) == minute_factor


@given(st.lists(st.sampled_from(["<draft>", "</draft>", "Answer: 4", "\n", "x", "<", "Draft:"])))
def test_kept_drafts_and_solutions_are_the_ones_computed(parts: list[str]) -> None:
    prompt = "".join(parts)
    assert find_draft(prompt) == find_draft.__wrapped__(prompt)
    assert find_draft(prompt) == find_draft.__wrapped__(prompt)  # and again, from the kept one
    question = f"What is 12 * 3 + 4? {prompt}"
    assert solve(question) == solve.__wrapped__(question)


_WORDS = ["How", "do", "I", "x-ray", "don't", "the", "Paris", " ", "?", "7"]


@given(st.lists(st.sampled_from(_WORDS)))
def test_kept_topics_are_the_topics_computed(words: list[str]) -> None:
    text = " ".join(words)
    assert _topic(text) == _topic.__wrapped__(text)
    assert _topic(text) == _topic.__wrapped__(text)  # and again, from the kept one


def test_kept_topics_are_bounded() -> None:
    for i in range(1100):
        _topic(f"How do I manage invoices for team {i}?")
    kept = _topic.cache_info()
    assert kept.currsize == kept.maxsize == 1024
