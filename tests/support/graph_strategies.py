"""Hypothesis strategies for valid graphs nobody wrote by hand: random DAGs of the built-in
node types on the embedded `sim` models, wired through `{{ }}` templates and expressions
that read other nodes' outputs, with guards, speculative and optional nodes, loops,
budgets and deadlines.

A drawn `GenGraph` carries its YAML text and what a test needs to judge a run without
trusting the engine's own analysis: the node ids each node reads (`refs`), which nodes
are speculative, and the output names. Node ids are `n<i>` for top-level nodes and
`n<i>_<name>` inside loop bodies, so every id is unique in the whole graph and can be
found in expression text by a regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import strategies as st

MODELS = ("small", "medium", "large")

PROMPTS = (
    "How do I reset my password?",
    "Email me at ana.lopez@example.com about invoice 42, please.",
    "Write a haiku about rain on a tin roof.",
    "What is the capital of France? Call me on +1 415 555 0100.",
    "Explain how vaccines train the immune system, step by step.",
    "Ünïcödé: 東京の天気は\uff1f 🌧 Réponds en français.",
    # over 4,096 characters: redaction scans it in a worker thread
    "My card is 4111 1111 1111 1111. " + "Tell me about my invoices. " * 160,
)

PASSAGES = (
    "Passwords are reset from the account page, under Security.",
    "Invoices are sent by email on the first day of each month.",
    "Paris is the capital of France.",
    {"text": "Vaccines expose the immune system to a harmless antigen.", "id": "vax"},
)

SCHEMA = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "string"}, "score": {"type": "number"}},
}

_ID = re.compile(r"\bn\d+(?:_[a-z]+)?\b")

# Readable fields of each node type, by the kind of value they hold.
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"str": ("text", "model"), "num": ("tokens", "cost_usd"), "bool": ("simulated",)},
    "redact": {"str": ("text",), "num": ("count",), "bool": ()},
    "retrieve": {"str": (), "num": ("top_score",), "bool": ()},
    "lookup": {"str": ("key",), "num": ("similarity",), "bool": ("hit", "negative", "exact")},
    "store": {"str": ("key",), "num": (), "bool": ("stored",)},
    "validate": {"str": ("text",), "num": ("attempts", "cost_usd"), "bool": ("valid",)},
    "router": {"str": ("route", "model"), "num": ("score", "confidence"), "bool": ()},
    "critic": {"str": ("action", "rationale"), "num": ("score", "confidence"), "bool": ("hard",)},
    "converge": {"str": ("decision", "reason"), "num": (), "bool": ("converged", "early")},
    "speculate": {"str": ("text", "source"), "num": ("cost_usd",), "bool": ("accepted",)},
    "cascade": {"str": ("text", "model"), "num": ("confidence", "steps"), "bool": ("accepted",)},
    "simulator": {"str": ("severity",), "num": ("expected_harm",), "bool": ("parsed",)},
    "loop": {"str": ("text",), "num": ("cycles",), "bool": ()},
}


@dataclass
class Avail:
    """A node earlier in topological order that later expressions may read."""

    id: str
    kind: str
    """A key of `FIELDS` (cache nodes are `lookup` or `store`)."""
    nullable: bool
    """Guarded or optional: its value may be `none`."""


@dataclass
class GenGraph:
    """A generated graph and what its runs are judged by."""

    text: str
    refs: dict[str, set[str]]
    """Node id -> the node ids its expressions (`with`, `when`, `speculative`, a loop's
    `until` and `output`) mention, on any path."""
    speculative: set[str]
    outputs: tuple[str, ...]
    output_refs: set[str]
    loops: set[str] = field(default_factory=set)
    shared_state: bool = False
    """The graph's requests share state beyond the store: a cache, the acceptance rates a
    `speculate` node learns, or faults that count toward a model's circuit breaker.
    Concurrent requests then see each other's effects in the order they happen to run."""
    order_bound: bool = False
    """The graph has `budget.cost_usd`, injected faults or a `speculate` node: which of a
    request's concurrent calls is refused by the budget or by an open circuit breaker, or
    wins a hedged race (draft and target answer at the same instant on zero-latency
    models), may depend on the order the backend runs them in."""
    wall_clock: bool = False
    """The graph has a hard deadline or a tight node timeout: its runs may depend on how
    fast the machine is."""

    def may_run(self) -> set[str]:
        """Every node some demand could reach: what the outputs and the speculative nodes
        mention, and what those mention in turn. A node outside it must never run."""
        found: set[str] = set()
        todo = [*self.output_refs, *self.speculative]
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo += self.refs.get(name, ())
        return found


