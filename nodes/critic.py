"""The `critic` node: risk assessment of a request, or review of a draft, against principles.

`mode: request` asks the model (task `risk`) for a risk assessment of the user's request —
`risk_score`, `category`, `operational_risk`, `intent_to_harm`, `requested_instructions`
and a suggested `action` — then applies the configured thresholds: the final action is
the more cautious of the model's and the thresholds'. It writes the `RISK_ASSESSMENT`
decision trace. `mode: draft` asks (task `critique`) for `violations`, `hard`, `score` and
`action` on a draft answer; an answer claiming `proceed` while listing violations is
corrected to `revise`. Both modes report the model's stated `confidence` in its verdict.

With `escalate_below`, a request review is the cheap first stage of a cascade: its own
refusal signal means "look closer", not "refuse". It never refuses; `escalate` is true
when its verdict is not `proceed` or its confidence is under `escalate_below`, and a
stronger review (another `critic`, `when: screen.escalate`) decides. Noisy cheap
detectors then cost a second look, not a false refusal, and the threshold is one policy
value that trades the stronger review's cost against refusal recall.

The relevant principles are retrieved once per request: the first critic of a request
computes them under `ctx.memo("principles:<source>")`, emits `PRINCIPLES_RETRIEVED` and the
`REQUEST_ANALYSIS_CONTEXT` trace; every later critic of the request (any node, any cycle)
emits `PRINCIPLES_REUSED` and uses the same list. Unreadable model output never crashes
the node: it becomes a cautious `revise` with reason code `CRITIC_UNPARSEABLE` (request
mode: `RISK_UNPARSEABLE`), plus `ANSWER_TRUNCATED` when the answer was cut off mid-object.
Fields are read the way models write them (`"0.9"`, `"false"`, `"Refuse"`, one violation
as a string); a field that still cannot be read never counts as the harmless value: an
unreadable or off-scale `risk_score` (NaN, 7, -1) is taken as 0.5 with
`RISK_SCORE_UNREADABLE` and no confidence, an unreadable yes/no signal as raised, and
violations in a shape that cannot be listed forbid `proceed`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from engine import Node, NodeContext, at_check, graph_file
from nodes._support.bars import in_order
from nodes._support.calls import (
    ask_json,
    choice,
    flag,
    object_schema,
    texts,
    unit,
    unreadable_codes,
)
from nodes._support.principles import Principle, PrincipleIndex, load_principles, source_key

__all__ = ["CriticNode"]

CRITIC_DECISION = "CRITIC_DECISION"
PRINCIPLES_RETRIEVED = "PRINCIPLES_RETRIEVED"
PRINCIPLES_REUSED = "PRINCIPLES_REUSED"

Action = Literal["proceed", "revise", "refuse"]
_SEVERITY: dict[str, int] = {"proceed": 0, "revise": 1, "refuse": 2}

RISK_SCHEMA = object_schema(
    {
        "risk_score": {"type": "number", "minimum": 0, "maximum": 1},
        "category": {"type": "string"},
        "operational_risk": {"type": "string", "enum": ["low", "medium", "high"]},
        "intent_to_harm": {"type": "boolean"},
        "requested_instructions": {"type": "boolean"},
        "action": {"type": "string", "enum": ["proceed", "revise", "refuse"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string"},
    },
    ["risk_score", "category", "operational_risk", "intent_to_harm", "action"],
)
CRITIQUE_SCHEMA = object_schema(
    {
        "action": {"type": "string", "enum": ["proceed", "revise", "refuse"]},
        "violations": {"type": "array", "items": {"type": "string"}},
        "hard": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string"},
    },
    ["action", "violations", "hard", "score"],
)


class CriticNode(Node):
    """Assesses a request's risk or reviews a draft against relevant principles."""

    type_name = "critic"
    event_types = (CRITIC_DECISION, PRINCIPLES_RETRIEVED, PRINCIPLES_REUSED)
    model_keys = ("model",)

    class Config(BaseModel):
        """Settings of a `critic` node."""

        model: str = Field(description="Logical model that assesses or critiques.")
        mode: Literal["request", "draft"] = Field(
            default="draft",
            description="`request`: risk assessment of the request; `draft`: review a draft.",
        )
        request: str | None = Field(
            default=None,
            description="The user's request (default: the request input's `prompt`).",
        )
        draft: str | None = Field(default=None, description="The draft to review (draft mode).")
        principles: str | list[str | dict[str, Any]] | None = Field(
            default=None,
            description="A principles file (YAML or text) or an inline list; default: the "
            "built-in set.",
        )

        @field_validator("principles")
        @classmethod
        def _principles_read(cls, value: Any, info: ValidationInfo) -> Any:
            if value is not None and at_check(info):  # once, at `moat check`; not per request
                load_principles(graph_file(value, info) if isinstance(value, str) else value)
            return value

        top_k: int = Field(
            default=4, ge=0, le=50, description="Relevant principles retrieved besides core ones."
        )
        revise_at: float = Field(
            default=0.5, ge=0, le=1, description="Request mode: risk score that forces revise."
        )
        refuse_at: float = Field(
            validate_default=True,
            default=0.85,
            ge=0,
            le=1,
            description="Request mode: risk score that forces refuse.",
        )

        _risk_bars = in_order(
            "refuse_at",
            "revise_at",
            earlier_is_lower=True,
            why="a risk that forces a refusal must force a revision first",
        )

        escalate_below: float | None = Field(
            default=None,
            ge=0,
            le=1,
            description="Request mode: makes this review a cheap screen of a cascade. It never "
            "refuses: `escalate` is true when its verdict is not `proceed` or its confidence "
            "in that verdict is under this value, and a stronger review decides.",
        )
        max_tokens: int | None = Field(default=None, gt=0, description="Answer length bound.")

    class Output(BaseModel):
        """What a `critic` node returns."""

        action: Action = Field(description="`proceed`, `revise` or `refuse`.")
        violations: list[str] = Field(description="Principles the draft violates (draft mode).")
        hard: bool = Field(description="True when a violation cannot be fixed by rewording.")
        score: float = Field(
            description="Acceptability in [0, 1], higher is better (request mode: 1 - risk)."
        )
        rationale: str = Field(description="Why, in a sentence or two.")
        risk_score: float | None = Field(default=None, description="Request mode: risk in [0, 1].")
        category: str | None = Field(default=None, description="Request mode: risk category.")
        operational_risk: Literal["low", "medium", "high"] | None = Field(
            default=None, description="Request mode: how actionable the possible harm is."
        )
        intent_to_harm: bool | None = Field(
            default=None, description="Request mode: the request shows intent to cause harm."
        )
        requested_instructions: bool | None = Field(
            default=None, description="Request mode: the request asks for instructions."
        )
        principles: list[str] = Field(description="Ids of the principles reviewed against.")
        parsed: bool = Field(description="False when the model's answer was unreadable.")
        confidence: float = Field(
            default=0.5,
            description="The model's stated confidence in its verdict, in [0, 1] (when it "
            "states none: how far its score is from even).",
        )
        escalate: bool = Field(
            default=False,
            description="Request mode with `escalate_below`: a stronger review must decide.",
        )
        verdict: Action | None = Field(
            default=None,
            description="Request mode with `escalate_below`: the action the screen would have "
            "taken on its own (its `action` is then `proceed`, or `revise` when escalating).",
        )

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Retrieve (or reuse) principles, ask the model, apply the decision rules."""
        request = config.request or str(ctx.request.input.get("prompt", ""))
        principles = await _relevant_principles(ctx, config, request)
        if config.mode == "request":
            return await self._assess(config, ctx, request, principles)
        return await self._critique(config, ctx, request, principles)

    async def _assess(
        self, config: Config, ctx: NodeContext, request: str, principles: list[Principle]
    ) -> Output:
        prompt = _prompt(principles, "Assess the risk of answering this request.", request, None)
        reply = await ask_json(
            ctx, config.model, prompt=prompt, schema=RISK_SCHEMA, task="risk",
            max_tokens=config.max_tokens,
        )  # fmt: skip
        v = reply.value or {}
        codes = [] if reply.value is not None else unreadable_codes(reply, "RISK_UNPARSEABLE")
        stated_risk = unit(v.get("risk_score"))
        if reply.value is not None and stated_risk is None:
            codes.append("RISK_SCORE_UNREADABLE")
        risk = 0.5 if stated_risk is None else stated_risk
        operational = choice(v.get("operational_risk"), ("low", "medium", "high")) or "medium"
        intent = _signal(v, "intent_to_harm", codes)
        instructions = _signal(v, "requested_instructions", codes)
        policy_action = _risk_policy(config, risk, operational, intent, instructions, codes)
        if stated_risk is None and policy_action == "proceed":  # no risk read, none ruled out
            policy_action = "revise"
        model_action = _as_action(v.get("action"))
        codes.append(f"MODEL_{model_action.upper()}")
        action = max(policy_action, model_action, key=_SEVERITY.__getitem__)
        readable = stated_risk is not None
        confidence = _confidence(v, risk) if readable else 0.0
        verdict: Action | None = None
        escalate = False
        if config.escalate_below is not None:
            verdict = action
            escalate = action != "proceed" or confidence < config.escalate_below
            codes.append("ESCALATE" if escalate else "SCREEN_PASSED")
            if action == "proceed" and escalate:
                codes.append("CONFIDENCE_BELOW_ESCALATE")
            action = "revise" if escalate else "proceed"
        out = self.Output(
            action=action,
            violations=[],
            hard=action == "refuse" and intent,
            score=1.0 - risk,
            rationale=str(v.get("rationale", "risk assessment unreadable; revising")),
            risk_score=risk,
            category=str(v.get("category", "unknown")),
            operational_risk=operational,
            intent_to_harm=intent,
            requested_instructions=instructions,
            principles=[p.id for p in principles],
            parsed=readable,
            confidence=round(confidence, 4),
            escalate=escalate,
            verdict=verdict,
        )
        ctx.trace(
            "RISK_ASSESSMENT",
            {
                "risk_score": risk,
                "risk_category": out.category,
                "operational_risk": operational,
                "intent_to_harm": intent,
                "requested_instructions": instructions,
                "intent_operational": intent and instructions,
                "risk_policy_action": policy_action,
                "confidence": out.confidence,
                "escalate": escalate,
                "estimation_mode": "model" if out.parsed else "fallback",
                "detected_domain": out.category,
                "activated_signals": codes,
            },
        )
        _emit_decision(ctx, out, codes, "request")
        return out

    async def _critique(
        self, config: Config, ctx: NodeContext, request: str, principles: list[Principle]
    ) -> Output:
        task = "Review the draft answer against the principles."
        prompt = _prompt(principles, task, request, config.draft or "")
        reply = await ask_json(
            ctx, config.model, prompt=prompt, schema=CRITIQUE_SCHEMA, task="critique",
            max_tokens=config.max_tokens,
        )  # fmt: skip
        if reply.value is None:
            out = self.Output(
                action="revise", violations=[], hard=False, score=0.0,
                rationale="critic output unreadable; revising to be safe",
                principles=[p.id for p in principles], parsed=False,
            )  # fmt: skip
            _emit_decision(ctx, out, unreadable_codes(reply, "CRITIC_UNPARSEABLE"), "draft")
            return out
        v = reply.value
        action = _as_action(v.get("action"))
        codes = [f"MODEL_{action.upper()}"]
        violations = texts(v.get("violations"))
        hard = _signal(v, "hard", codes)
        if violations is None:  # it named violations in a shape that cannot be listed
            violations = []
            codes.append("VIOLATIONS_UNREADABLE")
            if action == "proceed":
                action = "revise"
        if action == "proceed" and (violations or hard):
            action = "revise"
            codes.append("VIOLATIONS_OVERRIDE_PROCEED")
        if hard:
            codes.append("HARD_VIOLATION")
        stated = unit(v.get("score"))
        score = 0.5 if stated is None else stated
        out = self.Output(
            action=action,
            violations=violations,
            hard=hard,
            score=score,
            rationale=str(v.get("rationale", "")),
            principles=[p.id for p in principles],
            parsed=True,
            confidence=round(_confidence(v, score), 4),
        )
        _emit_decision(ctx, out, codes, "draft")
        return out


def _risk_policy(
    config: CriticNode.Config,
    risk: float,
    operational: str,
    intent: bool,
    instructions: bool,
    codes: list[str],
) -> Action:
    """The action the thresholds call for, recording which signals fired."""
    if intent and instructions and operational == "high":
        codes.append("INTENT_OPERATIONAL")
        return "refuse"
    if risk >= config.refuse_at:
        codes.append("RISK_ABOVE_REFUSE")
        return "refuse"
    signals = [
        (risk >= config.revise_at, "RISK_ABOVE_REVISE"),
        (operational == "high", "OPERATIONAL_HIGH"),
        (intent, "INTENT_TO_HARM"),
    ]
    fired = [code for hit, code in signals if hit]
    codes.extend(fired)
    return "revise" if fired else "proceed"


def _confidence(value: dict[str, Any], score: float) -> float:
    """The stated confidence, else how far `score` (a probability) is from even odds."""
    stated = unit(value.get("confidence"))
    return stated if stated is not None else max(score, 1.0 - score)


def _as_action(value: Any) -> Action:
    """A model's action (`Refuse` too), or `revise` when it named none of the three."""
    word = choice(value, _SEVERITY)
    if word == "proceed":
        return "proceed"
    if word == "refuse":
        return "refuse"
    return "revise"


