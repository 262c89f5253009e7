"""The graph file format as pydantic models (README, "A graph"), before any checking.

These models only describe shape and types. Meaning (node types, references, cycles,
policy keys) is checked by `engine.graph.check`; location of every value is kept by the loader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "Budget",
    "FaultRates",
    "GraphSpec",
    "Limits",
    "LoopSpec",
    "ModelSpec",
    "NodeSpec",
    "Price",
    "endpoint_problem",
]

NODE_ID_PATTERN = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class Price(_Strict):
    """Dollars per million tokens."""

    input: float = Field(ge=0)
    """Price of one million input tokens."""
    output: float = Field(ge=0)
    """Price of one million output tokens."""


class FaultRates(_Strict):
    """Fault injection for the `sim` provider, each a probability per call attempt."""

    error: float = Field(default=0.0, ge=0, le=1)
    """A 500-style server error (transient)."""
    timeout: float = Field(default=0.0, ge=0, le=1)
    """The call hangs until the node's timeout."""
    rate_limit: float = Field(default=0.0, ge=0, le=1)
    """A 429 with `Retry-After`."""
    malformed: float | None = Field(default=None, ge=0, le=1)
    """Override of the profile's malformed-JSON rate."""


def endpoint_problem(url: str | None) -> str | None:
    """What keeps `url` from being an endpoint the client can call (None: nothing)."""
    if url is None:
        return None
    if not url.strip():
        return "is empty"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an absolute http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    return None


class ModelSpec(_Strict):
    """One logical model of the graph's `models:` (strings may use `${VAR:-default}`)."""

    provider: Literal["sim", "openai"]
    """`sim` (embedded, simulated, no network) or `openai` (any OpenAI-compatible endpoint)."""
    profile: Literal["small", "medium", "large"] | None = None
    """For `sim`: which simulated model (latency, price, capability, malformed-JSON rate)."""
    model: str | None = None
    """For `openai`: the provider's model name (`gpt-4o-mini`)."""
    base_url: str | None = None
    """For `openai`: the endpoint; defaults to the client's (env `OPENAI_BASE_URL`)."""
    api_key_env: str | None = None
    """For `openai`: the environment variable holding the key (default `OPENAI_API_KEY`)."""
    price: Price | None = None
    """Dollars per million tokens; `sim` profiles have their own defaults."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Calls in flight to this model at once, across all requests of the process."""
    remote: bool | None = None
    """Whether text leaves the machine (default: true for `openai`, false for `sim`)."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Per-call HTTP timeout."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Gateway retries on 429, 5xx and timeouts (backoff with jitter, honours Retry-After)."""
    seed: int = 0
    """For `sim`: base seed; answers depend on it and on (request, node, cycle, attempt)."""
    faults: FaultRates | None = None
    """For `sim`: injected faults."""
    time_scale: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """For `sim`: multiply simulated latencies (0 makes them instant; `.inf` is refused, as
    every call would hang until cut off)."""
    fallback: str | None = None
    """Another logical model that answers when this one is unreachable or held back (the
    policy's `egress.offline`, a gate, a failed probe, an open circuit, a refused
    connection); the request is then marked degraded (README, "At the edge")."""

    @field_validator("base_url")
    @classmethod
    def _an_endpoint(cls, value: str | None) -> str | None:
        problem = endpoint_problem(value)
        if problem is not None:
            raise ValueError(
                f"base_url {value!r} {problem}: write the endpoint's whole URL, such as "
                "http://localhost:8000/v1"
            )
        return value


class Budget(_Strict):
    """Per-request limits."""

    cost_usd: float | None = Field(default=None, gt=0)
    """Dollars a request may spend on model calls (checked before each call, worst case)."""
    soft_deadline_ms: float | None = Field(default=None, gt=0)
    """After this, `request.degraded` is true and loops stop after their current cycle."""
    deadline_ms: float | None = Field(default=None, gt=0)
    """After this, remaining work is cancelled: `deadline_exceeded`, or `partial`."""
    partial: bool = False
    """At the hard deadline, return the outputs that can be evaluated (`partial`)."""

    @model_validator(mode="after")
    def _soft_before_hard(self) -> Budget:
        soft, hard = self.soft_deadline_ms, self.deadline_ms
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(
                f"soft_deadline_ms ({soft:g}) must come before deadline_ms ({hard:g}): at "
                "the hard deadline the request is cut off, so a soft one at or after it never "
                "degrades anything; make it smaller"
            )
        return self


