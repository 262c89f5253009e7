"""How one compiled node runs, worked out on its first run in a runner: its `Plan`.

A node with a guard, retries, a timeout or a loop, or inside a loop with a timeout, takes
the full path (`GATED`); one whose config reads the same nodes on every evaluation
(`PLAIN`) notes and waits for those inputs itself and builds its config from them without
a `Consumer`; the rest (`CONDITIONAL`) evaluate their config through one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from engine.errors import NodeError
from engine.expr.wording import bools_read_as_numbers, config_problem
from engine.graph._config import field_form
from engine.graph.compiled import LOOP_SCOPE_NAMES, SCOPE_NAMES
from engine.scheduler.frame import InputFailed, note_read
from engine.scheduler.lazy import CANCELLED, FAILED, FINISHED, LazyNode

if TYPE_CHECKING:
    from engine.graph.compiled import CompiledNode

__all__ = ["CONDITIONAL", "GATED", "PLAIN", "Plan"]

GATED = object()
"""A node with a guard, retries, a timeout or a loop, or one inside a loop with a
timeout: the full path."""
PLAIN = object()
"""A node whose config reads the same nodes on every evaluation."""
CONDITIONAL = object()
"""A node whose config has conditional parts, but nothing else to gate its run."""


class Plan:
    """How one compiled node runs, worked out on its first run in a runner.

    Attributes:
        kind: `GATED`, `PLAIN` or `CONDITIONAL`.
        inputs: the nodes a plain node's `with:` reads on every evaluation, sorted (so
            concurrent demands start in a stable order).
    """

    __slots__ = ("_number_keys", "_validate", "inputs", "kind")

    def __init__(self, node: CompiledNode, fenced: bool = False) -> None:
        template = node.config
        gated = node.loop is not None or node.when is not None or node.timeout_ms is not None
        # Under a loop with a timeout (`fenced`), a node's inputs from outside that loop
        # must start in tasks of their own (`fence_out`): only a `Consumer` sees to it.
        if gated or node.retries or fenced:
            self.kind = GATED
        elif template.constant or len(template.names) == len(template.certain):
            self.kind = PLAIN
        else:
            self.kind = CONDITIONAL
        self.inputs = tuple(sorted(template.certain - SCOPE_NAMES - LOOP_SCOPE_NAMES))
        self._number_keys = () if node.impl is None else _number_keys(node, template.open_keys)
        """The `with:` keys whose values only a run makes (their type unknown before) and
        that take a number, which pydantic would read `true` or `false` into."""
        # The model's own validator (the registry saw to it that the model is built),
        # called as `model_validate` would but without the keyword arguments it passes on
        # every call, which cost about as much as validating a small config.
        self._validate: Callable[[Any], BaseModel] | None = (
            None if node.impl is None else node.impl.Config.__pydantic_validator__.validate_python
        )

    def validated(self, node: CompiledNode, raw: Any) -> BaseModel:
        """The node's `Config` from its built `with:` value.

        Raises:
            NodeError: the value is not a valid config; the message lists the problems.
        """
        validate = self._validate
        assert validate is not None
        try:
            config = validate(raw)
        except ValidationError as exc:
            raise NodeError(
                f"invalid `with:` for a '{node.type_name}' node: {_validation_summary(exc)}",
                node_id=node.id,
            ) from exc
        keys = self._number_keys
        if keys and raw.__class__ is dict and _made_bool(raw, keys):
            # pydantic reads `true` as 1 where a number is taken; the checker refuses such
            # a constant, and a value an expression made is refused the same way
            errors = [err for _, err in bools_read_as_numbers(raw, config)]
            if errors:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {config_problem(e)}" for e in errors
                )
                raise NodeError(
                    f"invalid `with:` for a '{node.type_name}' node: {problems}",
                    node_id=node.id,
                )
        return config

    def read_inputs(self, cell: LazyNode) -> list[LazyNode] | None:
        """Note the inputs of a plain node as read; those not resolved yet, or None.

        Raises:
            InputFailed: one of them already failed.
        """
        frame = cell.frame
        cells = frame.cells
        reads = cell.reads
        waiting: list[LazyNode] | None = None
        for name in self.inputs:
            dep = cells.get(name) or frame.cell(name)
            if dep is None:
                continue
            if reads is None:
                reads = cell.reads = [dep]  # exactly sized: most nodes read one node
                note_read(dep, cell, cell.node.id)
            elif dep not in reads:  # (its `speculative:` expression may have read it)
                reads.append(dep)
                note_read(dep, cell, cell.node.id)
            status = dep.status
            if status is FINISHED:
                continue
            if status is FAILED or status is CANCELLED:
                raise InputFailed(dep)
            if waiting is None:
                waiting = [dep]
            else:
                waiting.append(dep)
        return waiting

    def configure(self, cell: LazyNode) -> BaseModel:
        """A plain node's config from its resolved inputs, validated afresh for every run
        (even when it reads nothing): a run that changes its config, or a list or dict in
        it, must not change what the next request's run of the node is given.

        Raises:
            NodeError: the config is not valid.
            EvaluationError: an expression in `with:` failed.
        """
        node = cell.node
        template = node.config
        scope = cell.frame.fixed
        reads = cell.reads
        if reads:  # a plain mapping: cheaper to build than a `Consumer` is to read
            scope = scope.copy()
            for dep in reads:
                scope[dep.node.id] = dep.result
        try:
            raw = template.build(scope)
        except Exception:
            raw = template.evaluate(scope)  # raises the error it is, naming the key
        return self.validated(node, raw)


def _number_keys(node: CompiledNode, open_keys: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """Of `open_keys` (every key for None), those whose field reads `true` as a number."""
    assert node.impl is not None
    found = []
    for name, info in node.impl.Config.model_fields.items():
        key = info.alias or name
        if open_keys is not None and key not in open_keys and name not in open_keys:
            continue
        try:
            made = TypeAdapter(field_form(info)).validate_python(True)
        except Exception:  # (true is refused there, or the field is no plain type)
            continue
        if isinstance(made, int | float) and not isinstance(made, bool):
            found.append(key)
    return tuple(found)


def _made_bool(raw: dict[Any, Any], keys: tuple[Any, ...]) -> bool:
    """Whether the value of one of `keys` in `raw` is true or false."""
    get = raw.get
    return any(get(key).__class__ is bool for key in keys)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(config)"
        parts.append(f"{where}: {config_problem(err)}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
