"""The `validate` node: deterministic parsing, JSON Schema validation, bounded graduated repair.

Order of work, cheapest first:

1. the lenient parser of `nodes._support.jsonfix` (code fences, prose, trailing commas, Python
   literals, single quotes) — no model call;
2. JSON Schema validation (`jsonschema`, the draft the schema declares, 2020-12 otherwise),
   plus two checks JSON Schema lacks: NaN and infinities (which some models write and
   Python's parser reads) are errors, not numbers; and a text the parser had to close (a
   string or brackets left open: an answer cut off, as at a token limit) is an error
   even when what is left fits the schema, since its last value may be incomplete (`4`
   of `42.5`); a repair asks for the answer in full (`ANSWER_TRUNCATED`);
3. up to `max_repairs` calls to `repair_model`, then up to `max_escalations` calls to
   `escalate_model` (`REPAIR_ESCALATED` marks the switch). Each call gets the schema, the
   concrete validation errors and the last bad text only — never the whole history, so
   prompts stay small and the cost of a repair is bounded.

The loop never makes more than `max_repairs + max_escalations` model calls. It stops early
when the request is degraded (soft deadline passed) or a call is refused for budget, and a
model that fails (transient error, open circuit) just uses up its attempt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema.protocols import Validator
from pydantic import BaseModel, Field

from engine import BudgetExceeded, CircuitOpen, Node, NodeContext, TransientError
from nodes._support.calls import cut_off
from nodes._support.jsonfix import JsonFixError, parse_lenient
from nodes._support.schemas import Unresolvable, unresolved, validator

__all__ = ["ValidateNode"]

VALIDATION_PASSED = "VALIDATION_PASSED"
VALIDATION_FAILED = "VALIDATION_FAILED"
REPAIR_ATTEMPTED = "REPAIR_ATTEMPTED"
REPAIR_ESCALATED = "REPAIR_ESCALATED"

_REPAIR_SYSTEM = (
    "You fix JSON so that it validates against a JSON Schema. Reply with the corrected JSON "
    "only: no prose, no code fences. Keep every value that is already valid."
)


class _Check:
    """The outcome of parsing and validating one text."""

    __slots__ = ("errors", "fixes", "parsed", "value")

    def __init__(
        self, value: Any, errors: list[str], fixes: tuple[str, ...], *, parsed: bool
    ) -> None:
        self.value = value
        self.errors = errors
        self.fixes = fixes
        self.parsed = parsed

    @property
    def valid(self) -> bool:
        return self.parsed and not self.errors


class ValidateNode(Node):
    """Parses and validates structured output against a JSON Schema, repairing it if needed."""

    type_name = "validate"
    event_types = (VALIDATION_PASSED, VALIDATION_FAILED, REPAIR_ATTEMPTED, REPAIR_ESCALATED)
    model_keys = ("repair_model", "escalate_model")
    schema_keys = ("schema",)

    class Config(BaseModel):
        """Settings of a `validate` node."""

        schema_: dict[str, Any] = Field(
            alias="schema", description="The JSON Schema the value must satisfy."
        )
        text: str | None = Field(
            default=None, description="The raw model output to parse and validate."
        )
        value: Any = Field(
            default=None,
            description="An already parsed value (e.g. `{{ answer.json }}`), checked before "
            "`text` is parsed.",
        )
        repair_model: str | None = Field(
            default=None, description="Logical model for the first repairs (a small one)."
        )
        escalate_model: str | None = Field(
            default=None, description="Logical model for repairs after `repair_model` failed."
        )
        max_repairs: int = Field(
            default=2, ge=0, le=10, description="Repair calls allowed on `repair_model`."
        )
        max_escalations: int = Field(
            default=1, ge=0, le=10, description="Repair calls allowed on `escalate_model`."
        )
        context: str | None = Field(
            default=None,
            description="A short description of what the JSON is for, given to repairers.",
        )
        max_errors: int = Field(
            default=8, ge=1, description="How many validation errors a repair prompt lists."
        )
        max_text_chars: int = Field(
            default=6000, ge=100, description="The bad text is cut to this many characters."
        )

        model_config = {"populate_by_name": True}

    class Output(BaseModel):
        """What a `validate` node returns."""

        valid: bool = Field(description="True when the value satisfies the schema.")
        value: Any = Field(description="The parsed value (the last one tried when invalid).")
        text: str = Field(description="The value as JSON text (the last text when invalid).")
        attempts: int = Field(description="Repair calls made (0 when no model was needed).")
        repaired_by: str | None = Field(
            description="`parser` when deterministic fixes sufficed, the logical model whose "
            "repair validated, or None when the input was valid as is (or never became valid)."
        )
        errors: list[str] = Field(description="Remaining validation errors (empty if valid).")
        fixes: list[str] = Field(description="Deterministic parser fixes that were applied.")
        cost_usd: float = Field(description="Dollars spent on repair calls.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Validate, then repair within the configured bounds."""
        validator = self._validator(config.schema_)
        check = self._initial(config, validator)
        if check.valid:
            return self._passed(ctx, check, _check_text(check, config), 0, None, 0.0)
        last_text = config.text if config.text is not None else _dump(config.value)
        attempts, cost, stop_reason, escalated = 0, 0.0, "EXHAUSTED", False
        for stage, model in self._plan(config):
            if ctx.degraded:
                stop_reason = "DEGRADED"
                break
            if stage == "escalate" and not escalated:
                escalated = True
                ctx.emit(
                    REPAIR_ESCALATED,
                    decision=model,
                    reason_codes=["REPAIRS_EXHAUSTED" if attempts else "NO_REPAIR_MODEL"],
                    payload={"after_attempts": attempts, "errors": check.errors[:3]},
                )
            attempts += 1
            ctx.emit(
                REPAIR_ATTEMPTED,
                decision=model,
                reason_codes=_repair_codes(check),
                payload={"attempt": attempts, "stage": stage, "errors": len(check.errors)},
            )
            try:
                completion = await ctx.model(model).complete(
                    prompt=_repair_prompt(config, check, last_text),
                    system=_REPAIR_SYSTEM,
                    schema=config.schema_,
                    task="repair",
                )
            except BudgetExceeded:
                stop_reason = "BUDGET_EXCEEDED"
                break
            except (TransientError, CircuitOpen) as exc:
                ctx.log.warning("validate.repair_failed", model=model, error=str(exc))
                continue
            cost += completion.cost_usd
            last_text = completion.text
            check = _check(validator, completion.json, completion.text)
            if check.valid:
                return self._passed(ctx, check, last_text, attempts, model, cost)
        ctx.emit(
            VALIDATION_FAILED,
            decision="invalid",
            reason_codes=[stop_reason],
            payload={"attempts": attempts, "errors": check.errors[: config.max_errors]},
        )
        return self.Output(
            valid=False,
            value=check.value,
            text=last_text or "",
            attempts=attempts,
            repaired_by=None,
            errors=check.errors,
            fixes=list(check.fixes),
            cost_usd=cost,
        )

    def _initial(self, config: Config, validator: Validator) -> _Check:
        if config.value is not None:
            check = _check(validator, config.value, None)
            if check.valid or config.text is None:
                return check
        if config.text is None:
            return _Check(None, ["no value or text to validate"], (), parsed=False)
        return _check(validator, None, config.text)

    def _plan(self, config: Config) -> Iterator[tuple[str, str]]:
        if config.repair_model:
            for _ in range(config.max_repairs):
                yield "repair", config.repair_model
        if config.escalate_model:
            for _ in range(config.max_escalations):
                yield "escalate", config.escalate_model

    def _passed(
        self,
        ctx: NodeContext,
        check: _Check,
        text: str,
        attempts: int,
        model: str | None,
        cost: float,
    ) -> Output:
        repaired_by = model or ("parser" if check.fixes else None)
        codes = ["REPAIRED"] if model else ["PARSER_FIXES"] if check.fixes else ["VALID_AS_IS"]
        ctx.emit(
            VALIDATION_PASSED,
            decision="valid",
            reason_codes=codes,
            payload={"attempts": attempts, "repaired_by": repaired_by, "fixes": list(check.fixes)},
        )
        return self.Output(
            valid=True,
            value=check.value,
            text=_dump(check.value) if check.fixes or model else text,
            attempts=attempts,
            repaired_by=repaired_by,
            errors=[],
            fixes=list(check.fixes),
            cost_usd=cost,
        )

    def _validator(self, schema: dict[str, Any]) -> Validator:
        """A compiled validator (a schema written with `{{ }}` is only checked now)."""
        return validator(schema)