def _signal(value: dict[str, Any], key: str, codes: list[str]) -> bool:
    """A yes/no signal of the answer: false when absent, true when present but unreadable
    (a signal the model raised in a shape it should not have is still raised)."""
    raw = value.get(key)
    read = flag(raw) if raw is not None else False
    if read is None:
        codes.append(f"{key.upper()}_UNREADABLE")
        return True
    return read


def _emit_decision(ctx: NodeContext, out: CriticNode.Output, codes: list[str], mode: str) -> None:
    ctx.emit(
        CRITIC_DECISION,
        decision=out.action,
        reason_codes=codes,
        payload={
            "mode": mode,
            "score": out.score,
            "violations": len(out.violations),
            "hard": out.hard,
            "risk_score": out.risk_score,
            "confidence": out.confidence,
            "escalate": out.escalate,
            "principles": out.principles,
            "parsed": out.parsed,
        },
    )


def _prompt(principles: list[Principle], task: str, request: str, draft: str | None) -> str:
    lines = [task, "", "Principles:"]
    lines += [f"- [{p.id}]{' (hard)' if p.hard else ''} {p.text}" for p in principles]
    lines += ["", "Request:", request]
    if draft is not None:
        lines += ["", "Draft answer:", draft]
    return "\n".join(lines)