def ids_in(value: Any) -> set[str]:
    """The node ids mentioned anywhere in `value` (a YAML-ready structure)."""
    return set(_ID.findall(yaml.safe_dump(value)))


class _Draw:
    """Draws expressions over the nodes generated so far."""

    def __init__(self, draw: st.DrawFn, avail: list[Avail]) -> None:
        self.draw = draw
        self.avail = avail

    def _pick(self, kind: str) -> tuple[Avail, str] | None:
        choices = [(a, f) for a in self.avail for f in FIELDS[a.kind][kind]]
        if not choices:
            return None
        return self.draw(st.sampled_from(choices))

    def text(self, depth: int = 0) -> str:
        """An expression whose value is a string."""
        shape = self.draw(st.integers(0, 9))
        picked = self._pick("str")
        if picked is None or shape == 0:
            return "input.prompt"
        node, name = picked
        read = f"{node.id}.{name}"
        if node.nullable:
            read = f"({read} if {node.id} else input.prompt)"
        if shape == 1 and depth == 0:  # a conditional read: only one side is demanded
            return f"({self.text(1)} if {self.cond()} else {self.text(1)})"
        if shape == 2:
            lookups = [a for a in self.avail if a.kind == "lookup" and not a.nullable]
            if lookups:
                c = self.draw(st.sampled_from(lookups)).id
                return f"(str({c}.value) if {c}.hit else {read})"
        if shape == 3:
            return f"upper({read})"
        return read

    def num(self) -> str:
        picked = self._pick("num")
        if picked is None:
            return str(self.draw(st.integers(0, 3)))
        node, name = picked
        if node.nullable:
            return f"({node.id}.{name} if {node.id} else 0)"
        return f"{node.id}.{name}"

    def cond(self) -> str:
        """An expression whose value is a boolean."""
        shape = self.draw(st.integers(0, 5))
        if shape == 0 or not self.avail:
            return self.draw(st.sampled_from(["input.flag", "not input.flag", "true", "false"]))
        if shape == 1:
            return f"{self.num()} > {self.draw(st.sampled_from([0, 0.5, 1, 20]))}"
        if shape == 2:
            return f"len({self.text(1)}) > {self.draw(st.sampled_from([10, 40, 80]))}"
        if shape == 3:
            return f"{self.cond()} and not request.degraded"
        picked = self._pick("bool")
        if picked is None:
            return "input.flag"
        node, name = picked
        if node.nullable:
            return f"bool({node.id} and {node.id}.{name})"
        return f"{node.id}.{name}"

    def template(self) -> str:
        """A `with:` string: the expression's value, or interpolated into other text."""
        if self.draw(st.booleans()):
            return f"{{{{ {self.text()} }}}}"
        return f"Context: {{{{ {self.text()} }}}} / {{{{ {self.text(1)} }}}}"

    def model(self) -> str:
        routers = [a for a in self.avail if a.kind == "router"]
        if routers and self.draw(st.booleans()):
            r = self.draw(st.sampled_from(routers))
            if r.nullable:
                return f"{{{{ {r.id}.model if {r.id} else 'small' }}}}"
            return f"{{{{ {r.id}.model }}}}"
        return self.draw(st.sampled_from(MODELS))


def _model_config(d: _Draw) -> dict[str, Any]:
    out: dict[str, Any] = {"model": d.model(), "prompt": d.template()}
    if d.draw(st.booleans()):
        out["max_tokens"] = d.draw(st.sampled_from([16, 64, 400]))
    if d.draw(st.integers(0, 3)) == 0:
        out["schema"] = SCHEMA
    return out