def _check_text(check: _Check, config: ValidateNode.Config) -> str:
    """The text to report for a value that was valid before any repair."""
    if config.text is not None and not check.fixes and config.value is None:
        return config.text
    return _dump(check.value)


_CUT_OFF = (
    "$: the text stops before its end (cut off, as at a token limit): the parser closed "
    "what was open, so the last value may be incomplete; answer again in full"
)


def _repair_codes(check: _Check) -> list[str]:
    """Why a repair is asked for: not JSON, schema errors, a cut-off answer (or both)."""
    if not check.parsed:
        return ["NOT_JSON"]
    if not cut_off(check.fixes):
        return ["SCHEMA_ERRORS"]
    return ["SCHEMA_ERRORS", "ANSWER_TRUNCATED"] if len(check.errors) > 1 else ["ANSWER_TRUNCATED"]


def _check(compiled: Validator, value: Any, text: str | None) -> _Check:
    fixes: tuple[str, ...] = ()
    if value is None and text is not None:
        try:
            parsed = parse_lenient(text)
        except JsonFixError as exc:
            return _Check(None, [str(exc)], (), parsed=False)
        value, fixes = parsed.value, parsed.fixes
    try:
        errors = sorted(_describe(e) for e in compiled.iter_errors(value))
    except Unresolvable as exc:  # a `$ref` only this value's validation reached
        raise unresolved(exc) from None
    if cut_off(fixes):  # closed by the parser: the last value may be missing its end
        errors.append(_CUT_OFF)
    # NaN passes every `minimum`/`maximum` and is no JSON; a value read from text can only
    # hold one if the text spells it, so only those (and handed-in values) are walked
    if text is None or "NaN" in text or "Infinity" in text:
        errors.extend(_non_finite(value))
    return _Check(value, errors, fixes, parsed=True)


def _non_finite(value: Any) -> list[str]:
    """Where `value` holds NaN or an infinity (iteratively: values nest deeply)."""
    found, stack = [], [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            found.append(f"{path}: {item!r} is not a JSON number; use a finite number or null")
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return sorted(found)


def _describe(error: jsonschema.ValidationError) -> str:
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
    return f"{path}: {error.message}"


def _repair_prompt(config: ValidateNode.Config, check: _Check, last_text: str | None) -> str:
    bad = (last_text or "")[: config.max_text_chars]
    errors = "\n".join(f"- {e}" for e in check.errors[: config.max_errors])
    more = len(check.errors) - config.max_errors
    if more > 0:
        errors += f"\n- ... and {more} more"
    parts = [
        f"Purpose: {config.context}" if config.context else "",
        "JSON Schema:\n" + json.dumps(config.schema_, indent=None, sort_keys=True),
        "Errors:\n" + errors,
        "Text to fix:\n" + bad,
    ]
    return "\n\n".join(p for p in parts if p)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