class Limits(_Strict):
    """What one request may be at most; a larger one is its own `invalid_input`, unread."""

    max_request_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)
    """Bytes of JSON (UTF-8) in one request (default 1 MiB, at most 1 GiB)."""
    max_depth: int = Field(default=64, ge=1, le=500)
    """Levels of nested objects and lists in one request (default 64)."""


class NodeSpec(_Strict):
    """One node of a graph or loop body."""

    type: str
    """A registered node type name."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """The node's config; `{{ EXPR }}` strings are evaluated per request."""
    when: str | bool | None = None
    """Guard expression: false skips the node (value `none`)."""
    speculative: bool | str = False
    """Start before anything demands it: `true`, or an expression decided at run time."""
    timeout_ms: float | None = Field(default=None, gt=0)
    """Per-attempt time limit."""
    retries: int = Field(default=0, ge=0, le=10)
    """Extra attempts on transient errors and timeouts."""
    optional: bool = False
    """Failure or timeout yields `none` instead of failing the request."""
    description: str | None = None
    """Free text for `moat show`."""


class LoopSpec(_Strict):
    """A bounded loop: a body of nodes run up to `max_cycles` times."""

    type: Literal["loop"]
    max_cycles: int = Field(ge=1, le=1000)
    """Required: no loop is unbounded."""
    until: str | bool | None = None
    """Evaluated after each cycle; true stops the loop."""
    nodes: dict[str, AnyNode]
    """The body; each cycle is a fresh scope with `cycle` and `prev`."""
    output: dict[str, str | bool | int | float | None] = Field(default_factory=dict)
    """The loop's outputs, evaluated in the last cycle's scope."""
    when: str | bool | None = None
    speculative: bool | str = False
    timeout_ms: float | None = Field(default=None, gt=0)
    optional: bool = False
    description: str | None = None


def _node_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "loop" if kind == "loop" else "node"


AnyNode = Annotated[
    Annotated[NodeSpec, Tag("node")] | Annotated[LoopSpec, Tag("loop")],
    Discriminator(_node_kind),
]
"""A node or a loop, told apart by `type: loop`."""

LoopSpec.model_rebuild()


SERVE_NAMES = ("history", "messages", "prompt", "system", "tenant", "user")
"""What `serve.input` expressions read: the last user message (`prompt`), the turns before
it (`history`), every turn (`messages`, each `{role, content}`), the system and developer
messages' text (`system`), the `user` field and the caller's `tenant`."""


class ServeSpec(_Strict):
    """How `moat serve` maps a chat request to the graph's input."""

    input: dict[str, str | bool | int | float | None] = Field(default_factory=dict)
    """Input field -> expression over the chat request (see `SERVE_NAMES`); when given, it
    replaces the default mapping (`prompt` and `history`)."""


class GraphSpec(_Strict):
    """A whole graph file."""

    moat: Literal[1]
    """Format version."""
    name: str = Field(min_length=1)
    description: str | None = None
    plugins: list[str] = Field(default_factory=list)
    """Modules to import for extra node types."""
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    policy: str | None = None
    """Default policy snapshot, relative to the graph file."""
    input: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema of one request."""
    budget: Budget = Field(default_factory=Budget)
    limits: Limits = Field(default_factory=Limits)
    """Size and nesting limits of one request."""
    nodes: dict[str, AnyNode]
    output: dict[str, str | bool | int | float | None]
    """The request's result: name -> expression."""
    serve: ServeSpec | None = None
    """How `moat serve` maps a chat request to the input (default: the last user message
    is `prompt`, earlier turns are `history`)."""
