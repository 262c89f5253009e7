"""The `router` node: picks a route (and its model) from features, exemplars, history and budget.

Routes are ordered cheapest first (or by their `tier`). For each request the router:

1. computes text features (`nodes._support.features`: length, structure, question type, code,
   multi-step markers) into a complexity score;
2. compares the text with each route's labelled `exemplars` (hashing embedder);
3. picks the exemplar route when its similarity reaches `threshold` with a `margin` over
   the runner-up, otherwise the route whose tier fits the complexity (`complexity_threshold`
   splits cheap from capable when there are two routes);
4. consults what happened to near-duplicate past requests of the same tenant: a failure of
   the chosen route escalates one tier, a success of a cheaper route (and no failure of it)
   steps down to it;
5. falls back to the cheapest route when `ctx.remaining_usd` is under `budget_floor_usd`.

With `weights:` (a file `python -m bench.router_train` writes, or `builtin` for the shipped
one) step 3 is learned instead: a per-model logistic regression on request-time features
predicts each route's chance that its answer checks out (`nodes._support.learned`), and
the router takes the cheapest route whose chance reaches `min_p_correct`, else the route
with the best chance. Exemplars, history and the budget floor still apply around it.

Outcomes are learnt from a second node in `mode: feedback` (e.g. after a `validate`),
sharing the router's `namespace`; with `learn_on_success` the router also records a success
when the request succeeds. Thresholds are ordinary config values, so graphs can take them
from the policy: `threshold: "{{ policy.router.threshold }}"`.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from engine import Node, NodeContext, NodeError, at_check, graph_file
from nodes._support.embed import HashingEmbedder, QVector, cosine, qcosine, quantize, words
from nodes._support.features import Features, features
from nodes._support.learned import BUILTIN, LearnedRouter, load_router
from nodes._support.lsh import MinHashIndex

__all__ = ["RouterMemory", "RouterNode"]

ROUTE_SELECTED = "ROUTE_SELECTED"


class Route(BaseModel):
    """One route of a `router`."""

    model: str = Field(description="Logical model the route uses.")
    exemplars: list[str] = Field(
        default_factory=list, description="Labelled example requests that belong here."
    )
    tier: int | None = Field(
        default=None, description="Capability/cost rank (0 cheapest); default: position."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        # a misspelt `exemplar:` or `teir:` would be dropped and the route silently differ
        if isinstance(value, dict):
            keys = sorted(cls.model_fields)
            for key in value:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), keys, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(f"unknown route key {key!r}{hint}; keys: {', '.join(keys)}")
        return value


@dataclass(slots=True)
class _Outcome:
    route: str
    ok: bool
    vector: QVector


class RouterMemory:
    """Outcomes of past requests per tenant, searchable by near-duplicate text.

    Bounded twice, since tenant names come from requests: `max_per_tenant` outcomes per
    tenant and `max_tenants` tenants, the least recently recorded one forgotten beyond it.
    """

    def __init__(self, max_per_tenant: int = 5000, max_tenants: int = 10_000) -> None:
        self.max_per_tenant = max_per_tenant
        self.max_tenants = max_tenants
        self._embedder = HashingEmbedder()
        self._tenants: OrderedDict[str, tuple[OrderedDict[str, _Outcome], MinHashIndex]] = (
            OrderedDict()
        )
        self._seq = 0

    def record(self, tenant: str, text: str, route: str, ok: bool) -> None:
        """Remember that `route` succeeded (`ok`) or failed on `text`."""
        items, index = self._tenants.setdefault(tenant, (OrderedDict(), MinHashIndex()))
        self._tenants.move_to_end(tenant)
        if len(self._tenants) > self.max_tenants:
            self._tenants.popitem(last=False)
        self._seq += 1
        key = str(self._seq)
        items[key] = _Outcome(route, ok, quantize(self._embedder.embed_one(text)))
        index.add(key, index.signature(words(text)))
        while len(items) > self.max_per_tenant:
            old, _ = items.popitem(last=False)
            index.remove(old)

    def similar(self, tenant: str, text: str, threshold: float) -> list[tuple[str, bool, float]]:
        """(route, ok, similarity) of past outcomes at least `threshold` similar to `text`."""
        if tenant not in self._tenants:
            return []
        items, index = self._tenants[tenant]
        q = quantize(self._embedder.embed_one(text))
        out = []
        for key in index.candidates(index.signature(words(text)), 16):
            outcome = items.get(key)
            if outcome is not None and (sim := qcosine(q, outcome.vector)) >= threshold:
                out.append((outcome.route, outcome.ok, sim))
        return out


class RouterNode(Node):
    """Chooses a route and model from text features, exemplars, past outcomes and budget."""

    type_name = "router"
    model_keys = ("routes.*.model",)
    event_types = (ROUTE_SELECTED,)

    class Config(BaseModel):
        """Settings of a `router` node."""

        text: str = Field(description="The request text to route.")
        routes: dict[str, Route] = Field(
            min_length=1, description="Route name -> {model, exemplars, tier}, cheapest first."
        )
        mode: Literal["route", "feedback"] = Field(
            default="route",
            description="`route` picks a route; `feedback` records how `route` did on `text`.",
        )
        route: str | None = Field(
            default=None, validate_default=True, description="Feedback mode: the route used."
        )

        @field_validator("route")
        @classmethod
        def _route_named(cls, value: str | None, info: ValidationInfo) -> str | None:
            # what every feedback run would refuse (`_feedback`), said once by `moat check`
            routes = info.data.get("routes")
            if routes is None or not at_check(info, "mode", "route", "routes"):
                return value
            if info.data.get("mode") == "feedback" and value not in routes:
                got = "no `route:` is given" if value is None else f"{value!r} is no route"
                raise ValueError(
                    f"`mode: feedback` records how a route did, but {got}; set `route:` to "
                    f"the route the request took (routes: {', '.join(routes)}), e.g. "
                    '`route: "{{ pick.route }}"` for a router node `pick`'
                )
            return value

        ok: bool = Field(
            default=True, description="Feedback mode: whether the route's answer was good."
        )
        namespace: str = Field(default="default", description="Memory shared with feedback nodes.")
        threshold: float = Field(
            default=0.6, ge=0, le=1, description="Exemplar similarity that decides a route."
        )
        margin: float = Field(
            default=0.05, ge=0, le=1, description="Lead over the runner-up exemplar route needed."
        )
        complexity_threshold: float = Field(
            default=0.45, ge=0, le=1, description="Complexity from which capable routes win."
        )
        budget_floor_usd: float = Field(
            default=0.0, ge=0, description="Under this remaining budget, take the cheapest route."
        )
        memory_threshold: float = Field(
            default=0.85,
            ge=0,
            le=1,
            description="Similarity of a past request that counts as near-duplicate.",
        )
        weights: str | None = Field(
            default=None,
            description="A learned routing model: `builtin` (shipped) or a weights file "
            "(relative to the graph) from `python -m bench.router_train`. Replaces the "
            "complexity threshold.",
        )

        @field_validator("weights")
        @classmethod
        def _weights_load(cls, value: str | None, info: ValidationInfo) -> str | None:
            path = graph_file(value, info) if value not in (None, BUILTIN) else None
            if path is not None:  # `moat check`: a file every request would fail on
                load_router(path)
            return value

        min_p_correct: float = Field(
            default=0.8,
            ge=0,
            le=1,
            description="With `weights`: the predicted chance of a right answer a route must "
            "reach; the cheapest such route wins.",
        )
        learn_on_success: bool = Field(
            default=False,
            description="Record a success for the chosen route when the request succeeds.",
        )

    class Output(BaseModel):
        """What a `router` node returns."""

        route: str = Field(description="The chosen route.")
        model: str = Field(description="The chosen route's logical model.")
        score: float = Field(description="The deciding signal's value (similarity or complexity).")
        confidence: float = Field(description="How clear the choice was, in [0, 1].")
        complexity: float = Field(description="The text's complexity score in [0, 1].")
        reasons: list[str] = Field(description="Reason codes, deciding one first.")
        predicted: dict[str, float] = Field(
            default_factory=dict,
            description="With `weights`: each route's predicted chance of a right answer.",
        )

    def __init__(self) -> None:
        self._embedder = HashingEmbedder()
        self._exemplars: dict[str, list[list[float]]] = {}
        self._exemplar_source: object = None

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Pick a route (or record feedback)."""
        memory = ctx.shared.get("router:" + config.namespace, RouterMemory)
        order = sorted(config.routes, key=lambda n: _tier(config, n))
        if config.mode == "feedback":
            return self._feedback(config, ctx, memory, order)
        feats = features(config.text)
        learned = _learned(config, ctx)
        predicted: dict[str, float] = {}
        route, score, confidence, reasons = self._decide(config, feats, order, learned, predicted)
        route, reasons = _apply_history(config, ctx, memory, order, route, reasons)
        remaining = ctx.remaining_usd
        if remaining is not None and remaining < config.budget_floor_usd and route != order[0]:
            route, confidence, reasons = order[0], 1.0, ["BUDGET_LOW", *reasons]
        if config.learn_on_success:
            tenant, text, chosen = ctx.request.tenant, config.text, route

            async def learn() -> None:
                memory.record(tenant, text, chosen, True)

            ctx.after_success(learn)
        out = self.Output(
            route=route,
            model=config.routes[route].model,
            score=round(score, 4),
            confidence=round(confidence, 4),
            complexity=round(feats.complexity, 4),
            reasons=reasons,
            predicted=predicted,
        )
        payload: dict[str, object] = {
            "model": out.model,
            "score": out.score,
            "confidence": out.confidence,
            "complexity": out.complexity,
            "prompt_class": feats.prompt_class,
            "remaining_usd": remaining,
        }
        if predicted:
            payload["predicted"] = predicted
        ctx.emit(ROUTE_SELECTED, decision=route, reason_codes=reasons, payload=payload)
        return out

    def _decide(
        self,
        config: Config,
        feats: Features,
        order: list[str],
        learned: LearnedRouter | None,
        predicted: dict[str, float],
    ) -> tuple[str, float, float, list[str]]:
        sims = self._similarities(config)
        ranked = sorted(sims.items(), key=lambda kv: -kv[1])
        if ranked:
            best, best_sim = ranked[0]
            runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
            if best_sim >= config.threshold and best_sim - runner_up >= config.margin:
                confidence = min(1.0, 0.5 + (best_sim - runner_up) * 2)
                return best, best_sim, confidence, ["EXEMPLAR_MATCH", *feats.reasons]
        if learned is not None:
            return _learned_choice(config, learned, order, predicted, feats)
        c = feats.complexity
        if len(order) == 1 or c < config.complexity_threshold:
            index = 0
        else:
            # spread the capable tiers over [threshold, 1]
            span = (1.0 - config.complexity_threshold) / (len(order) - 1)
            index = min(
                len(order) - 1, 1 + int((c - config.complexity_threshold) / max(span, 1e-9))
            )
        code = "COMPLEXITY_HIGH" if index else "COMPLEXITY_LOW"
        confidence = min(1.0, abs(c - config.complexity_threshold) * 2)
        return order[index], c, confidence, [code, *feats.reasons]

    def _similarities(self, config: Config) -> dict[str, float]:
        source = {n: tuple(r.exemplars) for n, r in config.routes.items()}
        if source != self._exemplar_source:
            # built once per distinct route set, not per request
            self._exemplars = {
                n: [self._embedder.embed_one(e) for e in ex] for n, ex in source.items()
            }
            self._exemplar_source = source
        if not any(self._exemplars.values()):
            return {}
        q = self._embedder.embed_one(config.text)
        return {
            n: max((cosine(q, v) for v in vecs), default=0.0)
            for n, vecs in self._exemplars.items()
            if vecs
        }

    def _feedback(
        self, config: Config, ctx: NodeContext, memory: RouterMemory, order: list[str]
    ) -> Output:
        route = config.route if config.route in config.routes else None
        if route is None:
            names = ", ".join(order)
            raise NodeError(
                f"feedback got route {config.route!r}; use one of the routes: {names}",
                node_id=ctx.node_id,
                request_id=ctx.request.id,
            )
        memory.record(ctx.request.tenant, config.text, route, config.ok)
        ctx.log.debug("router.feedback", route=route, ok=config.ok)
        return self.Output(
            route=route,
            model=config.routes[route].model,
            score=1.0 if config.ok else 0.0,
            confidence=1.0,
            complexity=0.0,
            reasons=["FEEDBACK_OK" if config.ok else "FEEDBACK_FAILED"],
        )


