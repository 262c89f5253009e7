"""The `cascade` node: answers with the cheapest model whose stated confidence clears a bar.

Models are listed cheapest first. The node asks the first one (or the one `start` names,
typically a `router`'s choice) for an answer and its confidence in it (a JSON object
`{answer, confidence}`; verbalised confidence is what any chat endpoint can give, and
what a calibrated model states is its chance of being right). An answer whose confidence
reaches `accept_at` is returned; otherwise the next model is asked, up to `max_steps`
calls. The last readable answer is returned when no model clears the bar (`accepted` is
then false, so a graph can review it more closely).

Why a cascade on confidence rather than a verifier: the model that answered knows how
hard the request was for it, and asking costs no extra call. Cascades of this shape
(FrugalGPT, Chen et al. 2023; "cascade on self-reported confidence") keep large-model
quality while sending only the uncertain slice to the large model, provided the
confidence is calibrated, which the bench's calibration curves check.

An answer is unreadable when it is not a JSON object with a non-empty `answer` and a
`confidence` in [0, 1] (`"0.9"` reads as 0.9; NaN, 7 or a missing key do not), or when it
was cut off mid-object (`UNPARSEABLE`, `TRUNCATED`, `ANSWER_UNREADABLE`): it counts as
confidence 0 (it escalates, and is never accepted) and is kept only when no model answers
readably (`readable` is then false: a graph that caches answers, or shows them without
review, should ask for it).

What is kept of an unreadable answer is what a reader can use, never the JSON around it:
its `answer` string as far as the lenient parser reads it (up to the cut, for a reply cut
off at `max_tokens`), or the reply itself when it holds no JSON at all (the model answered
in words). When neither is there (an object without its `answer`, or cut off before it)
`text` is empty: a JSON fragment is no answer to show a user, and an empty one is what a
graph's validation catches (`minLength: 1`); failing the node instead would fail the
request where a later node (a second sample, a revision) can still answer.

`escalate: false` answers with the start model only (the ablation of the cascade). Each
call emits `CASCADE_STEP` with `accepted` or `escalated`; the last one `kept`, or
`discarded` when an earlier answer is kept (a readable one over an unreadable one, some
text over none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, model_validator

from engine import Node, NodeContext, NodeError
from nodes._support.calls import JsonReply, ask_json, object_schema, unit

__all__ = ["CascadeNode"]

CASCADE_STEP = "CASCADE_STEP"

ANSWER_SCHEMA = object_schema(
    {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    ["answer", "confidence"],
)

_INSTRUCTION = (
    "Answer the request. Reply with a JSON object: `answer` (your answer) and `confidence` "
    "(your probability, from 0 to 1, that the answer is correct)."
)


class CascadeNode(Node):
    """Answers with the cheapest listed model whose confidence reaches `accept_at`."""

    type_name = "cascade"
    event_types = (CASCADE_STEP,)
    model_keys = ("models", "start")

    class Config(BaseModel):
        """Settings of a `cascade` node."""

        prompt: str = Field(description="The request to answer.")
        models: list[str] = Field(
            min_length=1, description="Logical models to try, cheapest first."
        )
        start: str | None = Field(
            default=None,
            description="The model to begin with (one of `models`; e.g. a router's choice); "
            "default: the first.",
        )
        accept_at: float = Field(
            default=0.8, ge=0, le=1, description="Stated confidence from which an answer is kept."
        )
        escalate: bool = Field(
            default=True, description="False: answer with the start model only, never escalate."
        )
        max_steps: int = Field(
            default=3, ge=1, le=10, description="Model calls at most (one per model tried)."
        )
        system: str | None = Field(default=None, description="An optional system message.")
        task: str = Field(default="answer", description="The calls' task (`sim` uses it).")
        max_tokens: int | None = Field(default=None, gt=0, description="Answer length bound.")

        @model_validator(mode="after")
        def _start_listed(self) -> CascadeNode.Config:
            if self.start is not None and self.start not in self.models:
                raise ValueError(
                    f"start {self.start!r} is not one of the models {self.models}; "
                    "name one of them or leave start out"
                )
            return self

    class Output(BaseModel):
        """What a `cascade` node returns."""

        text: str = Field(
            description="The answer kept: its `answer` string, as far as it could be read "
            "when the reply was not well-formed (cut off, say), the reply itself when it "
            "held no JSON, or empty when no answer could be read from any reply."
        )
        model: str = Field(description="The logical model whose answer was kept.")
        confidence: float = Field(description="That model's stated confidence, in [0, 1].")
        accepted: bool = Field(description="The kept answer's confidence reached `accept_at`.")
        readable: bool = Field(
            description="The kept answer was read from a well-formed reply (a JSON object "
            "with a non-empty `answer` and a `confidence` in [0, 1], not cut off); false "
            "when no model answered readably (its `confidence` is then 0)."
        )
        steps: int = Field(description="Model calls made.")
        escalated: bool = Field(description="A model after the start one was asked.")
        tried: list[str] = Field(description="The models asked, in order.")
        cost_usd: float = Field(description="The cost of the calls, in dollars.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Ask models in order until one is confident enough."""
        first = config.models.index(config.start) if config.start is not None else 0
        chain = config.models[first:] if config.escalate else [config.models[first]]
        chain = chain[: config.max_steps]
        prompt = f"{_INSTRUCTION}\n\nRequest:\n{config.prompt}"
        best: _Answer | None = None
        tried: list[str] = []
        cost = 0.0
        for i, model in enumerate(chain):
            reply = await ask_json(
                ctx, model, prompt=prompt, schema=ANSWER_SCHEMA, task=config.task,
                system=config.system, max_tokens=config.max_tokens,
            )  # fmt: skip
            tried.append(model)
            cost += reply.completion.cost_usd
            found = _read(model, reply)
            kept = best is None or found.rank >= best.rank  # the later of equals: a larger model
            if kept:
                best = found
            accepted = found.readable and found.confidence >= config.accept_at
            last = i == len(chain) - 1
            ctx.emit(
                CASCADE_STEP,
                decision="accepted" if accepted else "escalated" if not last else _end(kept),
                reason_codes=[
                    "CONFIDENT" if accepted else "UNSURE" if found.readable else _unreadable(reply)
                ],
                payload={"model": model, "confidence": round(found.confidence, 4), "step": i + 1},
            )
            if accepted:
                break
        if best is None:  # unreachable: `models` has at least one entry
            raise NodeError("cascade has no model to ask", node_id=ctx.node_id)
        return self.Output(
            text=best.text,
            model=best.model,
            confidence=round(best.confidence, 4),
            accepted=best.readable and best.confidence >= config.accept_at,
            readable=best.readable,
            steps=len(tried),
            escalated=len(tried) > 1,
            tried=tried,
            cost_usd=cost,
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one model's reply gives: the text to show, and how far to trust it."""

    model: str
    text: str
    confidence: float
    """The stated confidence when `readable`, else 0."""
    readable: bool

    @property
    def rank(self) -> int:
        """2 for a readable answer, 1 for text read from an unreadable one, 0 for none."""
        return 2 if self.readable else 1 if self.text else 0


def _read(model: str, reply: JsonReply) -> _Answer:
    """The answer of a reply: read from its JSON, recovered from a reply cut off or not quite
    well-formed (confidence 0), the reply's words when it holds no JSON, or empty."""
    answer = _answer_of(reply.value if reply.value is not None else reply.partial)
    stated = unit(reply.value.get("confidence")) if reply.value is not None else None
    if answer is not None and stated is not None:
        return _Answer(model, answer, stated, readable=True)
    if answer is None:
        answer = reply.completion.text.strip() if reply.prose else ""
    return _Answer(model, answer, 0.0, readable=False)


def _answer_of(value: dict[str, Any] | None) -> str | None:
    """The `answer` of a reply's object when it is a non-empty string."""
    answer = value.get("answer") if value is not None else None
    return answer if isinstance(answer, str) and answer.strip() else None


def _unreadable(reply: JsonReply) -> str:
    """Why a reply counts as confidence 0."""
    if reply.truncated:
        return "TRUNCATED"
    return "UNPARSEABLE" if reply.value is None else "ANSWER_UNREADABLE"


def _end(kept: bool) -> str:
    """The last step's decision: its answer is `kept`, or `discarded` for an earlier one."""
    return "kept" if kept else "discarded"