async def _relevant_principles(
    ctx: NodeContext, config: CriticNode.Config, request: str
) -> list[Principle]:
    """The request's relevant principles: computed by the first critic, reused by the rest."""
    source = config.principles
    if isinstance(source, str):  # a file: relative to the graph, not the working directory
        source = ctx.resolve_path(source, key="principles")
    key = source_key(source)
    index = ctx.shared.get(
        "principles-index:" + key, lambda: PrincipleIndex(load_principles(source))
    )

    async def retrieve() -> list[tuple[Principle, float]]:
        return index.relevant(request, config.top_k)

    found, reused = await ctx.memo("principles:" + key, retrieve)
    ids = [p.id for p, _ in found]
    if reused:
        ctx.emit(PRINCIPLES_REUSED, decision="reused", payload={"principles": ids})
    else:
        ctx.emit(
            PRINCIPLES_RETRIEVED,
            decision="retrieved",
            payload={"principles": ids, "source": key, "available": len(index.principles)},
        )
        ctx.trace(
            "REQUEST_ANALYSIS_CONTEXT",
            {
                "relevant_principles": [
                    {"id": p.id, "score": round(s, 4), "hard": p.hard} for p, s in found
                ],
                "constitution_domain": key,
                "retrieval_count": 1,
                "reuse_targets": "every critic of this request",
                "prefilter_cache_status": "miss",
                "parallel_retrieval": False,
            },
        )
    return [p for p, _ in found]