def _learned(config: RouterNode.Config, ctx: NodeContext) -> LearnedRouter | None:
    """The learned routing model `weights` names, or a NodeError saying what is wrong."""
    if config.weights is None:
        return None
    source = (
        config.weights
        if config.weights == "builtin"
        else ctx.resolve_path(config.weights, key="weights")
    )
    try:
        learned = load_router(source)
    except (OSError, ValueError) as exc:
        raise NodeError(
            f"router weights {config.weights!r} cannot be used: {exc}; train a file with "
            "`python -m bench.router_train` or use `weights: builtin`",
            node_id=ctx.node_id,
            request_id=ctx.request.id,
        ) from None
    known = [
        n for n, r in config.routes.items() if (r.model in learned.weights or n in learned.weights)
    ]
    if not known:
        raise NodeError(
            f"router weights {config.weights!r} know the models "
            f"{sorted(learned.weights)}, none of this router's routes; name routes or "
            "their models after them",
            node_id=ctx.node_id,
            request_id=ctx.request.id,
        )
    return learned


def _learned_choice(
    config: RouterNode.Config,
    learned: LearnedRouter,
    order: list[str],
    predicted: dict[str, float],
    feats: Features,
) -> tuple[str, float, float, list[str]]:
    """The cheapest route predicted to reach `min_p_correct`, else the likeliest one."""
    chances = learned.predict(config.text)
    for name in order:
        model = config.routes[name].model
        key = model if model in chances else name if name in chances else None
        if key is not None:
            predicted[name] = round(chances[key], 4)
    for name in order:
        if name in predicted and predicted[name] >= config.min_p_correct:
            margin = predicted[name] - config.min_p_correct
            return (
                name,
                predicted[name],
                min(1.0, 0.5 + margin * 2),
                ["LEARNED_SUFFICIENT", *feats.reasons],
            )
    best = max(predicted, key=lambda n: (predicted[n], -order.index(n)))
    return best, predicted[best], 0.5, ["LEARNED_BEST_CHANCE", *feats.reasons]


def _tier(config: RouterNode.Config, name: str) -> tuple[int, int]:
    position = list(config.routes).index(name)
    tier = config.routes[name].tier
    return (tier if tier is not None else position, position)


def _apply_history(
    config: RouterNode.Config,
    ctx: NodeContext,
    memory: RouterMemory,
    order: list[str],
    route: str,
    reasons: list[str],
) -> tuple[str, list[str]]:
    """Escalate after a near-duplicate failed on `route`; step down after a cheaper success."""
    past = memory.similar(ctx.request.tenant, config.text, config.memory_threshold)
    if not past:
        return route, reasons
    failed = {r for r, ok, _ in past if not ok}
    succeeded = {r for r, ok, _ in past if ok}
    rank = order.index(route)
    if route in failed and route not in succeeded and rank + 1 < len(order):
        return order[rank + 1], ["PAST_FAILURE_NEAR_DUPLICATE", *reasons]
    cheaper = [r for r in order[:rank] if r in succeeded and r not in failed]
    if cheaper:
        return cheaper[0], ["PAST_SUCCESS_CHEAPER", *reasons]
    return route, reasons
