"""The `speculate` node: a speculative cascade that drafts cheaply, verifies, and hedges adaptively.

For each request the node predicts how likely a draft of the cheap `draft_model` is to be
accepted, from an acceptance rate learnt online per prompt class (an exponential moving
average on the node instance; the class is a coarse feature bucket from `nodes._support.features`,
e.g. `short/factual`). Then it picks a depth:

- `cascade` (prediction at least `hedge_below`): draft, verify, and call `target_model`
  only when the draft is rejected;
- `hedged` (prediction under `hedge_below`): draft-and-verify races the target model, each
  in its own `CancelScope`; the first acceptable answer wins and the loser is cancelled
  (an accepted draft cancels the target; a finished target cancels the draft);
- `target_only` (prediction under `skip_below`): no draft, except for a small
  deterministic `explore_rate` share of requests that keeps the estimate learning.

Verification rejects a draft that does not parse, stops mid-object or does not validate
against `schema` (no model call), otherwise asks `verify_model` (task `verify`) for
`accept` and `score`; a verdict that cannot be read (not JSON, cut off mid-object,
`accept` not a yes/no, `score` not a number in [0, 1]) rejects the draft
(`VERIFY_UNPARSEABLE`, `VERIFY_UNREADABLE`). Every
verification outcome updates the class's rate; a race the target wins before the draft is
verified teaches nothing (the draft model is normally the faster one, so this is rare).
`wasted_usd` adds up the completed calls whose result was not used; calls cancelled in
flight are listed in the event (their partial cost is recorded by the gateway).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from engine import Completion, Node, NodeContext, NodeError
from nodes._support.calls import (
    ask_json,
    cut_off,
    flag,
    object_schema,
    unit,
    unreadable_codes,
)
from nodes._support.features import features
from nodes._support.jsonfix import JsonFixError, parse_lenient
from nodes._support.schemas import Unresolvable, unresolved, validator

__all__ = ["SpeculateNode"]

SPECULATE_DECISION = "SPECULATE_DECISION"

VERIFY_SCHEMA = object_schema(
    {"accept": {"type": "boolean"}, "score": {"type": "number", "minimum": 0, "maximum": 1}},
    ["accept", "score"],
)
Strategy = Literal["cascade", "hedged", "target_only"]


@dataclass
class _Race:
    """What happened in one request: completions, verdict, winner, errors."""

    draft: Completion | None = None
    target: Completion | None = None
    verify: Completion | None = None
    verify_cost: float = 0.0
    accepted: bool | None = None
    verify_score: float | None = None
    codes: list[str] = field(default_factory=list)
    winner: Literal["draft", "target"] | None = None
    cancelled: list[str] = field(default_factory=list)
    target_error: BaseException | None = None


# `json` shadows the deprecated `BaseModel.json()`; the field keeps the name the `model` node
# uses, so the warning is silenced for this class only.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class _SpeculateOutput(BaseModel):
        """What a `speculate` node returns."""

        text: str = Field(description="The answer used.")
        json: Any = Field(default=None, description="The parsed answer when a schema was given.")
        source: Literal["draft", "target"] = Field(description="Which model's answer is used.")
        accepted: bool = Field(description="True when the draft was verified and accepted.")
        hedged: bool = Field(description="True when the target model ran in parallel.")
        strategy: Strategy = Field(description="`cascade`, `hedged` or `target_only`.")
        predicted_acceptance: float = Field(description="The learnt acceptance rate used.")
        prompt_class: str = Field(description="The feature bucket the rate was learnt for.")
        cost_usd: float = Field(description="Dollars of every completed call of this node.")
        wasted_usd: float = Field(description="Dollars of completed calls whose result was unused.")


class SpeculateNode(Node):
    """Drafts on a cheap model, verifies, and races the target model when acceptance is unlikely."""

    type_name = "speculate"
    event_types = (SPECULATE_DECISION,)
    model_keys = ("draft_model", "target_model", "verify_model")
    schema_keys = ("schema",)

    class Config(BaseModel):
        """Settings of a `speculate` node."""

        prompt: str = Field(description="The user message.")
        draft_model: str = Field(description="The cheap model that drafts.")
        target_model: str = Field(description="The capable model used when the draft fails.")
        verify_model: str | None = Field(
            default=None, description="The model that verifies drafts (default: draft_model)."
        )
        system: str | None = Field(default=None, description="An optional system message.")
        schema_: dict[str, Any] | None = Field(
            default=None, alias="schema", description="A JSON Schema answers must satisfy."
        )
        accept_threshold: float = Field(
            default=0.6, ge=0, le=1, description="Verifier score needed to accept a draft."
        )
        hedge_below: float = Field(
            default=0.6, ge=0, le=1, description="Predicted acceptance under which to hedge."
        )
        skip_below: float = Field(
            default=0.15,
            ge=0,
            le=1,
            description="Predicted acceptance under which to skip drafting.",
        )
        explore_rate: float = Field(
            default=0.1, ge=0, le=1, description="Share of skipped requests that draft anyway."
        )
        prior: float = Field(
            default=0.7, ge=0, le=1, description="Assumed acceptance of an unseen prompt class."
        )
        alpha: float = Field(
            default=0.2, gt=0, le=1, description="Weight of each new outcome in the moving average."
        )
        max_tokens: int | None = Field(default=None, gt=0, description="Answer length bound.")

        model_config = {"populate_by_name": True}

    Output = _SpeculateOutput

    def __init__(self) -> None:
        self.acceptance: dict[str, float] = {}
        """Learnt acceptance rate per prompt class."""

    async def run(self, config: Config, ctx: NodeContext) -> _SpeculateOutput:
        """Choose a depth, run it, learn from the verdict and report."""
        if config.schema_ is not None:  # a `{{ }}` schema is only known now
            validator(config.schema_)
        prompt_class = features(config.prompt).prompt_class
        predicted = self.acceptance.get(prompt_class, config.prior)
        strategy, codes = _strategy(config, ctx, predicted)
        race = _Race(codes=codes)
        if strategy == "target_only":
            race.target = await self._call(config, ctx, config.target_model, "answer")
            race.winner = "target"
        elif strategy == "cascade":
            await self._draft_and_verify(config, ctx, race)
            if not race.accepted:
                race.target = await self._call(config, ctx, config.target_model, "answer")
            race.winner = "draft" if race.accepted else "target"
        else:
            await self._hedge(config, ctx, race)
        # the bet's calls that lost are recorded discarded (those cancelled, cancelled)
        losers = [race.draft, race.verify] if race.winner == "target" else [race.target]
        for lost in losers:
            if lost is not None:
                ctx.discard(lost)
        if race.accepted is not None:
            self.acceptance[prompt_class] = (1 - config.alpha) * predicted + config.alpha * float(
                race.accepted
            )
        return self._report(config, ctx, race, strategy, predicted, prompt_class)

    async def _call(
        self, config: Config, ctx: NodeContext, model: str, task: str, bet: bool = False
    ) -> Completion:
        """One call; `bet`: a speculative one (a draft, or a target raced against it)."""
        extra: dict[str, Any] = (
            {"speculative": True} if bet else {}
        )  # (a client of old needs no new word)
        return await ctx.model(model).complete(
            prompt=config.prompt, system=config.system, schema=config.schema_, task=task,
            max_tokens=config.max_tokens, **extra,
        )  # fmt: skip

    async def _draft_and_verify(self, config: Config, ctx: NodeContext, race: _Race) -> None:
        race.draft = await self._call(config, ctx, config.draft_model, "draft", bet=True)
        if config.schema_ is not None and not _schema_ok(race.draft, config.schema_):
            race.accepted = False
            race.codes.append("DRAFT_SCHEMA_INVALID")
            return
        reply = await ask_json(
            ctx, config.verify_model or config.draft_model, task="verify", schema=VERIFY_SCHEMA,
            prompt=f"Request:\n{config.prompt}\n\nDraft answer:\n{race.draft.text}\n\n"
            "Is the draft a correct, complete, acceptable answer? Score it from 0 to 1.",
            speculative=True,
        )  # fmt: skip
        race.verify = reply.completion
        race.verify_cost = reply.completion.cost_usd
        if reply.value is None:
            race.accepted = False
            race.codes.extend(unreadable_codes(reply, "VERIFY_UNPARSEABLE"))
            return
        accept, race.verify_score = flag(reply.value.get("accept")), unit(reply.value.get("score"))
        if accept is None or race.verify_score is None:  # `"false"`, NaN, 9: no verdict
            race.accepted = False
            race.codes.append("VERIFY_UNREADABLE")
            return
        race.accepted = accept and race.verify_score >= config.accept_threshold
        race.codes.append("DRAFT_ACCEPTED" if race.accepted else "DRAFT_REJECTED")

    async def _hedge(self, config: Config, ctx: NodeContext, race: _Race) -> None:
        draft_scope, target_scope = anyio.CancelScope(), anyio.CancelScope()

        async def target_branch() -> None:
            with target_scope:
                try:
                    race.target = await self._call(
                        config, ctx, config.target_model, "answer", bet=True
                    )
                except Exception as exc:  # failures travel as values, not ExceptionGroups
                    race.target_error = exc
                    return
                if race.winner is None:
                    race.winner = "target"
                    draft_scope.cancel()
            if target_scope.cancelled_caught:
                race.cancelled.append("target")

        async def draft_branch() -> None:
            with draft_scope:
                try:
                    await self._draft_and_verify(config, ctx, race)
                except Exception as exc:
                    race.codes.append("DRAFT_FAILED")
                    ctx.log.warning("speculate.draft_failed", error=str(exc))
                    return
                if race.accepted and race.winner is None:
                    race.winner = "draft"
                    target_scope.cancel()
            if draft_scope.cancelled_caught:
                race.cancelled.append("draft")

        async with anyio.create_task_group() as tg:
            tg.start_soon(target_branch)
            tg.start_soon(draft_branch)
        if race.winner is None:
            raise NodeError(
                f"target model {config.target_model!r} failed and the draft was not accepted: "
                f"{race.target_error}",
                node_id=ctx.node_id,
                request_id=ctx.request.id,
            ) from race.target_error

    def _report(
        self,
        config: Config,
        ctx: NodeContext,
        race: _Race,
        strategy: Strategy,
        predicted: float,
        prompt_class: str,
    ) -> _SpeculateOutput:
        used = race.draft if race.winner == "draft" else race.target
        assert used is not None  # a winner always has its completion
        spent = {
            "draft": race.draft.cost_usd if race.draft else 0.0,
            "verify": race.verify_cost,
            "target": race.target.cost_usd if race.target else 0.0,
        }
        wasted = spent["target"] if race.winner == "draft" else spent["draft"] + spent["verify"]
        out = self.Output(
            text=used.text,
            json=_json_of(used) if config.schema_ is not None else None,
            source=race.winner or "target",
            accepted=bool(race.accepted) and race.winner == "draft",
            hedged=strategy == "hedged",
            strategy=strategy,
            predicted_acceptance=round(predicted, 4),
            prompt_class=prompt_class,
            cost_usd=round(sum(spent.values()), 8),
            wasted_usd=round(wasted, 8),
        )
        ctx.emit(
            SPECULATE_DECISION,
            decision=out.source,
            reason_codes=race.codes,
            payload={
                "strategy": strategy,
                "predicted_acceptance": out.predicted_acceptance,
                "prompt_class": prompt_class,
                "accepted": out.accepted,
                "verify_score": race.verify_score,
                "cancelled": race.cancelled,
                "wasted_usd": out.wasted_usd,
                "cost_usd": out.cost_usd,
            },
        )
        return out


def _strategy(
    config: SpeculateNode.Config, ctx: NodeContext, predicted: float
) -> tuple[Strategy, list[str]]:
    if predicted < config.skip_below:
        digest = hashlib.sha256(f"{ctx.request.id}:{ctx.node_id}".encode()).digest()
        if digest[0] / 256 >= config.explore_rate:
            return "target_only", ["LOW_PREDICTED_ACCEPTANCE_SKIP_DRAFT"]
        return "hedged", ["LOW_PREDICTED_ACCEPTANCE_EXPLORE"]
    if predicted < config.hedge_below:
        return "hedged", ["LOW_PREDICTED_ACCEPTANCE_HEDGE"]
    return "cascade", ["HIGH_PREDICTED_ACCEPTANCE"]


def _json_of(completion: Completion) -> Any:
    if completion.json is not None:
        return completion.json
    try:
        return parse_lenient(completion.text).value
    except JsonFixError:
        return None


def _schema_ok(completion: Completion, schema: dict[str, Any]) -> bool:
    value = completion.json
    if value is None:
        try:
            parsed = parse_lenient(completion.text)
        except JsonFixError:
            return False
        if cut_off(parsed.fixes):  # a draft cut off mid-object: what it lost is unknown
            return False
        value = parsed.value
    try:
        return not any(True for _ in validator(schema).iter_errors(value))
    except Unresolvable as exc:  # a `$ref` only this draft's validation reached
        raise unresolved(exc) from None
