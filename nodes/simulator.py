"""The `simulator` node: estimates the consequences of sending a draft answer.

The model (task `simulate`) plays the draft forward and returns `expected_harm` in [0, 1]
and a list of `concerns`. An unreadable answer never passes silently: it yields the
configured `fallback_harm` (cautious by default) and a concern saying so, with reason code
`SIMULATOR_UNPARSEABLE`, so a `converge` node downstream will not converge on it early.
An answer cut off mid-object (`ANSWER_TRUNCATED`) is unreadable, and so is one whose
`expected_harm` is not a number in [0, 1] (`HARM_UNREADABLE`: NaN, -2 or 7 is no estimate);
a numeric string (`"0.3"`) reads as its number and a single concern string as one concern.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine import Node, NodeContext
from nodes._support.bars import in_order
from nodes._support.calls import ask_json, object_schema, texts, unit, unreadable_codes

__all__ = ["SimulatorNode"]

SIMULATOR_EXECUTED = "SIMULATOR_EXECUTED"

SIMULATE_SCHEMA = object_schema(
    {
        "expected_harm": {"type": "number", "minimum": 0, "maximum": 1},
        "concerns": {"type": "array", "items": {"type": "string"}},
    },
    ["expected_harm", "concerns"],
)


class SimulatorNode(Node):
    """Estimates the expected harm and concerns of sending a draft."""

    type_name = "simulator"
    event_types = (SIMULATOR_EXECUTED,)
    model_keys = ("model",)

    class Config(BaseModel):
        """Settings of a `simulator` node."""

        model: str = Field(description="Logical model that simulates consequences.")
        draft: str = Field(description="The draft answer to play forward.")
        request: str | None = Field(
            default=None,
            description="The user's request (default: the request input's `prompt`).",
        )
        fallback_harm: float = Field(
            default=0.5,
            ge=0,
            le=1,
            description="Expected harm assumed when the answer is unreadable.",
        )
        high_at: float = Field(
            default=0.6, ge=0, le=1, description="Expected harm from which severity is `high`."
        )
        low_below: float = Field(
            validate_default=True,
            default=0.2,
            ge=0,
            le=1,
            description="Expected harm under which severity is `low`.",
        )

        _severity_bars = in_order(
            "low_below", "high_at", earlier_is_lower=False, why="a harm would be both low and high"
        )

        max_tokens: int | None = Field(default=None, gt=0, description="Answer length bound.")

    class Output(BaseModel):
        """What a `simulator` node returns."""

        expected_harm: float = Field(description="Expected harm of sending the draft, in [0, 1].")
        concerns: list[str] = Field(description="What could go wrong, one item per concern.")
        severity: Literal["low", "medium", "high"] = Field(
            description="`expected_harm` bucketed by `low_below` and `high_at`."
        )
        parsed: bool = Field(description="False when the model's answer was unreadable.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Ask the model to simulate the draft's consequences."""
        request = config.request or str(ctx.request.input.get("prompt", ""))
        prompt = (
            "Imagine this answer is sent. Estimate the expected harm (0 = none, 1 = severe) "
            f"and list concrete concerns.\n\nRequest:\n{request}\n\nAnswer:\n{config.draft}"
        )
        reply = await ask_json(
            ctx, config.model, prompt=prompt, schema=SIMULATE_SCHEMA, task="simulate",
            max_tokens=config.max_tokens,
        )  # fmt: skip
        value = reply.value or {}
        stated = unit(value.get("expected_harm"))
        concerns = texts(value.get("concerns"))
        if stated is None:
            harm, concerns = config.fallback_harm, ["simulator output unreadable"]
            codes = unreadable_codes(reply, "SIMULATOR_UNPARSEABLE")
            if reply.value is not None:
                codes.append("HARM_UNREADABLE")
        else:
            harm, codes = stated, []
            if concerns is None:  # concerns it raised in a shape that cannot be listed
                concerns = ["simulator concerns unreadable"]
        severity: Literal["low", "medium", "high"] = (
            "high" if harm >= config.high_at else "low" if harm < config.low_below else "medium"
        )
        codes.append(f"HARM_{severity.upper()}")
        if concerns:
            codes.append("CONCERNS_RAISED")
        out = self.Output(
            expected_harm=harm, concerns=concerns, severity=severity, parsed=stated is not None
        )
        ctx.emit(
            SIMULATOR_EXECUTED,
            decision=severity,
            reason_codes=codes,
            payload={"expected_harm": harm, "concerns": len(concerns), "parsed": out.parsed},
        )
        return out
