"""Reading a policy file and refusing a body that would break the graphs or the guard.

Every refusal is a `PolicyError` located in the policy file (`FILE:LINE:COL`) that says
what is wrong and how to fix it. Validation never writes anything, so a refused policy
leaves the active version untouched.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from engine.errors import EvaluationError, PolicyError, SpecError
from engine.expr.expression import Expr, Ref, Template
from engine.expr.wording import bools_read_as_numbers, config_problem, kind, literal, quoted
from engine.located_yaml import Located, load_yaml, read_file
from engine.policy.diff import key_part
from engine.policy.guard import GuardSettings
from engine.policy.signals import check_egress_section

if TYPE_CHECKING:
    from engine.graph.compiled import Graph, Scope
    from engine.graph.spec import LoopSpec, NodeSpec

__all__ = [
    "META_KEYS",
    "PolicyFile",
    "canonical_form",
    "canonical_json",
    "check_values",
    "content_hash",
    "load_policy_file",
    "located_body",
    "validate_policy",
]

META_KEYS = frozenset({"name", "guard"})
"""Top-level keys that describe the policy rather than configure graphs."""

_GUARD_RANGES = (
    "the guard takes window >= 1 (requests), max_p95_ratio > 0, max_cost_ratio > 0 and "
    "min_validation_success between 0 and 1, each a finite number (leave a setting out "
    "not to check it)"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAME_RULE = (
    "letters, digits, '_', '.' or '-', starting with a letter or digit, at most 128 characters"
)
_EXACT_POLICY = re.compile(r"\s*\{\{\s*policy((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*\}\}\s*")

_Path = tuple[str | int, ...]


class PolicyFile(NamedTuple):
    """A policy file as read once (`load_policy_file`): validate and store this, not the
    file again, which may have changed in between."""

    name: str
    """Its `name:`, else the file's stem."""
    body: dict[str, Any]
    """The whole mapping."""
    located: Located
    """The parsed document, for locating later errors."""