def _validate_config(d: _Draw) -> dict[str, Any]:
    if d.draw(st.booleans()):
        return {"schema": SCHEMA, "value": {"answer": d.template()}}
    out = {"schema": SCHEMA, "text": d.template(), "repair_model": "small"}
    if d.draw(st.booleans()):
        out["escalate_model"] = "large"
    return out


def _critic_config(d: _Draw) -> dict[str, Any]:
    mode = d.draw(st.sampled_from(["request", "draft"]))
    out = {"model": d.model(), "mode": mode, "request": d.template()}
    if mode == "draft":
        out["draft"] = d.template()
    return out


def _converge_config(d: _Draw) -> dict[str, Any]:
    critics = [a for a in d.avail if a.kind == "critic"]
    out: dict[str, Any] = {"cycle": d.draw(st.integers(1, 3)), "max_cycles": 3}
    if critics:
        c = d.draw(st.sampled_from(critics)).id
        out |= {
            "critic_action": f"{{{{ {c}.action if {c} else none }}}}",
            "hard": f"{{{{ bool({c} and {c}.hard) }}}}",
            "score": f"{{{{ {c}.score if {c} else none }}}}",
        }
    return out


def _cascade_config(d: _Draw) -> dict[str, Any]:
    models = d.draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True))
    accept_at = d.draw(st.sampled_from([0.5, 0.8, 0.95]))
    return {"prompt": d.template(), "models": models, "accept_at": accept_at}


def _cache_config(d: _Draw, kind: str) -> dict[str, Any]:
    """A `lookup` or a `store` of the one namespace every cache node of a graph shares."""
    out: dict[str, Any] = {"text": d.template(), "namespace": "answers"}
    if kind == "store":
        out |= {"mode": "store", "value": d.template()}
        if d.draw(st.booleans()):
            out["store_when"] = f"{{{{ {d.cond()} }}}}"
    elif d.draw(st.booleans()):
        out["threshold"] = d.draw(st.sampled_from([0.7, 1.0]))
    return out


ROUTES = {"cheap": {"model": "small"}, "mid": {"model": "medium"}, "big": {"model": "large"}}

CONFIGS: dict[str, Callable[[_Draw], dict[str, Any]]] = {
    "model": _model_config,
    "redact": lambda d: {"text": d.template()},
    "retrieve": lambda d: {
        "query": d.template(),
        "passages": list(PASSAGES),
        "k": d.draw(st.integers(1, 3)),
    },
    "router": lambda d: {"text": d.template(), "routes": ROUTES},
    "validate": _validate_config,
    "critic": _critic_config,
    "converge": _converge_config,
    "speculate": lambda d: {
        "prompt": d.template(),
        "draft_model": "small",
        "target_model": "large",
    },
    "cascade": _cascade_config,
    "simulator": lambda d: {"model": d.model(), "draft": d.template(), "request": d.template()},
    "lookup": lambda d: _cache_config(d, "lookup"),
    "store": lambda d: _cache_config(d, "store"),
}


def _flags(draw: st.DrawFn, d: _Draw, node: dict[str, Any]) -> bool:
    """Add `when`, `speculative`, `optional`; returns whether the node's value may be none."""
    nullable = False
    if draw(st.integers(0, 3)) == 0:
        node["when"] = d.cond()
        nullable = True
    spec = draw(st.integers(0, 5))
    if spec == 0:
        node["speculative"] = True
    elif spec == 1:
        node["speculative"] = d.cond()
    if draw(st.integers(0, 4)) == 0:
        node["optional"] = True
        nullable = True
    if node["type"] != "loop" and draw(st.integers(0, 5)) == 0:
        node["retries"] = draw(st.integers(0, 2))
    if draw(st.integers(0, 5)) == 0:
        node["timeout_ms"] = draw(st.sampled_from([1, 30_000]))
    return nullable


