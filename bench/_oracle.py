"""The `oracle_route` node: picks the cheapest model that suffices, by reading hidden labels.

Benchmark-only. It reads the request's `difficulty` label (which no real router can see,
and never the `harmful` label) and, for each candidate model cheapest first, the chance
that the `sim` provider gets the call right at that difficulty, averaged over the latents
it cannot see (`engine.models._sim_model.expected_chance`): for `task: answer` that the
answer contains the right token, for `task: risk` that the risk review recognises a
harmful request.

It picks the first model whose chance reaches `min_p_correct`, else the most capable one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine import Node, NodeContext
from engine.models._sim_model import expected_chance
from engine.models.sim import SIM_PROFILES

__all__ = ["OracleRoute", "p_correct"]


def p_correct(profile: str, difficulty: float, task: str = "answer") -> float:
    """The sim's chance that `profile` does `task` right on a request of `difficulty`."""
    return expected_chance(SIM_PROFILES[profile].capability, difficulty, task)


class OracleRoute(Node):
    """Routes each request to the cheapest sufficient model, knowing its difficulty."""

    type_name = "oracle_route"

    class Config(BaseModel):
        """Settings of an `oracle_route` node."""

        models: dict[str, str] = Field(
            description="Logical model name -> sim profile, cheapest first."
        )
        task: Literal["answer", "risk"] = Field(default="answer")
        min_p_correct: float = Field(default=0.9, ge=0, le=1)

    class Output(BaseModel):
        """The chosen model and its chance of answering correctly."""

        model: str
        p_correct: float

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Pick the first (cheapest) model whose chance reaches `min_p_correct`."""
        difficulty = float(ctx.request.labels.get("difficulty", 0.3))
        choices = [
            (name, p_correct(profile, difficulty, config.task))
            for name, profile in config.models.items()
        ]
        name, chance = next(
            ((n, p) for n, p in choices if p >= config.min_p_correct),
            max(choices, key=lambda c: c[1]),
        )
        ctx.emit(
            "ROUTE_SELECTED",
            decision=name,
            reason_codes=["ORACLE_DIFFICULTY"],
            payload={"difficulty": difficulty, "p_correct": round(chance, 3)},
        )
        return self.Output(model=name, p_correct=chance)
