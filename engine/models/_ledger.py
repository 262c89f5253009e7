"""The gateway's books: what each model-call attempt is priced, reserved and charged, and
the `llm_calls` row that records it.

`Ledger` is the part of `Gateway` (`engine.models.gateway`) that keeps them.

Budget rules (README "Budgets"), per attempt, since every attempt can be billed:

- reserve: input at most `max_input_tokens` (UTF-8 bytes plus chat framing; `sim`'s own
  count, which it bills exactly) and output at most the call's `max_tokens`, or
  `DEFAULT_MAX_TOKENS` when it sets none, at the model's price. That output limit is always
  sent to the provider, so a compliant endpoint cannot bill more than was reserved.
- charge, on an answer: the provider's reported usage; with no usage, the reservation.
- charge, on no answer (timed out, cancelled, connection lost after sending, a 200 whose
  body cannot be read): the whole reservation, since the provider may finish and bill the
  call after we hang up. `sim`, whose billing is known, charges an attempt cancelled (or
  cut off by its model's `timeout_s`) its prompt and the output it had generated until
  then, and one that timed out by itself (an injected `timeout` fault) nothing.
- charge, on an error answer (429, 5xx, 4xx): nothing; providers do not bill those.
- a non-compliant endpoint that bills more than the reservation is charged what it billed;
  the overrun is a `BUDGET_COST_EXCEEDED` event (decision `overrun`), the request's budget
  is then spent, and later reservations for that model are scaled by the worst overrun
  ratio seen, so it cannot repeat by the same factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from engine.errors import BudgetExceeded
from engine.events import CacheStatus, CallKind, CallOutcome, EventType, LlmCall
from engine.graph.spec import ModelSpec, Price
from engine.models._attempt import Attempt, Call
from engine.models._egress import redact_text
from engine.models._scope import CallScope
from engine.models.base import Provider, ProviderResponse, max_input_tokens
from engine.models.base import estimate_tokens as _estimate_tokens
from engine.models.budget import RequestBudget, Reservation
from engine.models.prices import table_price
from engine.models.sim import SIM_SERVER_PRICES, SimProvider, sim_profile

__all__ = ["Ledger"]

_SIM_MESSAGE_OVERHEAD_TOKENS = 4


class Ledger:
    """Prices, budget reservations, charges and `llm_calls` rows of a `Gateway`'s attempts
    (its base class: the gateway sets the attributes below)."""

    _specs: dict[str, ModelSpec]
    _providers: dict[str, Provider]
    run_budget: RequestBudget
    overrun_factor: dict[str, float]
    default_max_tokens: int

    if TYPE_CHECKING:

        def spec(self, name: str) -> ModelSpec: ...

    def price(self, name: str, input_tokens: int = 0) -> Price:
        """Dollars per million tokens for model `name` on a call of `input_tokens` prompt
        tokens: its `price:`, `sim`'s, the price table's (`engine.models.prices`, where long
        prompts may cost more), or zero for an unpriced endpoint (which `Pipeline` refuses
        under a cost budget unless allowed)."""
        spec = self.spec(name)
        if spec.price is not None:
            return spec.price
        if spec.provider == "sim":
            return sim_profile(spec).price
        if spec.model is not None and spec.model in SIM_SERVER_PRICES:
            return SIM_SERVER_PRICES[spec.model]  # `moat sim-server`: priced as the embedded sim
        return table_price(spec.model, input_tokens) or Price(input=0.0, output=0.0)

    def estimate_cost(self, name: str, input_tokens: int, max_tokens: int | None = None) -> float:
        """The worst-case cost of a call: all input tokens and `max_tokens` of output, scaled
        by the worst overrun the model's endpoint has shown (1 for a compliant one)."""
        price = self.price(name, input_tokens)
        out = max_tokens if max_tokens is not None else self.default_max_tokens
        cost = (input_tokens * price.input + out * price.output) / 1_000_000
        return cost * self.overrun_factor.get(name, 1.0)

    def _billing_known(self, name: str) -> bool:
        """Whether the gateway knows how the provider counts and bills (only `sim`, which is
        simulated in process); otherwise it reserves and charges upper bounds."""
        return self._specs[name].provider == "sim"

    def _input_bound(self, name: str, call: Call, messages: Sequence[Mapping[str, str]]) -> int:
        if not self._billing_known(name):
            return max_input_tokens(messages, call.schema)
        tokens = _estimate_tokens("\n".join(m["content"] for m in messages))
        return tokens + _SIM_MESSAGE_OVERHEAD_TOKENS * len(messages)

    def _charge_unanswered(
        self,
        name: str,
        record: Attempt,
        *,
        cancelled: bool,
        at: tuple[CallScope, int] | None = None,
    ) -> None:
        """Charge an attempt that was sent but got no answer (see the module docstring)."""
        if not self._billing_known(name):
            record.charge_reservation()
        elif cancelled:
            provider, generated = self._providers.get(name), 0
            if isinstance(provider, SimProvider) and at is not None:
                scope, attempt = at
                generated = provider.output_before_cancel(
                    scope.request.id, scope.node_id, scope.cycle, attempt
                )
            record.charge_prompt(self.price(name, record.input_tokens), generated)

    def _charge_answer(
        self, name: str, scope: CallScope, record: Attempt, response: ProviderResponse
    ) -> None:
        """Charge an answered attempt its reported usage (the reservation when it has none)."""
        if not response.usage_reported:
            record.charge_reservation()
            return
        inp, out = response.input_tokens, response.output_tokens
        record.charge_usage(inp, out, self.price(name, inp))
        if record.overran:
            self._overrun(name, scope, record)

    def _overrun(self, name: str, scope: CallScope, record: Attempt) -> None:
        """A non-compliant endpoint billed past the reservation: record it, learn from it."""
        ratio = record.cost_usd / record.reserved_usd if record.reserved_usd > 0 else 1.0
        if record.reserved_usd > 0:
            factor = self.overrun_factor.get(name, 1.0) * ratio
            self.overrun_factor[name] = max(self.overrun_factor.get(name, 1.0), factor)
        record.related_event_id = scope.emit(
            EventType.BUDGET_COST_EXCEEDED,
            decision="overrun",
            reason_codes=("PROVIDER_EXCEEDED_LIMIT",),
            payload={
                "model": name,
                "reserved": record.reserved_usd,
                "charged": record.cost_usd,
                "output_limit": record.output_limit,
                "output_tokens": record.charged_output,
                "input_bound": record.input_tokens,
                "input_tokens": record.charged_input,
                "factor": self.overrun_factor.get(name, 1.0),
            },
        )

    def _reserve(
        self, name: str, scope: CallScope, record: Attempt
    ) -> list[tuple[RequestBudget, Reservation]]:
        estimate = self.estimate_cost(name, record.input_tokens, record.output_limit)
        record.reserved_usd = estimate
        held: list[tuple[RequestBudget, Reservation]] = []
        for budget in (scope.budget, self.run_budget):
            if not budget.can_afford(estimate):
                for b, r in held:
                    b.release(r)
                self._refuse_budget(name, scope, budget, estimate, record)
            held.append((budget, budget.reserve(estimate)))
        return held

    def _refuse_budget(
        self, name: str, scope: CallScope, budget: RequestBudget, estimate: float, record: Attempt
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

    def _record(self, name: str, scope: CallScope, record: Attempt) -> None:
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
        record.logged = logged = LlmCall(
            request_id=scope.request.id,
            node=scope.node_id,
            cycle=scope.cycle,
            model=name,
            # an answer a simulated model gave (`moat sim-server` behind the `openai`
            # provider marks its answers) is recorded under `sim`, so every reader
            # labels its figures simulated
            provider="sim"
            if response is not None and response.simulated
            else self._specs[name].provider,
            call_kind=CallKind.SPECULATIVE
            if scope.speculative or record.speculative
            else CallKind.NORMAL,
            # a failed attempt gave nothing to use; a speculative call's outcome
            # is the scheduler's to set once it knows what became of the node run
            call_outcome=CallOutcome.USED
            if record.status == "ok" and not scope.speculative
            else CallOutcome.NONE,
            cache_status=CacheStatus.NONE,
            prompt_hash=record.prompt_hash,
            input_tokens=record.charged_input,
            output_tokens=record.charged_output,
            cost_usd=record.cost_usd,
            latency_ms=record.latency_ms,
            started_at=record.started_at,
            status=record.status,
            error=record.error,
            related_event_id=record.related_event_id,
            prompt_text=prompt_text,
            response_text=response_text,
            finish_reason=response.finish_reason if response is not None else None,
        )
        scope.calls.append(logged)
