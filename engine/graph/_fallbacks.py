"""Check 15: every model's `fallback:` names another model, and fallbacks never loop.

A fallback answers when its model is unreachable or held back by the policy
(`engine.models.fallback`), so it must exist, differ from its model, and the chain of
fallbacks must end. A remote fallback is allowed (another region, another provider) but
warned about: offline, it is as unreachable as the model it stands in for.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping

from engine.graph.spec import ModelSpec

__all__ = ["fallback_problems"]

Problem = tuple[bool, str, tuple[str, ...]]
"""(is an error, message, where in the graph file)."""


def _remote(spec: ModelSpec) -> bool:
    return spec.remote if spec.remote is not None else spec.provider != "sim"


def fallback_problems(models: Mapping[str, ModelSpec]) -> Iterator[Problem]:
    """Errors and warnings about the `fallback:` of each model, in name order."""
    defined = sorted(models)
    for name in defined:
        target = models[name].fallback
        if target is None:
            continue
        at = ("models", name, "fallback")
        if target not in models:
            close = difflib.get_close_matches(target, defined, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            yield (
                True,
                (
                    f"model '{name}': fallback '{target}' is not defined under `models:`{hint}. "
                    f"Defined: {', '.join(defined)}"
                ),
                at,
            )
            continue
        chain = [name]
        while target is not None and target in models and target not in chain:
            chain.append(target)
            target = models[target].fallback
        if target in chain:
            loop = " -> ".join([*chain[chain.index(target) :], target])
            yield (
                True,
                (
                    f"model '{name}': fallbacks go round in a loop ({loop}); end the chain at a "
                    "model without `fallback:`, such as a local `sim` model"
                ),
                at,
            )
        elif all(_remote(models[m]) for m in chain):
            yield (
                False,
                (
                    f"model '{name}': its fallback chain ({' -> '.join(chain)}) has only remote "
                    "models, so offline nothing can answer; end it at a local model"
                ),
                at,
            )