def _loop(draw: st.DrawFn, d: _Draw, lid: str) -> dict[str, Any]:
    """A loop whose body drafts (revising the previous cycle's draft), may critique the
    draft, and may decide convergence from the critique."""
    prompt = d.text()
    draft = f"{lid}_draft"
    body: dict[str, Any] = {
        draft: {
            "type": "model",
            "with": {
                "model": draw(st.sampled_from(MODELS)),
                "task": "revise",
                "prompt": (
                    f"Request: {{{{ {prompt} }}}}\n"
                    f"Previous: {{{{ prev.{draft}.text if prev else 'none' }}}}"
                ),
            },
        }
    }
    if draw(st.booleans()):  # speculative work of each cycle that nothing may demand
        body[f"{lid}_side"] = {
            "type": "model",
            "speculative": True,
            "optional": draw(st.booleans()),
            "with": {"model": "small", "prompt": f"{{{{ {d.text()} }}}} {{{{ cycle }}}}"},
        }
    until = f"len({draft}.text) > {draw(st.sampled_from([0, 50, 10_000]))}"
    text = f"{draft}.text"
    if draw(st.booleans()):
        critique = f"{lid}_critique"
        body[critique] = {
            "type": "critic",
            "with": {"model": "small", "mode": "draft", "draft": f"{{{{ {draft}.text }}}}"},
        }
        if draw(st.booleans()):
            body[critique]["speculative"] = True
        body[draft]["with"]["prompt"] += (
            f"\nCritique: {{{{ prev.{critique}.rationale if prev and prev.{critique} else '' }}}}"
        )
        if draw(st.booleans()):
            body[critique]["when"] = f"cycle < {draw(st.integers(1, 3))}"
            until = f"{critique} and {critique}.action == 'proceed'"
        else:
            until = f"{critique}.action == 'proceed'"
        if draw(st.booleans()):
            conv = f"{lid}_converge"
            body[conv] = {
                "type": "converge",
                "with": {
                    "critic_action": f"{{{{ {critique}.action if {critique} else none }}}}",
                    "score": f"{{{{ {critique}.score if {critique} else none }}}}",
                    "cycle": "{{ cycle }}",
                    "max_cycles": 3,
                },
            }
            until = f"{conv}.converged"
            text = f"({draft}.text if {conv}.decision != 'refuse' else 'refused')"
    loop: dict[str, Any] = {
        "type": "loop",
        "max_cycles": draw(st.integers(1, 3)),
        "nodes": body,
        "output": {"text": text, "cycles": "cycle"},
    }
    if draw(st.booleans()):
        loop["until"] = until
    if f"{lid}_side" in body and draw(st.booleans()):
        loop["output"]["side"] = f"{lid}_side.text if {lid}_side else ''"
    return loop


def _model(draw: st.DrawFn, profile: str, time_scale: float) -> dict[str, Any]:
    """A `sim` model, sometimes with injected faults."""
    spec: dict[str, Any] = {"provider": "sim", "profile": profile, "time_scale": time_scale}
    if draw(st.integers(0, 4)) == 0:
        rates = st.sampled_from([0.0, 0.1, 0.5])
        spec["faults"] = {"error": draw(rates), "rate_limit": draw(rates), "timeout": draw(rates)}
    return spec


KINDS = (
    "model",
    "redact",
    "retrieve",
    "cache",
    "validate",
    "router",
    "critic",
    "converge",
    "speculate",
    "cascade",
    "simulator",
    "loop",
)


