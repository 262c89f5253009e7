"""Binding a graph's logical models for a run: `--model` rebindings, and the refusal of a
cost budget that an unpriced model would keep from ever binding."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.errors import SpecError
from engine.graph.spec import ModelSpec, endpoint_problem
from engine.models.prices import PRICES_AS_OF, is_priced

if TYPE_CHECKING:
    from engine.graph.compiled import Graph

__all__ = ["rebind_models"]


def rebind_models(
    models: Mapping[str, ModelSpec], rebind: Mapping[str, str]
) -> dict[str, ModelSpec]:
    """Apply `--model NAME=PROVIDER:MODEL` rebindings to a graph's models.

    Raises:
        SpecError: an unknown logical name, provider or sim profile, with the valid choices.
    """
    result = dict(models)
    for name, target in rebind.items():
        if name not in models:
            raise SpecError(
                f"--model {name}={target}: the graph has no model {name!r}. "
                f"Models: {', '.join(sorted(models)) or '(none)'}"
            )
        provider, _, model = target.partition(":")
        old = models[name]
        if provider == "sim":
            profile = model.removeprefix("sim-")
            if profile not in ("small", "medium", "large"):
                raise SpecError(f"--model {name}={target}: sim profiles are small, medium, large")
            result[name] = ModelSpec.model_validate(
                {
                    "provider": "sim",
                    "profile": profile,
                    "seed": old.seed,
                    "faults": old.faults,
                    "time_scale": old.time_scale,
                }
            )
        elif provider == "openai":
            if not model:
                raise SpecError(f"--model {name}={target}: name the model, e.g. openai:gpt-4o-mini")
            same = old.provider == "openai"
            # the variable's endpoint makes a key unneeded, as a graph's `base_url` does;
            # one that is no URL is left to the client's default, and the check up front
            # names the variable (`refuse_uncallable`)
            env_url = os.environ.get("OPENAI_BASE_URL")
            env_url = env_url if endpoint_problem(env_url) is None else None
            result[name] = ModelSpec(
                provider="openai",
                model=model,
                base_url=old.base_url if same else env_url,
                api_key_env=old.api_key_env if same else None,
                # another model's price would be wrong: the new one is priced from the table
                price=old.price if same and old.model == model else None,
                max_concurrency=old.max_concurrency,
                remote=old.remote,
                timeout_s=old.timeout_s,
                max_retries=old.max_retries,
            )
        else:
            raise SpecError(
                f"--model {name}={target}: unknown provider {provider!r}; use "
                "sim:PROFILE or openai:MODEL"
            )
    return result


def _refuse_unpriced(graph: Graph, models: Mapping[str, ModelSpec]) -> None:
    """Refuse a cost budget that could never bind because a model's calls would cost $0."""
    limit = graph.budget.cost_usd
    unpriced = sorted(name for name, spec in models.items() if not is_priced(spec))
    if limit is None or not unpriced:
        return
    named = ", ".join(f"model '{n}' ({models[n].provider}:{models[n].model})" for n in unpriced)
    raise SpecError(
        f"`budget.cost_usd` is ${limit:g} but {named} has no price: it has no `price:` and "
        f"is not in moat's price table (as of {PRICES_AS_OF}), so its calls would cost $0 "
        f"and the budget could never bind. Add `price: {{input: USD_PER_1M, output: "
        f"USD_PER_1M}}` to `models.{unpriced[0]}` in {graph.path} (`{{input: 0, output: 0}}` "
        "for a free self-hosted endpoint), or pass --allow-unpriced to run anyway",
        path=graph.path,
    )
