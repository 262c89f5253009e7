"""The model gateway: the one path every model call takes from a node to a provider.

For each call it redacts (or blocks) personal data bound for remote models when the
policy asks, reserves the worst-case cost against the request's and the run's budgets,
waits for a slot under the model's concurrency limit, asks the model's circuit breaker,
calls the provider with a per-attempt timeout, retries transient failures with
exponential backoff and full jitter (honouring Retry-After, never past the request's
deadline), settles the budget with the actual cost and appends one `LlmCall` per attempt
to the node run's `CallScope.calls`, cancelled attempts included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.context import Completion, ModelClient, RequestInfo
from engine.errors import (
    BudgetExceeded,
    CircuitOpen,
    EgressBlocked,
    NodeError,
    RateLimited,
    TransientError,
)
from engine.events import CacheStatus, CallKind, CallOutcome, EventType, LlmCall, now
from engine.models._egress import egress_off_loop, redact_text
from engine.models.base import Provider, ProviderRequest, ProviderResponse, ProviderTimeout
from engine.models.base import estimate_tokens as _estimate_tokens
from engine.models.breaker import CircuitBreaker
from engine.models.budget import RequestBudget, Reservation
from engine.models.sim import SimProvider, sim_profile
from engine.spec import ModelSpec, Price

__all__ = ["DEFAULT_MAX_TOKENS", "CallScope", "Emit", "Gateway"]

DEFAULT_MAX_TOKENS = 1024
"""The answer length assumed for the worst-case cost when a call sets no `max_tokens`."""
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
_MESSAGE_OVERHEAD_TOKENS = 4
_REMOTE_TOKEN_MARGIN = 1.25
"""Real tokenizers can count more than 4 characters per token: reserve with a margin."""

Emit = Callable[..., int]
"""`(event_type, *, decision=, reason_codes=, inputs=, outputs=, payload=, duration_ms=) -> int`,
the shape of `NodeContext.emit`; returns the event's sequence number."""


def _no_emit(event_type: str, **_: Any) -> int:
    return 0


@dataclass(slots=True)
class CallScope:
    """Who is calling: one node run of one request (built by the scheduler per node run).

    Attributes:
        request: the request the node runs for.
        node_id: the calling node.
        cycle: the loop cycle (0 outside loops).
        speculative: whether the node run started speculatively (calls are recorded as
            `speculative`, with outcome `none` until the scheduler knows it).
        budget: the request's cost budget.
        policy: the pinned policy snapshot (`egress.redact`, `egress.allow_unredacted`,
            `store_text`).
        emit: records an orchestration event for the node (`NodeContext.emit`'s shape).
        calls: the gateway appends one `LlmCall` per attempt here; the scheduler sends
            them to the sink with their final outcome.
        deadline: the request's hard deadline on the `anyio.current_time()` clock;
            retries never sleep past it.
    """

    request: RequestInfo
    node_id: str
    cycle: int = 0
    speculative: bool = False
    budget: RequestBudget = field(default_factory=RequestBudget)
    policy: Mapping[str, Any] = field(default_factory=dict)
    emit: Emit = _no_emit
    calls: list[LlmCall] = field(default_factory=list)
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class _Call:
    messages: Sequence[Mapping[str, str]]
    schema: Mapping[str, Any] | None
    json_mode: bool
    task: str | None
    max_tokens: int | None
    temperature: float | None


@dataclass(slots=True)
class _Attempt:
    """Bookkeeping of one attempt, turned into an `LlmCall` however the attempt ends."""

    prompt_text: str
    prompt_hash: str
    input_tokens: int
    started_at: float = field(default_factory=now)
    clock: float | None = None
    status: str = "error"
    error: str | None = None
    response: ProviderResponse | None = None
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    related_event_id: int | None = None