@dataclass
class _Nodes:
    """The nodes drawn so far, and what the judge needs to know of them."""

    nodes: dict[str, Any] = field(default_factory=dict)
    avail: list[Avail] = field(default_factory=list)
    refs: dict[str, set[str]] = field(default_factory=dict)
    speculative: set[str] = field(default_factory=set)
    loops: set[str] = field(default_factory=set)

    def add(self, draw: st.DrawFn, nid: str) -> None:
        d = _Draw(draw, self.avail)
        kind = draw(st.sampled_from(KINDS))
        if kind == "loop":
            node = _loop(draw, d, nid)
            self.loops.add(nid)
            for bid, body in node["nodes"].items():
                self.refs[bid] = ids_in(body) - {bid}
        else:
            if kind == "cache":
                kind = draw(st.sampled_from(["lookup", "store"]))
            node = {"type": "cache" if kind in ("lookup", "store") else kind}
            node["with"] = CONFIGS[kind](d)
        nullable = _flags(draw, d, node)
        if node.get("speculative"):
            self.speculative.add(nid)
        self.refs[nid] = ids_in({k: v for k, v in node.items() if k != "nodes"}) - {nid}
        # a running loop starts its body's speculative nodes each cycle
        self.refs[nid] |= {
            b for b, body in node.get("nodes", {}).items() if body.get("speculative")
        }
        self.nodes[nid] = node
        self.avail.append(Avail(nid, kind, nullable))


def _outputs(draw: st.DrawFn, avail: list[Avail]) -> dict[str, str]:
    """Outputs that read a random subset of the nodes (and sometimes a mix of them)."""
    picked = draw(
        st.lists(st.sampled_from(avail), min_size=1, max_size=4, unique_by=lambda a: a.id)
    )
    output: dict[str, str] = {}
    for k, node in enumerate(picked):
        one = _Draw(draw, [node])
        shape = draw(st.integers(0, 2))
        if shape == 0 and FIELDS[node.kind]["str"]:
            output[f"o{k}"] = one.text(1)
        elif shape == 1:
            output[f"o{k}"] = one.num()
        else:
            output[f"o{k}"] = one.cond()
    every = _Draw(draw, avail)
    shape = draw(st.integers(0, 5))
    if shape == 0:
        output["mixed"] = every.text()
    elif shape == 1:
        output["mixed"] = f"[{every.text()}, {every.num()}, {every.cond()}]"
    elif shape == 2:
        output["mixed"] = f"{{'a': {every.text()}, 'b': max({every.num()}, {every.num()})}}"
    elif shape == 3:
        output["mixed"] = f"{every.cond()} or {every.cond()} and {every.cond()}"
    return output


def _budget(draw: st.DrawFn) -> dict[str, Any]:
    """Sometimes a cost budget (tight or loose), sometimes a deadline (tight or loose)."""
    budget: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        budget["cost_usd"] = draw(st.sampled_from([0.0005, 0.005, 0.5]))
    if draw(st.integers(0, 5)) == 0:
        hard = draw(st.sampled_from([5, 60_000]))
        budget |= {"deadline_ms": hard, "partial": draw(st.booleans())}
        if draw(st.booleans()):
            budget["soft_deadline_ms"] = hard / 2
    return budget


INPUT = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1},
        "flag": {"type": "boolean", "default": False},
    },
}


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 7) -> GenGraph:
    """A random valid graph of built-in nodes on `sim` models (see the module docstring)."""
    drawn = _Nodes()
    for i in range(draw(st.integers(1, max_nodes))):
        drawn.add(draw, f"n{i}")
    output = _outputs(draw, drawn.avail)
    # Mostly instant models; sometimes ones that take (scaled) time, so that speculative
    # work is really cancelled mid-call and deadlines and timeouts cut calls short.
    time_scale = draw(st.sampled_from([0, 0, 0, 0.002]))
    spec: dict[str, Any] = {
        "moat": 1,
        "name": "generated",
        "models": {m: _model(draw, m, time_scale) for m in MODELS},
        "input": INPUT,
        "nodes": drawn.nodes,
        "output": output,
    }
    budget = _budget(draw)
    if budget:
        spec["budget"] = budget
    text = yaml.safe_dump(spec, sort_keys=False, width=1000)
    return GenGraph(
        text=text,
        refs=drawn.refs,
        speculative=drawn.speculative,
        outputs=tuple(output),
        output_refs=ids_in(output),
        loops=drawn.loops,
        order_bound="cost_usd" in budget or "faults:" in text or "type: speculate\n" in text,
        shared_state=any(f"type: {t}\n" in text for t in ("cache", "speculate"))
        or "faults:" in text,
        wall_clock="deadline_ms" in budget or time_scale > 0 or "timeout_ms: 1\n" in text,
    )
