"""The gateway: budgets, retries, circuit breaker, egress, recording and cancellation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import (
    BudgetExceeded,
    CircuitOpen,
    EgressBlocked,
    NodeError,
    RateLimited,
    TransientError,
)
from engine.events import CallKind, CallOutcome, EventType
from engine.graph.spec import FaultRates, ModelSpec, Price
from engine.models import (
    DEFAULT_MAX_TOKENS,
    CallScope,
    Gateway,
    ProviderRequest,
    ProviderResponse,
    ProviderTimeout,
    RequestBudget,
    ResponseLost,
    SimProvider,
    find_pii,
    max_input_tokens,
    redact_text,
)
from engine.models.base import ConnectFailed
from engine.models.breaker import CircuitBreaker
from engine.plugin.context import ModelClient, RequestInfo
from tests.support.loop_probe import HOSTILE_60KB, heartbeats_during

MOCK_CLOCK = [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]


class Events:
    """Collects what the gateway emits, in the shape of `NodeContext.emit`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, **kw: Any) -> int:
        self.items.append((str(event_type), kw))
        return len(self.items)

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.items]

    def payload(self, event_type: str) -> Mapping[str, Any]:
        return next(kw["payload"] for t, kw in self.items if t == event_type)


class FakeProvider:
    """A scripted provider: each call pops the next outcome (an exception or a text)."""

    def __init__(self, *outcomes: Any, name: str = "openai", hang: bool = False) -> None:
        self.name = name
        self.outcomes = list(outcomes)
        self.seen: list[ProviderRequest] = []
        self.hang = hang
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        self.seen.append(call)
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.001)
            if self.hang:
                await anyio.sleep_forever()
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, ProviderResponse):
                return outcome
            if callable(outcome):
                result: ProviderResponse = outcome(call)
                return result
            return ProviderResponse(
                text=str(outcome), provider_model="fake-1", input_tokens=100, output_tokens=50
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        pass


def _info(rid: str = "r1") -> RequestInfo:
    return RequestInfo(id=rid, run_id="run", seq=0, tenant="t", input={"prompt": "hi"})


def _scope(**kw: Any) -> CallScope:
    return CallScope(request=_info(), node_id="answer", **kw)


def _sim(profile: str = "small", **kw: Any) -> ModelSpec:
    return ModelSpec(provider="sim", profile=profile, time_scale=0, **kw)  # type: ignore[arg-type]


REMOTE = ModelSpec(
    provider="openai", model="fake", base_url="http://unused", price=Price(input=1, output=2)
)


@pytest.mark.anyio
async def test_a_call_returns_a_completion_and_records_one_llm_call() -> None:
    scope = _scope()
    async with Gateway({"small": _sim()}) as gateway:
        client: ModelClient = gateway.client("small", scope)
        result = await client.complete(prompt="Hello", system="Be brief", task="answer")
    assert result.model == "small" and result.provider == "sim" and result.simulated
    assert result.provider_model == "sim-small" and result.cost_usd > 0
    [call] = scope.calls
    assert (call.status, call.model, call.node, call.provider) == ("ok", "small", "answer", "sim")
    assert call.call_kind is CallKind.NORMAL and call.call_outcome is CallOutcome.USED
    assert call.cost_usd == result.cost_usd and call.latency_ms == result.latency_ms
    assert len(call.prompt_hash) == 16 and call.prompt_text is None and call.response_text is None


@pytest.mark.anyio
async def test_json_is_parsed_when_structured_output_was_asked_for() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    async with Gateway({"m": _sim("large", faults=FaultRates(malformed=0))}) as gateway:
        result = await gateway.client("m", _scope()).complete(prompt="n?", schema=schema)
        text = await gateway.client("m", _scope()).complete(prompt="n?")
    assert isinstance(result.json, dict) and "n" in result.json
    assert text.json is None


@pytest.mark.anyio
async def test_speculative_calls_are_recorded_as_speculative_with_no_outcome_yet() -> None:
    scope = _scope(speculative=True)
    async with Gateway({"m": _sim()}) as gateway:
        await gateway.client("m", scope).complete(prompt="x")
    assert scope.calls[0].call_kind is CallKind.SPECULATIVE
    assert scope.calls[0].call_outcome is CallOutcome.NONE


@pytest.mark.anyio
async def test_unknown_models_are_refused_with_the_known_names() -> None:
    async with Gateway({"small": _sim(), "large": _sim("large")}) as gateway:
        with pytest.raises(NodeError, match=r"node 'answer': unknown model 'huge'.*large, small"):
            gateway.client("huge", _scope())


@pytest.mark.anyio
async def test_a_call_needs_a_prompt_or_messages() -> None:
    async with Gateway({"m": _sim()}) as gateway:
        with pytest.raises(NodeError, match="needs `prompt=` or `messages=`"):
            await gateway.client("m", _scope()).complete(system="only a system message")


def test_the_package_exports_a_sorted_all() -> None:
    import engine.models

    assert engine.models.__all__ == sorted(set(engine.models.__all__))
    assert all(hasattr(engine.models, name) for name in engine.models.__all__)


def test_budget_reservations_count_until_settled() -> None:
    budget = RequestBudget(1.0)
    held = budget.reserve(0.6)
    assert budget.remaining_usd == pytest.approx(0.4)
    with pytest.raises(BudgetExceeded, match=r"does not fit in the \$0.400000 left"):
        budget.reserve(0.5)
    budget.settle(held, 0.1)
    assert budget.spent_usd == pytest.approx(0.1) and budget.remaining_usd == pytest.approx(0.9)
    budget.settle(held, 5.0)  # settling twice changes nothing
    assert budget.spent_usd == pytest.approx(0.1)
    assert RequestBudget().remaining_usd is None


@pytest.mark.anyio
async def test_fifty_concurrent_calls_never_push_spend_past_a_budget_for_ten() -> None:
    gateway = Gateway({"m": _sim("large")})
    per_call = gateway.estimate_cost("m", input_tokens=20, max_tokens=200)
    budget = RequestBudget(per_call * 10.5)
    events = Events()
    scopes = [
        CallScope(request=_info(), node_id=f"n{i}", budget=budget, emit=events) for i in range(50)
    ]
    outcomes: list[str] = []

    async def one(scope: CallScope) -> None:
        try:
            await gateway.client("m", scope).complete(prompt="Tell me about tides", max_tokens=200)
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("refused")

    async with gateway, anyio.create_task_group() as tg:
        for scope in scopes:
            tg.start_soon(one, scope)
    calls = [c for s in scopes for c in s.calls]
    assert budget.spent_usd <= budget.limit_usd  # type: ignore[operator]
    assert sum(c.cost_usd for c in calls) == pytest.approx(budget.spent_usd)
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 40
    assert sum(c.status == "refused" for c in calls) == 40
    assert events.types.count(EventType.BUDGET_COST_EXCEEDED) == 40
    payload = events.payload(EventType.BUDGET_COST_EXCEEDED)
    assert payload["estimate"] > payload["remaining"] and payload["budget"] == "request"


@pytest.mark.anyio
async def test_the_run_budget_caps_all_requests_together() -> None:
    async with Gateway({"m": _sim()}, run_budget_usd=0.0) as gateway:
        with pytest.raises(BudgetExceeded, match="run budget"):
            await gateway.client("m", _scope()).complete(prompt="x")
        assert gateway.run_budget.spent_usd == 0


@pytest.mark.anyio
async def test_transient_failures_are_retried_then_reported_with_every_attempt() -> None:
    scope = _scope()
    async with Gateway({"m": _sim(faults=FaultRates(error=1.0), max_retries=2)}) as gateway:
        with pytest.raises(TransientError, match=r"node 'answer'.*500.*after 3 attempts"):
            await gateway.client("m", scope).complete(prompt="x")
    assert [c.status for c in scope.calls] == ["error", "error", "error"]
    assert all(c.cost_usd == 0 and c.input_tokens == 0 for c in scope.calls)


@pytest.mark.anyio
async def test_a_retry_that_succeeds_returns_the_answer() -> None:
    provider = FakeProvider(
        TransientError("boom"), RateLimited("slow down", retry_after_s=0.0), "fine"
    )
    scope = _scope()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        result = await gateway.client("m", scope).complete(prompt="x")
    assert result.text == "fine"
    assert [c.status for c in scope.calls] == ["error", "error", "ok"]
    assert [c.attempt for c in provider.seen] == [0, 1, 2]
    # only the answer was used: the failed attempts gave nothing to use
    assert [c.call_outcome for c in scope.calls] == ["none", "none", "used"]


@pytest.mark.anyio
async def test_client_errors_are_not_retried() -> None:
    provider = FakeProvider(NodeError("bad request"), "never")
    scope = _scope()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        with pytest.raises(NodeError, match="bad request"):
            await gateway.client("m", scope).complete(prompt="x")
    assert len(scope.calls) == 1


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_retries_wait_at_least_the_retry_after() -> None:
    provider = FakeProvider(RateLimited("429", retry_after_s=20.0), "ok")
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        start = anyio.current_time()
        await gateway.client("m", _scope()).complete(prompt="x")
    assert anyio.current_time() - start >= 20.0


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_retries_never_sleep_past_the_deadline() -> None:
    provider = FakeProvider(RateLimited("429", retry_after_s=20.0), "ok")
    scope = _scope(deadline=anyio.current_time() + 5.0)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        with pytest.raises(RateLimited, match="after 1 attempt"):
            await gateway.client("m", scope).complete(prompt="x")
    assert anyio.current_time() < scope.deadline  # type: ignore[operator]
    assert len(scope.calls) == 1


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_hanging_model_times_out_per_attempt() -> None:
    spec = ModelSpec(
        provider="sim",
        profile="small",
        timeout_s=2.0,
        max_retries=1,
        faults=FaultRates(timeout=1.0),
    )
    scope = _scope()
    async with Gateway({"m": spec}) as gateway:
        with pytest.raises(TransientError, match="timeout"):
            await gateway.client("m", scope).complete(prompt="x")
    assert [c.status for c in scope.calls] == ["timeout", "timeout"]
    assert all(c.latency_ms == pytest.approx(2000, abs=1) for c in scope.calls)


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_the_circuit_breaker_opens_half_opens_and_closes() -> None:
    failures = [TransientError(f"down {i}") for i in range(3)]
    provider = FakeProvider(*failures, "back")
    spec = REMOTE.model_copy(update={"max_retries": 0})
    events = Events()
    gateway = Gateway(
        {"m": spec}, providers={"m": provider}, breaker_threshold=3, breaker_cooldown_s=30
    )
    async with gateway:
        for _ in range(3):
            with pytest.raises(TransientError):
                await gateway.client("m", _scope(emit=events)).complete(prompt="x")
        assert events.types == [EventType.CIRCUIT_OPENED]
        refused = _scope(emit=events)
        with pytest.raises(CircuitOpen, match=r"model 'm': circuit breaker is open .*retry in"):
            await gateway.client("m", refused).complete(prompt="x")
        assert refused.calls[0].status == "refused" and provider.started == 3
        await anyio.sleep(30)
        result = await gateway.client("m", _scope(emit=events)).complete(prompt="x")
    assert result.text == "back"
    assert events.types == [
        EventType.CIRCUIT_OPENED,
        EventType.CIRCUIT_HALF_OPEN,
        EventType.CIRCUIT_CLOSED,
    ]


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_an_open_breaker_says_what_the_last_failure_was() -> None:
    failures = [
        ConnectFailed("model 'fake' at http://10.0.0.9/v1: could not connect (timed out)"),
        ConnectFailed("model 'fake' at http://10.0.0.9/v1: could not connect (connection refused)"),
    ]
    provider = FakeProvider(*failures)
    spec = REMOTE.model_copy(update={"max_retries": 0})
    gateway = Gateway({"m": spec}, providers={"m": provider}, breaker_threshold=2)
    async with gateway:
        for _ in failures:
            with pytest.raises(ConnectFailed):
                await gateway.client("m", _scope()).complete(prompt="x")
        refused = _scope()
        with pytest.raises(CircuitOpen) as caught:
            await gateway.client("m", refused).complete(prompt="x")
    assert str(caught.value) == (
        "model 'm': circuit breaker is open after 2 consecutive failures (retry in 30.0 s); "
        "last: model 'fake' at http://10.0.0.9/v1: could not connect (connection refused); "
        "check the provider, or route to another model"
    )
    assert refused.calls[0].error == str(caught.value)


def test_a_success_clears_the_failure_an_open_breaker_would_name() -> None:
    breaker = CircuitBreaker("m", threshold=2)
    breaker.on_failure("x" * 1000)
    assert breaker.last_failure == "x" * 300 + "..."  # a long message is cut
    breaker.on_success()
    assert breaker.last_failure is None


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_failed_probe_opens_the_breaker_again() -> None:
    provider = FakeProvider(TransientError("down"), TransientError("still down"))
    spec = REMOTE.model_copy(update={"max_retries": 0})
    events = Events()
    async with Gateway(
        {"m": spec}, providers={"m": provider}, breaker_threshold=1, breaker_cooldown_s=5
    ) as g:
        with pytest.raises(TransientError):
            await g.client("m", _scope(emit=events)).complete(prompt="x")
        await anyio.sleep(5)
        with pytest.raises(TransientError):
            await g.client("m", _scope(emit=events)).complete(prompt="x")
        with pytest.raises(CircuitOpen):
            await g.client("m", _scope(emit=events)).complete(prompt="x")
    assert events.types == [
        EventType.CIRCUIT_OPENED,
        EventType.CIRCUIT_HALF_OPEN,
        EventType.CIRCUIT_OPENED,
    ]


@pytest.mark.anyio
async def test_concurrency_per_model_is_limited() -> None:
    provider = FakeProvider()
    spec = REMOTE.model_copy(update={"max_concurrency": 3})
    async with (
        Gateway({"m": spec}, providers={"m": provider}) as gateway,
        anyio.create_task_group() as tg,
    ):
        for _ in range(12):
            tg.start_soon(lambda: gateway.client("m", _scope()).complete(prompt="x"))
    assert provider.started == 12 and provider.max_in_flight == 3


@pytest.mark.anyio
async def test_a_call_cancelled_mid_flight_is_recorded_as_cancelled() -> None:
    provider = FakeProvider(hang=True)
    scope = _scope()
    gateway = Gateway({"m": REMOTE}, providers={"m": provider})
    async with gateway, anyio.create_task_group() as tg:
        tg.start_soon(lambda: gateway.client("m", scope).complete(prompt="x"))
        while provider.in_flight == 0:
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    [call] = scope.calls
    assert call.status == "cancelled" and call.cost_usd > 0  # the prompt may have been billed
    assert provider.in_flight == 0


def test_redact_text_replaces_each_kind_of_personal_data() -> None:
    text = (
        "Mail jane.doe@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111; "
        "IBAN GB82 WEST 1234 5698 7654 32; host 192.168.10.4; key sk-abcdefghijklmnop1234."
    )
    redacted, counts = redact_text(text)
    assert counts == {"EMAIL": 1, "PHONE": 1, "CARD": 1, "IBAN": 1, "IP": 1, "SECRET": 1}
    for secret in ("jane.doe", "7946", "4111", "GB82", "192.168", "sk-abc"):
        assert secret not in redacted


def test_numbers_that_fail_the_luhn_check_are_not_cards() -> None:
    assert "CARD" not in find_pii("order 4111 1111 1111 1112 shipped")


@pytest.mark.anyio
async def test_remote_prompts_are_redacted_when_the_policy_asks() -> None:
    provider = FakeProvider()
    events = Events()
    scope = _scope(policy={"egress": {"redact": True}}, emit=events)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        await gateway.client("m", scope).complete(prompt="Reply to bob@example.com", system="Hi")
    assert provider.seen[0].messages[-1]["content"] == "Reply to [EMAIL]"
    assert events.types == [EventType.PII_REDACTED]
    assert events.payload(EventType.PII_REDACTED)["found"] == {"EMAIL": 1}


@pytest.mark.anyio
async def test_local_models_get_the_text_unredacted() -> None:
    events = Events()
    scope = _scope(policy={"egress": {"redact": True, "allow_unredacted": False}}, emit=events)
    async with Gateway({"m": _sim()}) as gateway:
        await gateway.client("m", scope).complete(prompt="Reply to bob@example.com")
    assert events.types == []


@pytest.mark.anyio
async def test_unredacted_personal_data_is_blocked_when_the_policy_forbids_it() -> None:
    provider = FakeProvider()
    events = Events()
    scope = _scope(policy={"egress": {"allow_unredacted": False}}, emit=events)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        with pytest.raises(EgressBlocked, match=r"EMAIL x1.*egress.redact: true"):
            await gateway.client("m", scope).complete(prompt="Reply to bob@example.com")
        await gateway.client("m", scope).complete(prompt="Nothing personal here")
    assert provider.started == 1
    assert events.types == [EventType.EGRESS_BLOCKED]
    assert [c.status for c in scope.calls] == ["refused", "ok"]
    assert scope.calls[0].related_event_id == 1


@pytest.mark.parametrize(
    ("store", "prompt_text", "response_text"),
    [
        (None, None, None),
        ("redacted", "user: mail [EMAIL]", "ok"),
        ("full", "user: mail a@b.co", "ok"),
    ],
)
@pytest.mark.anyio
async def test_prompt_text_is_stored_only_as_the_policy_allows(
    store: str | None, prompt_text: str | None, response_text: str | None
) -> None:
    scope = _scope(policy={"store_text": store} if store else {})
    async with Gateway({"m": REMOTE}, providers={"m": FakeProvider()}) as gateway:
        await gateway.client("m", scope).complete(prompt="mail a@b.co")
    assert scope.calls[0].prompt_text == prompt_text
    assert scope.calls[0].response_text == response_text


# -- budget rules on endpoints whose tokenizer and billing are unknown ------------------


def _bill_worst_case(call: ProviderRequest) -> ProviderResponse:
    """A compliant endpoint at its most expensive: one token per UTF-8 byte of every role and
    content plus OpenAI's chat framing, and exactly the output limit it was sent."""
    framing = 3 + 3 * len(call.messages)
    size = sum(len((m["role"] + m["content"]).encode()) for m in call.messages)
    assert call.max_tokens is not None, "the gateway always sends an output limit"
    return ProviderResponse(
        text="x",
        provider_model="fake-1",
        input_tokens=framing + size,
        output_tokens=call.max_tokens,
    )


def _reserved(gateway: Gateway, call: ProviderRequest) -> float:
    bound = max_input_tokens(call.messages, call.schema)
    return gateway.estimate_cost("m", bound, call.max_tokens)


@pytest.mark.parametrize("max_tokens", [None, 1, 300])
@pytest.mark.anyio
async def test_the_output_limit_reserved_for_is_the_one_sent(max_tokens: int | None) -> None:
    provider = FakeProvider(_bill_worst_case)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        await gateway.client("m", _scope()).complete(prompt="x", max_tokens=max_tokens)
    assert provider.seen[0].max_tokens == (max_tokens or DEFAULT_MAX_TOKENS)


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=400),  # any script, lone surrogates included
    system=st.none() | st.text(max_size=100),
    max_tokens=st.none() | st.integers(1, 4000),
)
def test_a_compliant_endpoint_never_bills_past_the_reservation_in_any_script(
    prompt: str, system: str | None, max_tokens: int | None
) -> None:
    async def main() -> None:
        events = Events()
        scope = _scope(emit=events)
        provider = FakeProvider(_bill_worst_case)
        async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
            await gateway.client("m", scope).complete(
                prompt=prompt, system=system, max_tokens=max_tokens
            )
            assert scope.calls[0].cost_usd <= _reserved(gateway, provider.seen[0])
        assert events.types == [] and gateway.overrun_factor == {}

    anyio.run(main)


