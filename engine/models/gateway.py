"""The model gateway: the one path every model call takes from a node to a provider.

For each call it redacts (or blocks) personal data bound for remote models when the
policy asks, reserves the worst-case cost against the request's and the run's budgets,
waits for a slot under the model's concurrency limit, asks the model's circuit breaker,
calls the provider with a per-attempt timeout (the model's `timeout_s`, else
`DEFAULT_CALL_TIMEOUT_S` for any provider but `sim`), retries transient failures with
exponential backoff and full jitter (honouring the Retry-After of a 429 or a 503, never
past the request's deadline), settles the budget with the actual cost and appends one
`LlmCall` per attempt to the node run's `CallScope.calls`, cancelled attempts included.

What each attempt is priced, reserved and charged (the budget rules, README "Budgets"),
and the `llm_calls` row that records it, are kept by its base class `Ledger`
(`_ledger.py`); who is calling, by the `CallScope` (`_scope.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from engine.errors import (
    BudgetExceeded,
    CircuitOpen,
    EgressBlocked,
    NodeError,
    RateLimited,
    TransientError,
)
from engine.events import EventType
from engine.graph.spec import ModelSpec
from engine.models._attempt import Attempt, Call, call_problem, chat_messages, chat_text
from engine.models._egress import egress_off_loop, egress_schema
from engine.models._ledger import Ledger
from engine.models._scope import CallScope, Emit, located
from engine.models.base import (
    ConnectFailed,
    Provider,
    ProviderRequest,
    ProviderResponse,
    ProviderTimeout,
    ResponseLost,
    Unavailable,
)
from engine.models.breaker import CircuitBreaker
from engine.models.budget import RequestBudget
from engine.models.fallback import (
    EdgeGuard,
    FallbackReason,
    announce_fallback,
    refuse_held,
    unreachable_reason,
)
from engine.models.sim import SimProvider
from engine.plugin.context import Completion, ModelClient

__all__ = ["DEFAULT_MAX_TOKENS", "CallScope", "Emit", "Gateway"]

DEFAULT_MAX_TOKENS = 1024
"""The output limit reserved for, and sent to the provider, when a call sets no `max_tokens`."""
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 60.0
"""The longest Retry-After a call waits for; asked to wait longer, it fails at once."""
DEFAULT_CALL_TIMEOUT_S = 600.0
"""The longest an attempt of a remote call (any provider but `sim`) may take when its model
sets no `timeout_s`. The HTTP clients' read timeout counts the time between two bytes, so an
endpoint that stalls after its headers, or sends its answer a byte every few seconds, never
trips it: without this bound, and without a node `timeout_ms` or a request deadline, such a
call would never end. 600 s is the official OpenAI client's own default request timeout;
a model whose answers take longer sets its own `timeout_s`."""


class _CutOff(ProviderTimeout):
    """The model's `timeout_s` ended an attempt: the provider was cancelled mid-answer
    (billed as a cancelled attempt, unlike a timeout the provider reports itself)."""


def _time_bound(spec: ModelSpec) -> float | None:
    """How long an attempt of `spec`'s model may take: its `timeout_s`, else
    `DEFAULT_CALL_TIMEOUT_S` for a model behind an endpoint, else (`sim`) no bound."""
    if spec.timeout_s is not None:
        return spec.timeout_s
    return None if spec.provider == "sim" else DEFAULT_CALL_TIMEOUT_S


def _wait_refused(exc: RateLimited | Unavailable, delay: float) -> RateLimited | Unavailable:
    """The rate limit (or 503), saying that its Retry-After is longer than a call waits.

    The error carries no `retry_after_s`: a node's `retries:` wait what it says, and a wait
    the call refused (a day, a year) would hold the node as long; the node retries after
    its own backoff instead.
    """
    return type(exc)(
        f"{exc.reason}; it asked to wait {delay:.0f} s before a retry, longer than the "
        f"{RETRY_AFTER_CAP_S:g} s a call waits"
    )


class _GatewayClient:
    """A logical model bound to one node run (implements `engine.plugin.context.ModelClient`)."""

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
        speculative: bool = False,
    ) -> Completion:
        """Make one call through the gateway (see `engine.plugin.context.ModelClient.complete`)."""
        scope = self._scope
        problem = call_problem(schema, task, max_tokens, temperature)
        if problem is not None:
            raise NodeError(
                f"model '{self.name}': {problem}",
                node_id=scope.node_id,
                request_id=scope.request.id,
            )
        chat = chat_messages(prompt, messages, system, scope.node_id, scope.request.id)
        call = Call(chat, schema, json_mode, task, max_tokens, temperature, speculative)
        return await self._gateway._complete(self.name, self._scope, call)

    def __repr__(self) -> str:
        return f"<ModelClient {self.name!r} node={self._scope.node_id!r}>"


class Gateway(Ledger):
    """Every model call of a run goes through here (README, "Real models").

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
        self.overrun_factor: dict[str, float] = {}
        """Per model, the worst ratio of charged to reserved cost seen (only when above 1)."""
        self.edge = EdgeGuard()
        """Whether the pinned policy holds remote calls back (offline, gates, probe)."""
        self._time_bounds = {name: _time_bound(spec) for name, spec in self._specs.items()}
        """Per model, the time an attempt may take (None: unbounded, a `sim` model's)."""

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

    def _limiter(self, name: str) -> anyio.CapacityLimiter | None:
        """The model's concurrency limit (None: unlimited, nothing to enter)."""
        spec = self._specs[name]
        if spec.max_concurrency is None:
            return None
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

    async def _complete(self, name: str, scope: CallScope, call: Call) -> Completion:
        """One call of model `name`, or of its `fallback:` when the policy holds remote
        calls back or the endpoint is unreachable (`engine.models.fallback`)."""
        spec = self._specs[name]
        remote = self._is_remote(name)
        if not remote and spec.fallback is None:
            return await self._call(name, scope, call)
        held = await self.edge.held_back(scope.policy) if remote else None
        if held is not None:
            if spec.fallback is None:
                refuse_held(scope.emit, scope.node_id, name, held)
            return await self._fall_back(name, scope, call, held.reason, dict(held.detail))
        try:
            return await self._call(name, scope, call)
        except (CircuitOpen, ConnectFailed) as exc:
            reason = unreachable_reason(exc)
            if spec.fallback is None or reason is None:
                raise
            return await self._fall_back(name, scope, call, reason, {"error": str(exc)})

    async def _fall_back(
        self,
        name: str,
        scope: CallScope,
        call: Call,
        reason: FallbackReason,
        detail: Mapping[str, Any],
    ) -> Completion:
        fallback = self._specs[name].fallback
        assert fallback is not None
        self._provider(fallback)
        announce_fallback(scope.emit, scope.degrade, name, fallback, reason, detail)
        return await self._complete(fallback, scope, call)

    async def _call(self, name: str, scope: CallScope, call: Call) -> Completion:
        spec = self._specs[name]
        if self._is_remote(name):
            messages, call = await self._egress(name, scope, call)
        else:  # nothing to redact: a local model's chat is sent as it is
            messages = [dict(m) for m in call.messages]
        prompt_text = chat_text(messages)
        input_tokens = self._input_bound(name, call, messages)
        limit = call.max_tokens if call.max_tokens is not None else self.default_max_tokens
        prompt_hash = hashlib.sha256(prompt_text.encode()).hexdigest()[:16]
        jitter: random.Random | None = None  # seeded at the first retry: most calls have none
        attempt = 0
        # a node retry's attempts follow those the node's earlier runs may have made
        first = scope.node_attempt * (spec.max_retries + 1)
        while True:
            record = Attempt(prompt_text, prompt_hash, input_tokens, limit)
            record.speculative = call.speculative
            try:
                sent = first + attempt
                return await self._attempt(name, scope, call, messages, record, attempt, sent)
            except TransientError as exc:
                if jitter is None:
                    seed = f"{scope.request.id}/{scope.node_id}/{scope.cycle}/{prompt_hash}"
                    # a node retry waits its own backoff (a first run, as it always has)
                    jitter = random.Random(f"{seed}/{first}" if first else seed)
                delay = self._backoff(name, attempt, exc, jitter)
                if isinstance(exc, RateLimited | Unavailable) and delay > RETRY_AFTER_CAP_S:
                    raise located(_wait_refused(exc, delay), scope, attempt + 1) from exc
                late = scope.deadline is not None and scope.clock() + delay >= scope.deadline
                unreachable = spec.fallback is not None and isinstance(exc, ConnectFailed)
                if attempt >= spec.max_retries or late or unreachable:
                    raise located(exc, scope, attempt + 1) from exc
            await anyio.sleep(delay)
            attempt += 1

    def _backoff(self, name: str, attempt: int, exc: TransientError, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], at least Retry-After."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * self._time_scale(name)
        delay = rng.uniform(0.0, ceiling)
        if isinstance(exc, RateLimited | Unavailable) and exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        return delay

    async def _attempt(
        self,
        name: str,
        scope: CallScope,
        call: Call,
        messages: Sequence[Mapping[str, str]],
        record: Attempt,
        attempt: int,
        sent: int,
    ) -> Completion:
        """Attempt `attempt` of the call (0 first), numbered `sent` for the provider."""
        breaker, probe = self._admit(name, scope, record)
        try:
            reservations = self._reserve(name, scope, record)
        except BudgetExceeded:
            breaker.on_abandon(probe=probe)
            raise
        try:
            response = await self._call_provider(name, scope, call, messages, sent, record)
        except anyio.get_cancelled_exc_class():
            record.status = "cancelled"
            if record.clock is not None:  # sent: the provider may bill it all the same
                self._charge_unanswered(name, record, cancelled=True, at=(scope, sent))
            breaker.on_abandon(probe=probe)
            raise
        except TransientError as exc:
            record.status = "timeout" if isinstance(exc, TimeoutError) else "error"
            record.error = str(exc)
            if isinstance(exc, ResponseLost):
                cut = isinstance(exc, _CutOff)
                self._charge_unanswered(name, record, cancelled=cut, at=(scope, sent))
            if breaker.on_failure(record.error, probe=probe):
                self._emit_opened(name, scope, breaker)
            raise
        except NodeError as exc:
            record.error = str(exc)
            self._breaker_success(name, scope, breaker)
            raise located(exc, scope, attempt + 1) from exc
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            self._charge_unanswered(name, record, cancelled=False)  # it may have been sent
            breaker.on_abandon(probe=probe)
            raise NodeError(
                f"model '{name}': provider failed unexpectedly: {record.error}",
                node_id=scope.node_id,
                request_id=scope.request.id,
            ) from exc
        else:
            return self._completion(name, scope, call, record, response)
        finally:
            if record.clock is not None and not record.latency_ms:
                record.latency_ms = (scope.clock() - record.clock) * 1000
            for budget, reservation in reservations:
                budget.settle(reservation, record.cost_usd)
            self._record(name, scope, record)

    async def _call_provider(
        self,
        name: str,
        scope: CallScope,
        call: Call,
        messages: Sequence[Mapping[str, str]],
        attempt: int,
        record: Attempt,
    ) -> ProviderResponse:
        """Send the attempt (`record.clock` marks it sent), under the model's concurrency
        limit when it has one."""
        limiter = self._limiter(name)
        if limiter is None:
            record.clock = scope.clock()
            return await self._send(name, scope, call, messages, attempt, record.output_limit)
        async with limiter:
            record.clock = scope.clock()
            return await self._send(name, scope, call, messages, attempt, record.output_limit)

    async def _send(
        self,
        name: str,
        scope: CallScope,
        call: Call,
        messages: Sequence[Mapping[str, str]],
        attempt: int,
        max_tokens: int,
    ) -> ProviderResponse:
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
            max_tokens=max_tokens,
            temperature=call.temperature,
        )
        provider = self._providers[name]
        bound = self._time_bounds[name]
        if bound is None:  # no cancel scope to enter and leave on every call
            return await provider.complete(request)
        with anyio.move_on_after(bound):
            return await provider.complete(request)
        if self._specs[name].timeout_s is not None:
            raise _CutOff(f"model '{name}': no answer within timeout_s={bound:g}")
        raise _CutOff(
            f"model '{name}': no complete answer within {bound:g} s, the bound on a remote "
            "call whose model sets no `timeout_s` (the endpoint stalled, or sends its answer "
            "too slowly); set `timeout_s:` on the model to allow longer"
        )

    def _completion(
        self, name: str, scope: CallScope, call: Call, record: Attempt, response: ProviderResponse
    ) -> Completion:
        assert record.clock is not None, "a completed call has started"
        if response.latency_ms is not None:
            record.latency_ms = response.latency_ms
        else:
            record.latency_ms = (scope.clock() - record.clock) * 1000
        record.status, record.response = "ok", response
        self._charge_answer(name, scope, record, response)
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
            input_tokens=record.charged_input,
            output_tokens=record.charged_output,
            cost_usd=record.cost_usd,
            latency_ms=record.latency_ms,
            json=parsed,
            simulated=response.simulated,
            handle=record,
        )

    # -- guards -----------------------------------------------------------------------

    def _admit(self, name: str, scope: CallScope, record: Attempt) -> tuple[CircuitBreaker, bool]:
        """The model's breaker, and whether this attempt is its half-open probe."""
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
        return breaker, probe

    def _breaker_success(self, name: str, scope: CallScope, breaker: CircuitBreaker) -> None:
        if breaker.on_success():
            scope.emit(EventType.CIRCUIT_CLOSED, decision="closed", payload={"model": name})

    def _emit_opened(self, name: str, scope: CallScope, breaker: CircuitBreaker) -> None:
        scope.emit(
            EventType.CIRCUIT_OPENED,
            decision="open",
            payload={"model": name, "failures": breaker.failures, "cooldown_s": breaker.cooldown_s},
        )

    async def _egress(
        self, name: str, scope: CallScope, call: Call
    ) -> tuple[list[dict[str, str]], Call]:
        """The chat bound for remote model `name`, and the call with its schema, redacted
        (or blocked) as the policy asks."""
        chat = [dict(m) for m in call.messages]
        chat, found, blocked = await egress_off_loop(chat, scope.policy)
        if call.schema is not None:
            schema, in_schema, schema_blocked = egress_schema(call.schema, scope.policy)
            if in_schema:
                found = dict(found)
                for kind, n in in_schema.items():
                    found[kind] = found.get(kind, 0) + n
                blocked = blocked or schema_blocked
                call = dataclasses.replace(call, schema=schema)
        if blocked:
            self._block_egress(name, scope, chat, found)
        if found:
            scope.emit(
                EventType.PII_REDACTED,
                decision="redacted",
                reason_codes=sorted(found),
                payload={"component": "gateway", "model": name, "found": found},
            )
        return chat, call

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
            f"node '{scope.node_id}': model '{name}' is remote and the prompt (or its schema) "
            f"contains personal data ({kinds}) while the policy sets "
            "`egress.allow_unredacted: false`; "
            f"set `egress.redact: true`, add a `redact` node before it, or use a local model"
        )
        text = chat_text(chat)
        record = Attempt(text, hashlib.sha256(text.encode()).hexdigest()[:16], 0)
        record.status, record.error, record.related_event_id = "refused", message, event
        self._record(name, scope, record)
        raise EgressBlocked(message)
