"""The `model` node: one call to a logical model, with optional structured output.

Give it either `prompt` or `messages` (`[{role, content}, ...]`), optionally a `system`
message and a JSON `schema`. With a schema (or `json_mode`), `json` holds the parsed value:
the provider's own parse when it has one, otherwise the deterministic lenient parser of
`nodes._support.jsonfix`; it stays `None` when the answer is not JSON (a `validate` node downstream
can repair it). `task` is passed through to the gateway (`answer` by default) so the `sim`
provider answers plausibly.
"""

from __future__ import annotations

import warnings
from typing import Any

import jsonschema
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from engine import Node, NodeContext, at_check
from nodes._support.jsonfix import JsonFixError, parse_lenient
from nodes._support.schemas import validator

__all__ = ["ModelNode"]

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
"""The chat roles a `messages:` entry may take (OpenAI's, which every provider maps)."""

# `json` shadows the deprecated `BaseModel.json()`; expressions read fields by name, and the
# design promises `NODE.json`, so the field keeps that name and the warning is silenced here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class _ModelOutput(BaseModel):
        """What a `model` node returns."""

        text: str = Field(description="The answer's text.")
        json: Any = Field(
            default=None,
            description="The parsed JSON value when a schema or json_mode was asked for "
            "(None when the answer is not JSON).",
        )
        model: str = Field(description="The logical model that answered.")
        provider_model: str = Field(description="What the provider calls the model.")
        input_tokens: int = Field(description="Prompt tokens.")
        output_tokens: int = Field(description="Answer tokens.")
        tokens: int = Field(description="Prompt plus answer tokens.")
        cost_usd: float = Field(description="Cost of the call in dollars.")
        latency_ms: float = Field(description="Latency of the call in milliseconds.")
        simulated: bool = Field(description="True when the `sim` provider answered.")


class ModelNode(Node):
    """Makes one call to a logical model (prompt or messages, optional JSON schema)."""

    type_name = "model"
    model_keys = ("model",)

    class Config(BaseModel):
        """Settings of a `model` node."""

        model: str = Field(description="Logical model name (a key of the graph's `models:`).")
        prompt: str | None = Field(default=None, description="The user message.")
        messages: list[dict[str, str]] | None = Field(
            default=None,
            description="A full chat as `[{role, content}, ...]`, instead of `prompt`.",
        )
        system: str | None = Field(default=None, description="An optional system message.")
        schema_: dict[str, Any] | None = Field(
            default=None,
            alias="schema",
            description="A JSON Schema the answer must follow (asks for structured output).",
        )
        json_mode: bool = Field(
            default=False, description="Ask for a JSON object without a schema."
        )
        task: str = Field(
            default="answer",
            description="What the call is for (answer, draft, extract, ...); `sim` uses it.",
        )
        max_tokens: int | None = Field(
            default=None, gt=0, description="Upper bound on the answer's length in tokens."
        )
        temperature: float | None = Field(
            default=None, ge=0, le=2, description="Sampling temperature, when supported."
        )

        model_config = {"populate_by_name": True}

        @field_validator("schema_")
        @classmethod
        def _schema_valid(cls, value: Any, info: ValidationInfo) -> Any:
            if value is not None and at_check(info):  # once, at `moat check`
                try:
                    jsonschema.validators.validator_for(value).check_schema(value)
                except jsonschema.SchemaError as exc:
                    where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                    raise ValueError(
                        f"not a JSON Schema at {where}: {exc.message} "
                        "(https://json-schema.org/understanding-json-schema)"
                    ) from None
            return value

        @field_validator("messages")
        @classmethod
        def _messages_usable(cls, value: list[dict[str, str]] | None) -> Any:
            if value is None:
                return value
            if not value:
                raise ValueError("an empty chat; give at least one {role, content} message")
            for i, message in enumerate(value):
                role = message.get("role")
                if role not in _ROLES:
                    shown = "no role" if role is None else f"role {role!r}"
                    raise ValueError(f"message #{i} has {shown}; use one of {', '.join(_ROLES)}")
                if "content" not in message:
                    raise ValueError(f"message #{i} ({role}) has no content")
            return value

        @model_validator(mode="after")
        def _prompt_or_messages(self) -> ModelNode.Config:
            if (self.prompt is None) == (self.messages is None):
                raise ValueError("give exactly one of 'prompt' or 'messages'")
            return self

    Output = _ModelOutput

    async def run(self, config: Config, ctx: NodeContext) -> _ModelOutput:
        """Make the call and return its text, parsed JSON, tokens and cost."""
        structured = config.schema_ is not None or config.json_mode
        if config.schema_ is not None:  # a `{{ }}` schema is only known now: never send junk
            validator(config.schema_)
        completion = await ctx.model(config.model).complete(
            prompt=config.prompt,
            messages=config.messages,
            system=config.system,
            schema=config.schema_,
            json_mode=config.json_mode,
            task=config.task,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )
        value = completion.json
        if structured and value is None:
            try:
                value = parse_lenient(completion.text).value
            except JsonFixError:
                value = None
        return self.Output(
            text=completion.text,
            json=value if structured else None,
            model=completion.model,
            provider_model=completion.provider_model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            tokens=completion.input_tokens + completion.output_tokens,
            cost_usd=completion.cost_usd,
            latency_ms=completion.latency_ms,
            simulated=completion.simulated,
        )
