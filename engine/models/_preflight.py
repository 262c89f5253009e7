"""What an `openai` model needs before its first call (its API key and an http(s) endpoint),
and the refusal, before a run is created, of a graph whose callable models lack them.

A missing key or an endpoint that is no URL would fail every call of a run in the same way;
known before any request, it is refused once, up front (`moat run` and `moat serve` exit 2,
`Pipeline(...)` raises `SpecError`), naming the graph, the model as the graph calls it, the
setting at fault and the fix. Only models a run can call are checked: those its nodes name
in their config (`model_keys`, the config's default included), those an expression there
can give when every value it can give is written in the graph (`"{{ 'large' if input.hard
else 'small' }}"`: both), and, from those, the chain of their `fallback:`. A model the graph
declares but no node names is not, nor one an expression can give beside a value known only
at run time (`"{{ policy.review.model }}"`, `"{{ input.model or 'large' }}"`): which models
such a run calls is not known up front, and a call to one fails as before with the same
words.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from engine.errors import SpecError
from engine.graph._config import every_result, model_names
from engine.graph.spec import ModelSpec, endpoint_problem

if TYPE_CHECKING:
    from engine.graph.compiled import Graph, Scope

__all__ = [
    "api_key_env",
    "callable_models",
    "endpoint",
    "missing_key",
    "refuse_uncallable",
]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"


def api_key_env(spec: ModelSpec) -> str:
    """The environment variable holding the model's key."""
    return spec.api_key_env or DEFAULT_KEY_ENV


def missing_key(spec: ModelSpec) -> bool:
    """Whether the model needs a key (it has no `base_url` of its own, so it may be
    api.openai.com) and its variable holds none."""
    return spec.base_url is None and not os.environ.get(api_key_env(spec))


def endpoint(spec: ModelSpec) -> tuple[str | None, str]:
    """The endpoint URL the client will call (None: the client's default, api.openai.com)
    and where it comes from, for messages."""
    if spec.base_url is not None:
        return spec.base_url, "`base_url`"
    return os.environ.get(BASE_URL_ENV), f"the environment variable {BASE_URL_ENV}"


def callable_models(graph: Graph, models: Mapping[str, ModelSpec]) -> list[str]:
    """The models a run of `graph` can call, sorted: those its nodes name in their config,
    and the `fallback:` chain of each."""
    todo = [name for name in _named(graph.scope, graph.spec.nodes) if name in models]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found or name not in models:
            continue
        found.add(name)
        if (fallback := models[name].fallback) is not None:
            todo.append(fallback)
    return sorted(found)


def _named(scope: Scope, specs: Mapping[str, Any]) -> Iterator[str]:
    """The model names the nodes of `scope` (loop bodies included) hold in their config."""
    for node_id, node in scope.nodes.items():
        spec = specs.get(node_id)
        if node.loop is not None and spec is not None and hasattr(spec, "nodes"):
            yield from _named(node.loop.body, spec.nodes)
            continue
        if node.impl is None or spec is None or not hasattr(spec, "with_"):
            continue
        cls = type(node.impl)
        for key in cls.model_keys:
            name, *inner = key.split(".")  # `routes.*.model`: a model inside each route
            if name in spec.with_:
                value = spec.with_[name]
            else:
                field = cls.Config.model_fields.get(name)
                value = field.default if field is not None else None
            for written, _ in model_names(value, inner, ()):
                yield from _picked(written)


def _picked(written: Any) -> Iterator[str]:
    """The model names one written value can give: itself, or for a `{{ EXPR }}` every
    value EXPR can give, when each of them is a literal (none when one is not)."""
    if not isinstance(written, str):
        return
    text = written.strip()
    if "{{" not in text:
        yield written
        return
    if not (text.startswith("{{") and text.endswith("}}")):
        return  # text around an expression: a name put together at run time
    source = text[2:-2].strip()  # (two expressions side by side parse as none)
    for result in every_result(source) or ():
        for model in result if isinstance(result, list | tuple) else (result,):
            if isinstance(model, str):
                yield model


def refuse_uncallable(
    graph: Graph, models: Mapping[str, ModelSpec], rebind: Mapping[str, str] | None = None
) -> None:
    """Refuse a graph that a run could not call: an `openai` model it can call has an
    endpoint that is no http(s) URL, or needs an API key that is not set.

    Args:
        graph: the graph, for its file and its nodes.
        models: its models as the run binds them (`--model` applied).
        rebind: the `--model` rebindings, to say so when one made the model what it is.

    Raises:
        SpecError: naming the graph, the model, the setting at fault and the fix.
    """
    rebind = rebind or {}
    names = [n for n in callable_models(graph, models) if models[n].provider == "openai"]
    for name in names:
        spec = models[name]
        url, source = endpoint(spec)
        problem = endpoint_problem(url)
        if problem is not None:
            raise SpecError(_bad_endpoint(graph, name, spec, rebind, url, source, problem))
    lacking = [n for n in names if missing_key(models[n])]
    if lacking:
        raise SpecError(_no_key(graph, lacking, models, rebind))


def _who(name: str, spec: ModelSpec, rebind: Mapping[str, str]) -> str:
    bound = f", bound by --model {name}={rebind[name]}" if name in rebind else ""
    return f"model '{name}' ({spec.provider}:{spec.model}{bound})"


def _bad_endpoint(
    graph: Graph,
    name: str,
    spec: ModelSpec,
    rebind: Mapping[str, str],
    url: str | None,
    source: str,
    problem: str,
) -> str:
    if source == "`base_url`" and name in rebind and graph.models[name].provider != "openai":
        # --model NAME=openai:... on a model of another provider takes the variable's URL
        source = f"the environment variable {BASE_URL_ENV}"
    example = "such as http://127.0.0.1:8000/v1"
    if source == "`base_url`":
        where = f"its `base_url` {url!r} (under `models.{name}`)"
        fix = f"give `models.{name}.base_url` the endpoint's full URL, {example}"
    else:
        where = f"its endpoint {url!r} (from {source})"
        fix = (
            f"set {BASE_URL_ENV} to the endpoint's full URL, {example}, or unset it to "
            "call api.openai.com"
        )
    return (
        f"{graph.path}: {_who(name, spec, rebind)}: {where} {problem}, so no call to it "
        f"could be made; {fix}"
    )


def _no_key(
    graph: Graph, lacking: list[str], models: Mapping[str, ModelSpec], rebind: Mapping[str, str]
) -> str:
    first = lacking[0]
    env = api_key_env(models[first])
    same = [n for n in lacking if api_key_env(models[n]) == env]
    who = ", ".join(_who(n, models[n], rebind) for n in same)
    needs = "needs" if len(same) == 1 else "need"
    others = [n for n in lacking if n not in same]
    more = (
        f" (and {', '.join(_who(n, models[n], rebind) for n in others)} need the keys "
        f"in {', '.join(sorted({api_key_env(models[n]) for n in others}))})"
        if others
        else ""
    )
    return (
        f"{graph.path}: {who} {needs} an API key, and the environment variable {env} is not "
        f"set{more}; set it (export {env}=...), name the variable that holds the key with "
        f"`api_key_env:` under `models.{first}`, give the model a `base_url:` (a self-hosted "
        f"endpoint needs no key), or run it on the simulator (--model {first}=sim:large)"
    )