def canonical_json(body: Mapping[str, Any]) -> str:
    """The body as canonical JSON (sorted keys, no spaces): what the content hash covers.

    Raises:
        ValueError: it holds NaN or an infinity (`check_values` refuses those, located).
    """
    return json.dumps(
        dict(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def content_hash(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of the body's canonical JSON; equal bodies share a hash."""
    return canonical_form(body)[1]


def canonical_form(body: Mapping[str, Any]) -> tuple[str, str]:
    """`(canonical_json(body), content_hash(body))`, encoding the body once: the text is
    what the store keeps, so a large body is not encoded twice."""
    text = canonical_json(body)
    return text, hashlib.sha256(text.encode()).hexdigest()


def located_body(body: Mapping[str, Any], path: str = "") -> Located:
    """A `Located` for a body that did not come from a file (errors carry no line)."""
    return Located(data=body, path=path)


def _fail(located: Located, message: str, at: _Path = (), *, key: bool = False) -> PolicyError:
    if not located.path:
        return PolicyError(message)
    if not located.values and not located.keys:
        return PolicyError(message, path=located.path)
    pos = located.where(at, key=key)
    return PolicyError(message, path=located.path, line=pos.line, column=pos.column)


def _hint(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_policy_file(path: str | os.PathLike[str], *, stored: bool = True) -> PolicyFile:
    """Read and parse a policy file.

    Args:
        path: the YAML file.
        stored: the policy will be stored under its name, so a file without `name:` must
            have a file name that is one (False: only its body is wanted, as by `diff`).

    Returns:
        `(name, body, located)`: the policy name (its `name:` key, else the file stem),
        the whole mapping, and the parsed document for locating later errors.

    Raises:
        PolicyError: the file is missing, not YAML, or not a mapping (located).
    """
    shown = os.fspath(path)
    try:
        located = load_yaml(read_file(shown), shown)
    except SpecError as exc:
        reason = exc.reason.replace("file not found", "policy file not found")
        raise PolicyError(reason, path=exc.path, line=exc.line, column=exc.column) from exc
    _check_mapping(located.data, located)
    if "moat" in located.data and "nodes" in located.data:  # a graph, given by mistake
        raise _fail(
            located,
            "this is a graph file (it has `moat:` and `nodes:`), not a policy; apply the "
            "policy file its `policy:` names",
            ("nodes",),
        )
    _check_name(located.data, located)
    name = located.data.get("name")
    if isinstance(name, str):
        return PolicyFile(name, located.data, located)
    stem = Path(shown).stem
    if stored and not _NAME.fullmatch(stem):
        # stored under it, the policy could never be shown, rolled back or diffed
        raise _fail(
            located,
            f"the policy has no `name:` and its file name {literal(stem)} is not a policy "
            f"name ({_NAME_RULE}); add `name: NAME` to the file, or rename the file",
        )
    return PolicyFile(stem, located.data, located)


def _check_mapping(body: object, located: Located) -> None:
    if body is None:
        raise _fail(
            located, "the policy is empty; write a mapping of settings, e.g. `router: {...}`"
        )
    if not isinstance(body, Mapping):
        raise _fail(
            located,
            f"a policy must be a mapping of settings (key: value), not a {_kind(body)}",
        )


def _check_name(body: Mapping[str, Any], located: Located) -> None:
    if "name" not in body:
        return
    name = body["name"]
    if isinstance(name, bool):
        fix = (
            "quote it (YAML reads unquoted yes, no, on, off, true and false as true/false), "
            "or leave it out"
        )
    elif isinstance(name, int | float):
        fix = f"quote it, `name: '{name}'` (YAML reads it as a number), or leave it out"
    else:
        fix = "leave it out"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(
            located,
            f"`name:` must be a word of {_NAME_RULE}, got {literal(name)}; {fix} to use the "
            "file name",
            ("name",),
        )


def check_values(body: Mapping[str, Any], located: Located) -> None:
    """Refuse a value a stored snapshot cannot hold as it was given (see `_check_values`);
    `apply_policy` calls it before hashing a body, whatever it came from.

    Raises:
        PolicyError: the first such value, located.
    """
    _check_values(body, (), located)


def _check_values(value: object, at: _Path, located: Located) -> None:
    """No value is NaN: it compares false with every number, so a threshold of `.nan`
    would turn off, without a word, every check that reads it. None is infinite either:
    the store keeps strict JSON, which has no infinity (the snapshot would read back
    damaged, as null). Every value is one JSON holds (a body given in code may hold a date
    or a set). No key holds a control character: printed by `diff` or in a message, it
    would forge lines or drive the operator's terminal; every key is text."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise _fail(
                located,
                f"'{_key(at)}' is .nan (not a number), which compares false with every "
                "number, so what reads it is silently switched off; give a number",
                at,
            )
        raise _fail(
            located,
            f"'{_key(at)}' is {'-' if value < 0 else ''}.inf, which a stored snapshot cannot "
            "hold (the store keeps strict JSON, where it has no infinity); give a finite "
            "number (a large one, such as 1.0e+9, for no limit in practice), or leave the "
            "key out",
            at,
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(
                    located,
                    f"the key {literal(key, 120)} "
                    f"{f'under {_key(at)!r}' if at else 'at the top level'} is a "
                    f"{_kind(key)}; policy keys are text: write it as a string",
                    at,
                )
            if not key.isprintable():
                raise _fail(
                    located,
                    f"the key {literal(key, 120)} holds a line break or control character; "
                    "name keys with printable text",
                    (*at, key),
                    key=True,
                )
            if not _plain(item):
                _check_values(item, (*at, key), located)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if not _plain(item):
                _check_values(item, (*at, index), located)
    elif value is not None and not isinstance(value, str | int | float):  # bool is an int
        raise _fail(
            located,
            f"'{_key(at)}' holds {literal(value, 60)} (of type {type(value).__name__}), "
            "which a policy cannot hold: a snapshot is stored as JSON; give text, a number, "
            "true/false, a list or a mapping",
            at,
        )


def _plain(value: object) -> bool:
    """Whether `value` is text, a whole number, true/false, none or a finite float, by its
    exact type: what most of a large body holds, passed without the checks (and the
    location tuple) `_check_values` makes for anything else."""
    kind = value.__class__
    if kind is str or kind is int or kind is bool or value is None:
        return True
    return kind is float and math.isfinite(cast(float, value))


_STORE_TEXT = ("hash", "redacted", "full")
"""What `store_text:` may say: hashes only (as without it), redacted text, or full text."""


def _check_store_text(body: Mapping[str, Any], located: Located) -> None:
    """`store_text:` is one of `_STORE_TEXT`: a typo (`Full`) would keep hashes only,
    and the operator would lose the text they asked to keep."""
    if "store_text" not in body or body["store_text"] is None:
        return
    value = body["store_text"]
    if value not in _STORE_TEXT:
        raise _fail(
            located,
            f"`store_text:` must be one of {', '.join(_STORE_TEXT)} (or left out: hashes "
            f"only), got {literal(value)}",
            ("store_text",),
        )


def validate_policy(
    body: object,
    located: Located,
    *,
    previous: Mapping[str, Any] | None,
    graphs: Sequence[Graph] = (),
    allow_new_keys: bool = False,
    previous_version: int | None = None,
    values_checked: bool = False,
) -> None:
    """Refuse a policy body that is malformed, incompatible or out of range.

    Checks, in order: the body is a mapping with a valid `name:`; its `guard:` and `egress:`
    sections are well formed (`engine.policy.signals`); its keys and types are compatible
    with `previous` (nothing removed, no type changed except int <-> float, no new key
    unless `allow_new_keys`); every
    `policy.…` key the `graphs` read exists; every value a graph passes as exactly
    `{{ policy.… }}` to a node config field fits that field (type and bounds); every
    expression that reads nothing but the policy evaluates on it; without `previous`, its
    types are those of each graph's own policy file (what `moat run` stores as version 1
    when it finds none).

    Args:
        body: the candidate body.
        located: where its keys stand, for located errors (see `located_body`).
        previous: the active version's body, if any.
        graphs: graphs that will read this policy.
        allow_new_keys: accept keys the previous version does not have.
        previous_version: the previous version's number, for messages.
        values_checked: the caller ran `check_values` on this very body already (as
            `apply_policy` does before hashing it): a large body is not walked twice.

    Raises:
        PolicyError: the first problem found, located in the policy file.
    """
    _check_mapping(body, located)
    assert isinstance(body, Mapping)
    _check_name(body, located)
    if not values_checked:
        _check_values(body, (), located)
    _check_store_text(body, located)
    check_guard_section(body, located)
    egress = check_egress_section(body)
    if egress is not None:
        at, message = egress
        raise _fail(located, message, at, key=message.startswith("unknown setting"))
    if previous is not None:
        label = f"version {previous_version}" if previous_version else "the active version"
        _compatible(previous, body, (), located, allow_new_keys, label)
    for graph in graphs:
        _check_refs(graph, body, located)
    for graph in graphs:
        _check_ranges(graph, body, located)
        _check_evaluations(graph, body, located)
    for graph in graphs if previous is None else ():
        # `moat run` would have stored the graph's own policy as version 1: keep its types
        label = f"{graph.policy_path}, the policy file of graph '{graph.name}'"
        _compatible(graph.policy, body, (), located, True, label, keys=False)


def check_guard_section(body: Mapping[str, Any], located: Located) -> GuardSettings | None:
    """The validated `guard:` section, or None without one.

    Raises:
        PolicyError: unknown keys or values out of range, located at the offending key.
    """
    if "guard" not in body:
        return None
    raw = body["guard"]
    if not isinstance(raw, Mapping):
        raise _fail(
            located,
            f"`guard:` must be a mapping such as `{{window: 50, max_cost_ratio: 1.3}}`, "
            f"not a {_kind(raw)}",
            ("guard",),
        )
    try:
        return GuardSettings.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        settings = sorted(GuardSettings.model_fields)
        if err["type"] == "extra_forbidden":
            word = str(loc[0])
            message = (
                f"unknown guard setting '{word}'{_hint(word, settings)}; "
                f"settings: {', '.join(settings)}"
            )
            raise _fail(located, message, ("guard", *loc), key=True) from None
        dotted = ".".join(str(p) for p in ("guard", *loc))
        value = raw.get(loc[0]) if loc else raw
        raise _fail(
            located,
            f"{dotted} = {literal(value)}: {config_problem({**err, 'type': 'missing'})}; "
            f"{_GUARD_RANGES}",
            ("guard", *loc),
        ) from None


def _kind(value: object) -> str:
    return kind(value)


def _dotted(at: _Path) -> str:
    return ".".join(str(p) for p in at)


def _key(at: _Path) -> str:
    """A key path for a message, as `moat policy diff` shows it: a key that holds a dot is
    quoted (`"cache.threshold"`), so it never reads as the nested key it spells."""
    return ".".join(key_part(p) for p in at)


def _nested(key: str) -> str:
    """What a key with dots would have to be to be read as a path: `a.b.c` ->
    `a: {b: {c: ...}}`."""
    first, *rest = key.split(".")
    text = "..."
    for part in reversed(rest):
        text = f"{{{part}: {text}}}"
    return f"{first}: {text}"


def _dot_note(key: object, at: _Path = ()) -> str:
    """For a key with a dot in its name (under `at`): it is one key, not the path it
    spells."""
    if not isinstance(key, str) or "." not in key.strip("."):
        return ""
    reads = ".".join(["policy", *(str(p) for p in at), key])
    return (
        f"; {key_part(key)} is one key with a dot in its name, which `{reads}` does not "
        f"read: to set the nested key, write `{_nested(key)}`"
    )


def _leaves(value: object, at: _Path = ()) -> Iterator[_Path]:
    """The paths below `value` to each of its leaves (`()` for a leaf itself)."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, (*at, key))
    else:
        yield at


def _spelt(located: Located, path: _Path) -> tuple[str, _Path] | None:
    """The key of the body that spells `path` with dots (`"a.b": 1` where `a: {b: 1}` is
    wanted): its dot note and where it is; None without one."""
    cur: Any = located.data
    for i, part in enumerate(path[:-1]):
        if not isinstance(cur, Mapping):
            return None
        joined = ".".join(str(p) for p in path[i:])
        if joined in cur:
            return _dot_note(joined, path[:i]), (*path[:i], joined)
        cur = cur.get(part)
    return None


_YAML_BOOLS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n"})
"""Words YAML reads as true/false when unquoted (YAML 1.1, as PyYAML reads it)."""


def _number_in(text: str) -> float | int | None:
    """The finite number a string spells (`'0.9'`, `'1e-3'`, `' 42 '`), else None."""
    try:
        number = float(text.strip().replace("_", ""))
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _retype_fix(before: object, value: object) -> str:
    """How to keep the previous kind of a value, as precisely as the value allows: a
    number written so that YAML reads text (`1e-3`, `"0.9"`), a yes/no read as true/false,
    true/false where a number was."""
    if isinstance(before, int | float) and not isinstance(before, bool):
        if isinstance(value, str) and (number := _number_in(value)) is not None:
            return (
                f"write the number as {number!r} (YAML reads {literal(value)} as text: an "
                "exponent needs a point and a signed power, as in 1.0e-3)"
                if "e" in value.lower()
                else f"write the number as {number!r}, without quotes"
            )
        if isinstance(value, bool):
            return "write a number: true/false is not one (for a switch, use a new key)"
    if isinstance(before, bool) and isinstance(value, str) and value.lower() in _YAML_BOOLS:
        return f"write {str(value.lower() in {'true', 'yes', 'on', 'y'}).lower()}, without quotes"
    if isinstance(before, str) and isinstance(value, bool | int | float):
        return (
            "quote the value to keep it text (YAML reads unquoted yes, no, on, off, true and "
            "false as true/false, and digits as a number)"
        )
    return "keep the type or use a new key"


def _compatible(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    at: _Path,
    located: Located,
    allow_new_keys: bool,
    label: str,
    *,
    keys: bool = True,
) -> None:
    """Refuse a changed type, and with `keys` a new (unless allowed) or removed key."""
    meta = META_KEYS if not at else frozenset()
    for key, value in new.items():
        if key in meta:
            continue
        here = (*at, key)
        if key not in old:
            if keys and not allow_new_keys:
                siblings = [str(k) for k in old if k not in meta]
                raise _fail(
                    located,
                    f"new key '{_key(here)}' is not in {label}{_hint(str(key), siblings)}"
                    f"{_dot_note(key, at)}; if it is meant, apply with --allow-new-keys",
                    here,
                    key=True,
                )
            continue
        before = old[key]
        if before is not None and value is not None and _kind(before) != _kind(value):
            raise _fail(
                located,
                f"'{_key(here)}' changed type from {_kind(before)} ({literal(before)} in "
                f"{label}) to {_kind(value)} ({literal(value)}); graphs and nodes read it as a "
                f"{_kind(before)}, so {_retype_fix(before, value)}",
                here,
            )
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            _compatible(before, value, here, located, allow_new_keys, label, keys=keys)
        if isinstance(before, list) and isinstance(value, list):
            _compatible_items(before, value, here, located, label)
    for key in old:
        if keys and key not in meta and key not in new:
            here = (*at, key)
            spelt = next(
                filter(None, (_spelt(located, (*here, *p)) for p in _leaves(old[key]))), None
            )
            note, where = spelt if spelt is not None else ("", at)
            raise _fail(
                located,
                f"'{_key(here)}' was removed ({label} has it: {literal(old[key])}); graphs and "
                f"nodes may read it, so keep it (with the old value to keep behaviour){note}",
                where,
                key=spelt is not None or bool(at),
            )


def _compatible_items(
    old: list[Any], new: list[Any], at: _Path, located: Located, label: str
) -> None:
    """Refuse an item of another kind in a list whose items all had one kind (`[0.2,
    0.5]` -> `[0.2, '0.5']`): what reads its items reads them as that kind."""
    kinds = {_kind(item) for item in old if item is not None}
    if len(kinds) != 1:
        return
    (was,) = kinds
    sample = next(item for item in old if item is not None)
    for index, item in enumerate(new):
        if item is not None and _kind(item) != was:
            raise _fail(
                located,
                f"'{_key((*at, index))}' is a {_kind(item)} ({literal(item)}), but the items "
                f"of '{_key(at)}' in {label} are each a {was} ({literal(old)}); graphs and nodes "
                f"read them as a {was}, so {_retype_fix(sample, item)}",
                (*at, index),
            )


def _expressions(scope: Scope, graph: Graph) -> Iterator[tuple[str, Expr | Template]]:
    for node_id, node in scope.nodes.items():
        where = f"node '{node_id}'"
        if node.when is not None:
            yield where, node.when
        if isinstance(node.speculative, Expr):
            yield where, node.speculative
        yield where, node.config
        if node.loop is not None:
            if node.loop.until is not None:
                yield where, node.loop.until
            for expr in node.loop.output.values():
                yield where, expr
            yield from _expressions(node.loop.body, graph)


def policy_refs(graph: Graph) -> Iterator[tuple[str, Ref]]:
    """Every `policy.…` reference of a graph with where it is (`node 'x'`, `output 'y'`)."""
    found = list(_expressions(graph.scope, graph))
    found += [(f"output '{name}'", expr) for name, expr in graph.output.items()]
    for where, expr in found:
        for ref in expr.refs:
            if ref.name == "policy":
                yield where, ref


def _check_refs(graph: Graph, body: Mapping[str, Any], located: Located) -> None:
    for where, ref in policy_refs(graph):
        cur: Any = body
        walked: list[str | int] = []
        for part in ref.path:
            if isinstance(part, int) and isinstance(cur, list):
                break
            reads = ".".join(["policy", *(str(p) for p in ref.path)])
            if not isinstance(cur, Mapping):
                raise _fail(
                    located,
                    f"graph '{graph.name}' ({where}) reads '{reads}', but "
                    f"'{_key(tuple(walked))}' is a {_kind(cur)}; make it a mapping "
                    f"with the key '{part}'",
                    tuple(walked),
                )
            if part not in cur:
                keys = sorted(str(k) for k in cur)
                under = f"under '{_key(tuple(walked))}'" if walked else "at the top level"
                spelt = _spelt(located, tuple(ref.path))
                note, at = spelt if spelt is not None else ("", tuple(walked))
                raise _fail(
                    located,
                    f"graph '{graph.name}' ({where}) reads '{reads}', but the policy has no "
                    f"'{part}' {under}{_hint(str(part), keys)}. Keys there: "
                    f"{', '.join(key_part(k) for k in keys) or '(none)'}; add it{note}",
                    at,
                    key=spelt is not None or bool(walked),
                )
            cur = cur[part]
            walked.append(part)


def _check_evaluations(graph: Graph, body: Mapping[str, Any], located: Located) -> None:
    """An expression that reads only the policy has one value for every request: evaluate
    it now, so a value it cannot use (a threshold 'many' compared with a number) is refused
    here instead of failing each request."""
    found = list(_expressions(graph.scope, graph))
    found += [(f"output '{name}'", expr) for name, expr in graph.output.items()]
    for where, expr in found:
        if expr.names != {"policy"}:
            continue
        try:
            expr.evaluate({"policy": body})
        except EvaluationError as exc:
            if _by_zero(exc):
                _check_divisors(graph, where, expr, body, located)
            refs = [r for r in expr.refs if r.name == "policy"]
            path = tuple(refs[0].path) if refs else ()
            reads = ", ".join(".".join(["policy", *(str(p) for p in r.path)]) for r in refs)
            raise _fail(
                located,
                f"graph '{graph.name}' ({where}) reads {reads}, and with these values "
                f"{exc}; change the value",
                path,
            ) from None


def _by_zero(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ZeroDivisionError):
        cause = cause.__cause__
    return cause is not None


def _check_divisors(
    graph: Graph, where: str, expr: Expr | Template, body: Mapping[str, Any], located: Located
) -> None:
    """A division by zero is its divisor's fault: refuse it at the policy key that made the
    divisor 0 (not the first key the expression reads), or, for a divisor that reads no
    key, say the graph's expression is what to change."""
    for one in expr.expressions if isinstance(expr, Template) else (expr,):
        found = one.zero_divisor({"policy": body})
        if found is None:
            continue
        divisor, refs = found
        keys = [tuple(r.path) for r in refs if r.name == "policy"]
        what = (
            f"graph '{graph.name}' ({where}) divides by {quoted(divisor)} in expression "
            f"{quoted(one.source)}"
        )
        if not keys:
            first = next((tuple(r.path) for r in one.refs if r.name == "policy"), ())
            raise _fail(
                located, f"{what}, which is always 0; change the expression in {graph.path}", first
            )
        if len(keys) == 1 and divisor == _dotted(("policy", *keys[0])):
            which, fix = "", f"give {divisor} a value other than 0"
        else:
            values = ", ".join(
                f"{_dotted(('policy', *k))} = {literal(_value(body, k))}" for k in keys
            )
            these = "this value" if len(keys) == 1 else "these values"
            which, fix = f" with {values}", f"change {these} so that it is not 0"
        raise _fail(
            located,
            f"{what}, which is 0{which}: division by zero for every request; {fix}",
            keys[0],
        )


def _value(body: Mapping[str, Any], path: _Path) -> Any:
    """The value at `path` in the policy (keys and list indices), None if there is none."""
    cur: Any = body
    for part in path:
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and -len(cur) <= part < len(cur):
            cur = cur[part]
        else:
            return None
    return cur


def _check_ranges(graph: Graph, body: Mapping[str, Any], located: Located) -> None:
    _check_scope_ranges(graph, graph.scope, graph.spec.nodes, body, located)


def _check_scope_ranges(
    graph: Graph,
    scope: Scope,
    specs: Mapping[str, NodeSpec | LoopSpec],
    body: Mapping[str, Any],
    located: Located,
) -> None:
    for node_id, node in scope.nodes.items():
        spec = specs.get(node_id)
        if node.loop is not None and spec is not None and hasattr(spec, "nodes"):
            _check_scope_ranges(graph, node.loop.body, spec.nodes, body, located)
        elif node.impl is not None and spec is not None and hasattr(spec, "with_"):
            label = f"graph '{graph.name}' node '{node_id}' ({node.type_name})"
            _check_config(type(node.impl).Config, spec.with_, label, "", body, located)
            _check_models(graph, type(node.impl).model_keys, spec.with_, label, body, located)


def _check_config(
    model: type[BaseModel],
    config: Mapping[str, Any],
    label: str,
    prefix: str,
    body: Mapping[str, Any],
    located: Located,
) -> None:
    for key, raw in config.items():
        info = model.model_fields.get(str(key))
        if info is None:
            continue
        nested = info.annotation
        if isinstance(raw, Mapping) and isinstance(nested, type) and issubclass(nested, BaseModel):
            _check_config(nested, raw, label, f"{prefix}{key}.", body, located)
            continue
        match = _EXACT_POLICY.fullmatch(raw) if isinstance(raw, str) else None
        if match is None:
            continue
        path = tuple(match.group(1)[1:].split("."))
        found, value = _lookup(body, path)
        if found:
            _check_value(info, value, path, f"{label} field '{prefix}{key}'", located)


def _check_models(
    graph: Graph,
    keys: Sequence[str],
    config: Mapping[str, Any],
    label: str,
    body: Mapping[str, Any],
    located: Located,
) -> None:
    """A model a node takes from the policy (`model: "{{ policy.review.model }}"`) is one
    of the graph's `models:`; any other fails every request that reaches the node."""
    defined = sorted(graph.spec.models)
    for key in keys:
        raw = config.get(key)
        match = _EXACT_POLICY.fullmatch(raw) if isinstance(raw, str) else None
        if match is None:
            continue
        path = tuple(match.group(1)[1:].split("."))
        found, value = _lookup(body, path)
        named = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, model in named if found else ():
            if not isinstance(model, str) or model in graph.spec.models:
                continue
            at: _Path = path if index is None else (*path, index)
            raise _fail(
                located,
                f"policy.{'.'.join(path)} = {literal(value)} does not fit {label} field "
                f"'{key}': {literal(model)} is not defined under the graph's `models:`"
                f"{_hint(model, defined)}; defined: {', '.join(defined) or '(none)'}; "
                "change the value",
                at,
            )


def _lookup(body: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    cur: Any = body
    for part in path:
        if not isinstance(cur, Mapping) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _adapter(info: FieldInfo) -> TypeAdapter[Any]:
    form: Any = info.annotation
    if info.metadata:
        form = cast(Any, Annotated)[(form, *info.metadata)]
    return TypeAdapter(form)


def _check_value(
    info: FieldInfo, value: Any, path: tuple[str, ...], target: str, located: Located
) -> None:
    errors: list[Any]
    try:
        made = _adapter(info).validate_python(value)
    except ValidationError as exc:
        errors = exc.errors()
    else:  # `threshold: true` would pass as 1.0
        errors = [err for _, err in bools_read_as_numbers(value, made)]
    if errors:
        reason = config_problem({**errors[0], "type": "missing"})  # value shown already
        raise _fail(
            located,
            f"policy.{'.'.join(path)} = {literal(value)} does not fit {target}: {reason}; "
            "change the value",
            path,
        )