@pytest.mark.anyio
async def test_an_answer_without_usage_is_charged_its_reservation() -> None:
    no_usage = ProviderResponse(
        text="hi", provider_model="fake-1", input_tokens=0, output_tokens=0, usage_reported=False
    )
    provider = FakeProvider(no_usage)
    scope = _scope()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        result = await gateway.client("m", scope).complete(prompt="Привет, мир", max_tokens=80)
        reserved = _reserved(gateway, provider.seen[0])
    assert result.cost_usd == pytest.approx(reserved) and scope.calls[0].cost_usd == result.cost_usd
    assert scope.calls[0].output_tokens == 80


@pytest.mark.anyio
async def test_an_attempt_lost_after_sending_is_charged_its_reservation_and_retried() -> None:
    provider = FakeProvider(ResponseLost("reset"), TransientError("502"), _bill_worst_case)
    scope = _scope()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        await gateway.client("m", scope).complete(prompt="x", max_tokens=10)
        reserved = _reserved(gateway, provider.seen[0])
    lost, failed, ok = scope.calls
    assert (lost.status, lost.cost_usd) == ("error", pytest.approx(reserved))
    assert (failed.status, failed.cost_usd) == ("error", 0)  # an error answer is not billed
    assert ok.status == "ok" and 0 < ok.cost_usd < reserved


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_timed_out_or_cancelled_remote_attempt_is_charged_its_reservation() -> None:
    spec = REMOTE.model_copy(update={"timeout_s": 2.0, "max_retries": 0})
    provider = FakeProvider(hang=True)
    timed_out, cancelled = _scope(), _scope()
    async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
        with pytest.raises(ProviderTimeout):
            await gateway.client("m", timed_out).complete(prompt="x", max_tokens=10)
        with anyio.move_on_after(1.0):
            await gateway.client("m", cancelled).complete(prompt="x", max_tokens=10)
        reserved = _reserved(gateway, provider.seen[0])
    assert timed_out.calls[0].status == "timeout" and cancelled.calls[0].status == "cancelled"
    assert timed_out.calls[0].cost_usd == pytest.approx(reserved)
    assert cancelled.calls[0].cost_usd == pytest.approx(reserved)


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_sim_call_cut_off_by_its_timeout_is_charged_what_it_generated_like_a_cancel() -> (
    None
):
    """`timeout_s` cancels the simulated answer mid-decode: its prompt and the tokens
    generated by then were spent, as when the caller cancels it, and the provider keeps no
    note of the call once it is charged."""
    spec = ModelSpec(provider="sim", profile="large", max_retries=0)
    prompt = "Explain the causes of the tides in detail."
    async with Gateway({"m": spec}) as gateway:
        whole = await gateway.client("m", _scope()).complete(prompt=prompt, max_tokens=400)
        half = whole.latency_ms / 2000  # halfway through the answer's decode
        timed_out, cancelled = _scope(), _scope()
        cut = {"m": spec.model_copy(update={"timeout_s": half})}
        async with Gateway(cut) as cutting:
            with pytest.raises(ProviderTimeout, match=r"no answer within timeout_s="):
                await cutting.client("m", timed_out).complete(prompt=prompt, max_tokens=400)
            provider = cutting._providers["m"]
            assert isinstance(provider, SimProvider)
            assert provider.output_before_cancel("r1", "answer", 0, 0) == 0  # charged, forgotten
        async with Gateway({"m": spec}) as gateway:
            with anyio.move_on_after(half):
                await gateway.client("m", cancelled).complete(prompt=prompt, max_tokens=400)
    [cut_call], [cancelled_call] = timed_out.calls, cancelled.calls
    assert (cut_call.status, cancelled_call.status) == ("timeout", "cancelled")
    assert 0 < cut_call.output_tokens < whole.output_tokens
    assert (cut_call.output_tokens, cut_call.cost_usd) == (
        cancelled_call.output_tokens,
        pytest.approx(cancelled_call.cost_usd),
    )
    price = gateway.price("m")
    assert cut_call.cost_usd == pytest.approx(
        (cut_call.input_tokens * price.input + cut_call.output_tokens * price.output) / 1e6
    )


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_each_retry_reserves_again_so_retries_cannot_overspend() -> None:
    spec = REMOTE.model_copy(update={"timeout_s": 2.0, "max_retries": 3})
    provider = FakeProvider(hang=True)
    async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
        one = gateway.estimate_cost("m", max_input_tokens([{"role": "user", "content": "x"}]), 10)
        budget = RequestBudget(one * 2.5)
        scope = _scope(budget=budget)
        with pytest.raises(BudgetExceeded):
            await gateway.client("m", scope).complete(prompt="x", max_tokens=10)
    assert [c.status for c in scope.calls] == ["timeout", "timeout", "refused"]
    assert budget.spent_usd == pytest.approx(2 * one) and budget.spent_usd <= budget.limit_usd  # type: ignore[operator]