class _GatewayClient:
    """A logical model bound to one node run (implements `engine.context.ModelClient`)."""

    def __init__(self, gateway: Gateway, name: str, scope: CallScope) -> None:
        self.name = name
        self.spec = gateway.spec(name)
        self._gateway = gateway
        self._scope = scope

    async def complete(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        system: str | None = None,
        schema: Mapping[str, Any] | None = None,
        json_mode: bool = False,
        task: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """Make one call through the gateway (see `engine.context.ModelClient.complete`)."""
        chat = _messages(prompt, messages, system, self._scope)
        call = _Call(chat, schema, json_mode, task, max_tokens, temperature)
        return await self._gateway._complete(self.name, self._scope, call)

    def __repr__(self) -> str:
        return f"<ModelClient {self.name!r} node={self._scope.node_id!r}>"


def _messages(
    prompt: str | None,
    messages: Sequence[Mapping[str, str]] | None,
    system: str | None,
    scope: CallScope,
) -> list[dict[str, str]]:
    chat: list[dict[str, str]] = []
    if system:
        chat.append({"role": "system", "content": system})
    for m in messages or ():
        chat.append({"role": str(m.get("role", "user")), "content": str(m.get("content", ""))})
    if prompt is not None:
        chat.append({"role": "user", "content": prompt})
    if not any(m["role"] != "system" for m in chat):
        raise NodeError(
            "a model call needs `prompt=` or `messages=` (got neither)",
            node_id=scope.node_id,
            request_id=scope.request.id,
        )
    return chat


def _prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def _located(exc: NodeError, scope: CallScope, attempts: int) -> NodeError:
    """The same error, tagged with the node and request, saying how many attempts ran."""
    reason = f"{exc.reason} (after {attempts} attempt{'s' if attempts != 1 else ''})"
    ids: dict[str, Any] = {"node_id": scope.node_id, "request_id": scope.request.id}
    if isinstance(exc, RateLimited):
        return RateLimited(reason, retry_after_s=exc.retry_after_s, **ids)
    try:
        return type(exc)(reason, **ids)
    except TypeError:
        return exc


class Gateway:
    """Every model call of a run goes through here (DESIGN.md section 6).

    Args:
        models: the graph's logical models by name.
        run_budget_usd: dollars the whole run may spend (None: no run-level limit).
        providers: providers to use instead of building them from the specs (tests inject
            fakes, or an `OpenAIProvider` with extra headers, here).
        breaker_threshold: consecutive transient failures that open a model's breaker.
        breaker_cooldown_s: seconds an open breaker waits before letting a probe through.
        default_max_tokens: answer length assumed by the worst-case cost estimate when a
            call sets no `max_tokens`.
    """

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        run_budget_usd: float | None = None,
        providers: Mapping[str, Provider] | None = None,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self._specs = dict(models)
        self._providers: dict[str, Provider] = dict(providers or {})
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self.run_budget = RequestBudget(run_budget_usd, label="run")
        """Spend of the whole run (limited when `run_budget_usd` was given)."""
        self.breakers = {
            name: CircuitBreaker(name, threshold=breaker_threshold, cooldown_s=breaker_cooldown_s)
            for name in self._specs
        }
        """The circuit breaker of each model."""
        self.default_max_tokens = default_max_tokens

    @property
    def model_names(self) -> list[str]:
        """The logical model names, sorted."""
        return sorted(self._specs)

    def spec(self, name: str) -> ModelSpec:
        """The spec of model `name`.

        Raises:
            NodeError: no model of that name; the message lists the known ones.
        """
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self.model_names) or "(none)"
            raise NodeError(
                f"unknown model '{name}'; the graph's `models:` define: {known}"
            ) from None

    def price(self, name: str) -> Price:
        """Dollars per million tokens for model `name` (zero when an endpoint has no price)."""
        spec = self.spec(name)
        if spec.price is not None:
            return spec.price
        if spec.provider == "sim":
            return sim_profile(spec).price
        return Price(input=0.0, output=0.0)

    def client(self, name: str, scope: CallScope) -> ModelClient:
        """Model `name`, bound to the node run described by `scope`.

        Raises:
            NodeError: no model of that name; the message lists the known ones.
        """
        try:
            self.spec(name)
        except NodeError as exc:
            raise NodeError(
                exc.reason, node_id=scope.node_id, request_id=scope.request.id
            ) from None
        self._provider(name)
        return _GatewayClient(self, name, scope)

    def estimate_cost(self, name: str, input_tokens: int, max_tokens: int | None = None) -> float:
        """The worst-case cost of a call: all input tokens and `max_tokens` of output."""
        price = self.price(name)
        out = max_tokens if max_tokens is not None else self.default_max_tokens
        return (input_tokens * price.input + out * price.output) / 1_000_000

    async def aclose(self) -> None:
        """Close every provider (their HTTP connections); the gateway is done afterwards."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            spec = self._specs[name]
            if spec.provider == "sim":
                provider = SimProvider(spec)
            else:
                from engine.models.openai_provider import OpenAIProvider  # heavy import

                provider = OpenAIProvider(spec)
            self._providers[name] = provider
        return provider

    def _limiter(self, name: str) -> contextlib.AbstractAsyncContextManager[Any]:
        spec = self._specs[name]
        if spec.max_concurrency is None:
            return contextlib.nullcontext()
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = anyio.CapacityLimiter(spec.max_concurrency)
        return limiter

    def _is_remote(self, name: str) -> bool:
        spec = self._specs[name]
        return spec.remote if spec.remote is not None else spec.provider != "sim"

    def _time_scale(self, name: str) -> float:
        spec = self._specs[name]
        return spec.time_scale if spec.provider == "sim" else 1.0

    # -- one call ---------------------------------------------------------------------

    async def _complete(self, name: str, scope: CallScope, call: _Call) -> Completion:
        spec = self._specs[name]
        messages = await self._egress(name, scope, call.messages)
        prompt_text = _prompt_text(messages)
        input_tokens = _estimate_tokens("\n".join(m["content"] for m in messages))
        input_tokens += _MESSAGE_OVERHEAD_TOKENS * len(messages)
        if self._is_remote(name):
            input_tokens = int(input_tokens * _REMOTE_TOKEN_MARGIN) + 1
        prompt_hash = hashlib.sha256(prompt_text.encode()).hexdigest()[:16]
        jitter = random.Random(f"{scope.request.id}/{scope.node_id}/{scope.cycle}/{prompt_hash}")
        attempt = 0
        while True:
            record = _Attempt(prompt_text, prompt_hash, input_tokens)
            try:
                return await self._attempt(name, scope, call, messages, record, attempt)
            except TransientError as exc:
                delay = self._backoff(name, attempt, exc, jitter)
                late = scope.deadline is not None and anyio.current_time() + delay >= scope.deadline
                if attempt >= spec.max_retries or late:
                    raise _located(exc, scope, attempt + 1) from exc
            await anyio.sleep(delay)
            attempt += 1

    def _backoff(self, name: str, attempt: int, exc: TransientError, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], at least Retry-After."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * self._time_scale(name)
        delay = rng.uniform(0.0, ceiling)
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        return delay

    async def _attempt(
        self,
        name: str,
        scope: CallScope,
        call: _Call,
        messages: Sequence[Mapping[str, str]],
        record: _Attempt,
        attempt: int,
    ) -> Completion:
        breaker = self._admit(name, scope, record)
        try:
            reservations = self._reserve(name, scope, call, record)
        except BudgetExceeded:
            breaker.on_abandon()
            raise
        try:
            async with self._limiter(name):
                record.clock = anyio.current_time()
                response = await self._call_provider(name, scope, call, messages, attempt)
        except anyio.get_cancelled_exc_class():
            record.status = "cancelled"
            if record.clock is not None:  # the provider may have billed the prompt already
                record.cost_usd = record.input_tokens * self.price(name).input / 1_000_000
            breaker.on_abandon()
            raise
        except TransientError as exc:
            record.status = "timeout" if isinstance(exc, TimeoutError) else "error"
            record.error = str(exc)
            if breaker.on_failure():
                self._emit_opened(name, scope, breaker)
            raise
        except NodeError as exc:
            record.error = str(exc)
            self._breaker_success(name, scope, breaker)
            raise _located(exc, scope, attempt + 1) from exc
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            breaker.on_abandon()
            raise NodeError(
                f"model '{name}': provider failed unexpectedly: {record.error}",
                node_id=scope.node_id,
                request_id=scope.request.id,
            ) from exc
        else:
            return self._completion(name, scope, call, record, response)
        finally:
            if record.clock is not None and not record.latency_ms:
                record.latency_ms = (anyio.current_time() - record.clock) * 1000
            for budget, reservation in reservations:
                budget.settle(reservation, record.cost_usd)
            self._record(name, scope, record)

    async def _call_provider(
        self,
        name: str,
        scope: CallScope,
        call: _Call,
        messages: Sequence[Mapping[str, str]],
        attempt: int,
    ) -> ProviderResponse:
        spec = self._specs[name]
        request = ProviderRequest(
            model=name,
            messages=messages,
            request=scope.request,
            node_id=scope.node_id,
            cycle=scope.cycle,
            attempt=attempt,
            schema=call.schema,
            json_mode=call.json_mode,
            task=call.task,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
        )
        with anyio.move_on_after(spec.timeout_s):
            return await self._providers[name].complete(request)
        raise ProviderTimeout(f"model '{name}': no answer within timeout_s={spec.timeout_s:g}")

    def _completion(
        self, name: str, scope: CallScope, call: _Call, record: _Attempt, response: ProviderResponse
    ) -> Completion:
        price = self.price(name)
        cost = (response.input_tokens * price.input + response.output_tokens * price.output) / 1e6
        assert record.clock is not None, "a completed call has started"
        measured = (anyio.current_time() - record.clock) * 1000
        record.status, record.response, record.cost_usd = "ok", response, cost
        record.latency_ms = response.latency_ms if response.latency_ms is not None else measured
        self._breaker_success(name, scope, self.breakers[name])
        parsed: Any = None
        if call.schema is not None or call.json_mode:
            with contextlib.suppress(ValueError):
                parsed = json.loads(response.text)
        return Completion(
            text=response.text,
            model=name,
            provider=self._providers[name].name,
            provider_model=response.provider_model,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=cost,
            latency_ms=record.latency_ms,
            json=parsed,
            simulated=response.simulated,
        )

    # -- guards -----------------------------------------------------------------------

    def _admit(self, name: str, scope: CallScope, record: _Attempt) -> CircuitBreaker:
        breaker = self.breakers[name]
        try:
            probe = breaker.before_call()
        except CircuitOpen as exc:
            record.status, record.error = "refused", str(exc)
            self._record(name, scope, record)
            raise
        if probe:
            scope.emit(
                EventType.CIRCUIT_HALF_OPEN,
                decision="probe",
                payload={"model": name, "failures": breaker.failures},
            )
        return breaker

    def _breaker_success(self, name: str, scope: CallScope, breaker: CircuitBreaker) -> None:
        if breaker.on_success():
            scope.emit(EventType.CIRCUIT_CLOSED, decision="closed", payload={"model": name})

    def _emit_opened(self, name: str, scope: CallScope, breaker: CircuitBreaker) -> None:
        scope.emit(
            EventType.CIRCUIT_OPENED,
            decision="open",
            payload={"model": name, "failures": breaker.failures, "cooldown_s": breaker.cooldown_s},
        )

    def _reserve(
        self, name: str, scope: CallScope, call: _Call, record: _Attempt
    ) -> list[tuple[RequestBudget, Reservation]]:
        estimate = self.estimate_cost(name, record.input_tokens, call.max_tokens)
        held: list[tuple[RequestBudget, Reservation]] = []
        for budget in (scope.budget, self.run_budget):
            if not budget.can_afford(estimate):
                for b, r in held:
                    b.release(r)
                self._refuse_budget(name, scope, budget, estimate, record)
            held.append((budget, budget.reserve(estimate)))
        return held

    def _refuse_budget(
        self, name: str, scope: CallScope, budget: RequestBudget, estimate: float, record: _Attempt
    ) -> None:
        remaining = budget.remaining_usd or 0.0
        record.related_event_id = scope.emit(
            EventType.BUDGET_COST_EXCEEDED,
            decision="refused",
            reason_codes=(f"{budget.label.upper()}_BUDGET",),
            payload={
                "model": name,
                "budget": budget.label,
                "estimate": estimate,
                "remaining": remaining,
                "limit": budget.limit_usd,
            },
        )
        message = (
            f"node '{scope.node_id}': model '{name}': the call could cost up to "
            f"${estimate:.6f} but only ${remaining:.6f} of the {budget.label} budget "
            f"(${budget.limit_usd:.6f}) is left; raise the budget, lower `max_tokens` "
            f"or route to a cheaper model"
        )
        record.status, record.error = "refused", message
        self._record(name, scope, record)
        raise BudgetExceeded(message)

    async def _egress(
        self, name: str, scope: CallScope, messages: Sequence[Mapping[str, str]]
    ) -> list[dict[str, str]]:
        chat = [dict(m) for m in messages]
        if not self._is_remote(name):
            return chat
        chat, found, blocked = await egress_off_loop(chat, scope.policy)
        if blocked:
            self._block_egress(name, scope, chat, found)
        if found:
            scope.emit(
                EventType.PII_REDACTED,
                decision="redacted",
                reason_codes=sorted(found),
                payload={"component": "gateway", "model": name, "found": found},
            )
        return chat

    def _block_egress(
        self, name: str, scope: CallScope, chat: list[dict[str, str]], found: dict[str, int]
    ) -> None:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(found.items()))
        event = scope.emit(
            EventType.EGRESS_BLOCKED,
            decision="blocked",
            reason_codes=sorted(found),
            payload={"component": "gateway", "model": name, "found": found},
        )
        message = (
            f"node '{scope.node_id}': model '{name}' is remote and the prompt contains "
            f"personal data ({kinds}) while the policy sets `egress.allow_unredacted: false`; "
            f"set `egress.redact: true`, add a `redact` node before it, or use a local model"
        )
        text = _prompt_text(chat)
        record = _Attempt(text, hashlib.sha256(text.encode()).hexdigest()[:16], 0)
        record.status, record.error, record.related_event_id = "refused", message, event
        self._record(name, scope, record)
        raise EgressBlocked(message)

    # -- recording --------------------------------------------------------------------

    def _record(self, name: str, scope: CallScope, record: _Attempt) -> None:
        store = scope.policy.get("store_text")
        response = record.response
        prompt_text: str | None = None
        response_text: str | None = None
        if store in ("full", "redacted"):
            prompt_text = record.prompt_text
            response_text = response.text if response is not None else None
            if store == "redacted":
                prompt_text = redact_text(prompt_text)[0]
                response_text = redact_text(response_text)[0] if response_text else response_text
        if response is not None:
            input_tokens = response.input_tokens
        else:  # only a cancelled attempt may have been billed for its prompt
            input_tokens = record.input_tokens if record.cost_usd else 0
        scope.calls.append(
            LlmCall(
                request_id=scope.request.id,
                node=scope.node_id,
                cycle=scope.cycle,
                model=name,
                provider=self._specs[name].provider,
                call_kind=CallKind.SPECULATIVE if scope.speculative else CallKind.NORMAL,
                call_outcome=CallOutcome.NONE if scope.speculative else CallOutcome.USED,
                cache_status=CacheStatus.NONE,
                prompt_hash=record.prompt_hash,
                input_tokens=input_tokens,
                output_tokens=response.output_tokens if response else 0,
                cost_usd=record.cost_usd,
                latency_ms=record.latency_ms,
                started_at=record.started_at,
                status=record.status,
                error=record.error,
                related_event_id=record.related_event_id,
                prompt_text=prompt_text,
                response_text=response_text,
            )
        )
