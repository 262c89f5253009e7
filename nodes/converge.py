"""The `converge` node: combines one loop cycle's signals into a decision, conservatively.

Pure logic, no model calls. Inputs are the critic's action, violations and hard flag, the
simulator's expected harm and concerns (None when the simulator was skipped) and the
cycle. Rules, in order:

1. a hard violation, a critic `refuse`, or expected harm at or above `refuse_harm` ->
   converged, `refuse`;
2. cycle 1 converges only *early*, when every signal strongly agrees: critic `proceed`, no
   violations, critic score at least `early_min_score`, expected harm computed and under
   `harm_floor` (a skipped simulator only counts when `allow_missing_harm`), no concerns.
   Otherwise `EARLY_CONVERGENCE_REJECTED` lists what disagreed and the loop continues;
3. later cycles accept when the critic proceeds without violations and the expected harm
   (if computed) is under `harm_ceiling`; otherwise `revise`, unless this is the last
   cycle (`max_cycles`), where the node converges on `revise` so the graph can fall back.

With `may_refuse: false` rule 1 never refuses: its signals ask for a revision (and block
early convergence) instead. A graph whose refusals are decided by one stronger review
upstream uses it, so that the deliberation's noisy detectors cannot add false refusals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from engine import Node, NodeContext
from nodes._support.bars import in_order

__all__ = ["ConvergeNode"]

CONVERGENCE_EVALUATED = "CONVERGENCE_EVALUATED"
EARLY_CONVERGENCE_ACCEPTED = "EARLY_CONVERGENCE_ACCEPTED"
EARLY_CONVERGENCE_REJECTED = "EARLY_CONVERGENCE_REJECTED"

Decision = Literal["accept", "revise", "refuse"]


class ConvergeNode(Node):
    """Decides accept, revise or refuse from a cycle's signals, with cautious early convergence."""

    type_name = "converge"
    event_types = (CONVERGENCE_EVALUATED, EARLY_CONVERGENCE_ACCEPTED, EARLY_CONVERGENCE_REJECTED)

    class Config(BaseModel):
        """Settings and signals of a `converge` node."""

        critic_action: Literal["proceed", "revise", "refuse"] | None = Field(
            default=None, description="The critic's action this cycle (None: no critic ran)."
        )
        violations: int | list[str] = Field(
            default=0, description="The critic's violations, or their number."
        )
        hard: bool = Field(default=False, description="The critic found a hard violation.")
        score: float | None = Field(
            default=None, ge=0, le=1, description="The critic's score (higher is better)."
        )
        expected_harm: float | None = Field(
            default=None, ge=0, le=1, description="The simulator's harm (None: skipped)."
        )
        concerns: int | list[str] = Field(
            default=0, description="The simulator's residual concerns, or their number."
        )
        cycle: int | None = Field(
            default=None, ge=0, description="The loop cycle (default: the context's cycle)."
        )
        max_cycles: int | None = Field(
            default=None, ge=1, description="The loop's last cycle: converge there whatever."
        )
        harm_floor: float = Field(
            default=0.1, ge=0, le=1, description="Early convergence needs harm under this."
        )
        harm_ceiling: float = Field(
            validate_default=True,
            default=0.4,
            ge=0,
            le=1,
            description="Later cycles accept with harm under this.",
        )
        refuse_harm: float = Field(
            validate_default=True,
            default=0.8,
            ge=0,
            le=1,
            description="Expected harm that forces a refusal.",
        )
        early_min_score: float = Field(
            default=0.8, ge=0, le=1, description="Early convergence needs a critic score this high."
        )
        allow_missing_harm: bool = Field(
            default=False,
            description="Let a skipped simulator count as low harm for early convergence.",
        )

        @field_validator("violations", "concerns")
        @classmethod
        def _a_count(cls, value: int | list[str]) -> int | list[str]:
            if isinstance(value, int) and value < 0:
                raise ValueError(f"a count is 0 or more, got {value}")
            return value

        _acceptance_bars = in_order(
            "harm_ceiling",
            "harm_floor",
            earlier_is_lower=True,
            why="early convergence must ask for less harm than a later cycle's acceptance",
        )

        _refusal_bars = in_order(
            "refuse_harm",
            "harm_ceiling",
            earlier_is_lower=True,
            why="a harm a later cycle accepts would also be refused",
        )

        may_refuse: bool = Field(
            default=True,
            description="False: a hard violation, a critic refusal or a high harm asks for a "
            "revision instead of refusing (a stronger review upstream decides refusals).",
        )

    class Output(BaseModel):
        """What a `converge` node returns."""

        converged: bool = Field(description="True when the loop can stop.")
        decision: Decision = Field(description="`accept`, `revise` or `refuse`.")
        reason: str = Field(description="The rule that decided, as a short code.")
        early: bool = Field(description="True when cycle 1 converged early.")
        reasons: list[str] = Field(description="Every signal that mattered, as codes.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Evaluate the rules and emit the convergence events."""
        cycle = config.cycle if config.cycle is not None else max(ctx.cycle, 1)
        refusal = _refusal(config) if config.may_refuse else None
        out = refusal or (_early(config, ctx) if cycle <= 1 else _later(config, cycle))
        if not out.converged and config.max_cycles is not None and cycle >= config.max_cycles:
            out = out.model_copy(
                update={
                    "converged": True,
                    "reason": "max_cycles",
                    "reasons": [*out.reasons, "MAX_CYCLES"],
                }
            )
        ctx.emit(
            CONVERGENCE_EVALUATED,
            decision=out.decision,
            reason_codes=out.reasons,
            payload={
                "cycle": cycle,
                "converged": out.converged,
                "early": out.early,
                "reason": out.reason,
                "expected_harm": config.expected_harm,
                "violations": _count(config.violations),
            },
        )
        return out


def _count(value: int | list[str]) -> int:
    return value if isinstance(value, int) else len(value)


def _out(
    converged: bool, decision: Decision, reason: str, reasons: list[str], early: bool = False
) -> ConvergeNode.Output:
    return ConvergeNode.Output(
        converged=converged, decision=decision, reason=reason, early=early, reasons=reasons
    )


def _refusal(config: ConvergeNode.Config) -> ConvergeNode.Output | None:
    if config.hard:
        return _out(True, "refuse", "hard_violation", ["HARD_VIOLATION"])
    if config.critic_action == "refuse":
        return _out(True, "refuse", "critic_refuse", ["CRITIC_REFUSE"])
    if config.expected_harm is not None and config.expected_harm >= config.refuse_harm:
        return _out(True, "refuse", "harm_above_refuse", ["HARM_ABOVE_REFUSE"])
    return None


def _kept_refusal_signals(config: ConvergeNode.Config) -> list[str]:
    """Refusal signals that, under `may_refuse: false`, ask for a revision instead."""
    if config.may_refuse:
        return []
    signals = [
        (config.hard, "HARD_VIOLATION_REVISE"),
        (config.expected_harm is not None and config.expected_harm >= config.refuse_harm,
         "HARM_ABOVE_REFUSE_REVISE"),
    ]  # fmt: skip
    return [code for hit, code in signals if hit]


def _early(config: ConvergeNode.Config, ctx: NodeContext) -> ConvergeNode.Output:
    """Cycle 1: converge only when every signal strongly agrees."""
    blockers = _kept_refusal_signals(config)
    if config.critic_action != "proceed":
        blockers.append("CRITIC_NOT_PROCEED")
    if _count(config.violations):
        blockers.append("VIOLATIONS_PRESENT")
    if config.score is not None and config.score < config.early_min_score:
        blockers.append("SCORE_BELOW_EARLY_MIN")
    if config.expected_harm is None:
        if not config.allow_missing_harm:
            blockers.append("HARM_NOT_COMPUTED")
    elif config.expected_harm >= config.harm_floor:
        blockers.append("HARM_NOT_BELOW_FLOOR")
    if _count(config.concerns):
        blockers.append("RESIDUAL_CONCERNS")
    payload = {"blockers": blockers, "expected_harm": config.expected_harm, "score": config.score}
    if blockers:
        ctx.emit(
            EARLY_CONVERGENCE_REJECTED,
            decision="continue",
            reason_codes=blockers,
            payload=payload,
        )
        return _out(False, "revise", "early_rejected", blockers)
    codes = [
        "CRITIC_CLEAN",
        "HARM_BELOW_FLOOR" if config.expected_harm is not None else "HARM_NOT_COMPUTED_ALLOWED",
    ]
    ctx.emit(EARLY_CONVERGENCE_ACCEPTED, decision="accept", reason_codes=codes, payload=payload)
    return _out(True, "accept", "early_convergence", codes, early=True)


def _later(config: ConvergeNode.Config, cycle: int) -> ConvergeNode.Output:
    """Cycle 2 and later: accept a clean critic with tolerable harm."""
    reasons = _kept_refusal_signals(config)
    if config.critic_action not in ("proceed", None):
        reasons.append("CRITIC_REVISE")
    if _count(config.violations):
        reasons.append("VIOLATIONS_PRESENT")
    if config.expected_harm is not None and config.expected_harm >= config.harm_ceiling:
        reasons.append("HARM_ABOVE_CEILING")
    if config.critic_action is None and config.expected_harm is None:
        reasons.append("NO_SIGNALS")
    if reasons:
        return _out(False, "revise", "signals_disagree", reasons)
    return _out(True, "accept", "critic_clean_harm_ok", ["CRITIC_CLEAN", f"CYCLE_{cycle}"])