@pytest.mark.anyio
async def test_an_endpoint_billing_past_its_limit_is_charged_recorded_and_reserved_for() -> None:
    def overrun(call: ProviderRequest) -> ProviderResponse:
        billed = _bill_worst_case(call)
        return ProviderResponse(
            text="x",
            provider_model="fake-1",
            input_tokens=billed.input_tokens,
            output_tokens=3 * billed.output_tokens,
        )

    provider = FakeProvider(overrun, overrun)
    events = Events()
    scope = _scope(emit=events)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        before = gateway.estimate_cost("m", 100, 100)
        await gateway.client("m", scope).complete(prompt="x", max_tokens=100)
        reserved = _reserved(gateway, provider.seen[0]) / gateway.overrun_factor["m"]
        after = gateway.estimate_cost("m", 100, 100)
        await gateway.client("m", scope).complete(prompt="x", max_tokens=100)
    first, second = scope.calls
    assert first.output_tokens == 300 and first.cost_usd > reserved  # charged what was billed
    assert events.types == [EventType.BUDGET_COST_EXCEEDED]  # once: then it was reserved for
    payload = events.payload(EventType.BUDGET_COST_EXCEEDED)
    assert payload["charged"] == pytest.approx(first.cost_usd)
    assert payload["reserved"] == pytest.approx(reserved)
    assert first.related_event_id == 1 and second.related_event_id is None
    assert after == pytest.approx(before * first.cost_usd / reserved)


@pytest.mark.anyio
async def test_lone_surrogates_from_json_input_become_replacement_characters() -> None:
    provider = FakeProvider()
    async with Gateway({"m": REMOTE, "s": _sim()}, providers={"m": provider}) as gateway:
        await gateway.client("m", _scope()).complete(prompt="a \ud800 b", system="\udfff")
        sim = await gateway.client("s", _scope()).complete(prompt="x \ud83d\ude00 \ud800")
    assert [m["content"] for m in provider.seen[0].messages] == ["\ufffd", "a \ufffd b"]
    assert sim.text


@pytest.mark.anyio
async def test_redacting_a_long_remote_prompt_leaves_the_event_loop_free() -> None:
    provider = FakeProvider()
    scope = _scope(policy={"egress": {"redact": True}}, emit=Events())
    prompt = HOSTILE_60KB + " reply to bob@example.com"
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        ticks = await heartbeats_during(lambda: gateway.client("m", scope).complete(prompt=prompt))
    assert provider.seen[0].messages[-1]["content"].endswith("reply to [EMAIL]")
    assert ticks >= 5
