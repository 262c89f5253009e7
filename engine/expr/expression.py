"""Compiles and evaluates the expression language graphs use in `when`, `speculative`,
`until`, `output` and `{{ }}` templates.

The language is Python expression syntax limited to:

- literals: numbers, strings, `True/False/None` and `true/false/none`, list, dict and
  tuple literals;
- names (looked up in the scope), attribute access `a.b` and index access `a[k]`, `a[i:j]`;
- comparisons, chained or not (`== != < <= > >= in not in is is not`), `and/or/not`;
- arithmetic `+ - * / // % **` and unary `- +`; `x if c else y`;
- calls to these functions only:

  ```
  len(x)  min(items) | min(a, b, ...)  max(items) | max(a, b, ...)  abs(x)
  round(x, ndigits=0)  any(items)  all(items)  sorted(items)
  str(x)  int(x)  float(x)  bool(x)
  lower(s)  upper(s)          none stays none; anything but a string is an error
  join(items, sep=", ")       items read as in templates (none -> "", true/false, JSON)
  ```

Everything else (lambda, comprehensions, f-strings, `:=`, `*`/`**` unpacking, method calls
such as `x.lower()`, keyword arguments other than join's `sep`, names and attributes
starting with `_`) is an `ExpressionError` at load, with the 1-based column.

Evaluation reads names from a scope mapping; a missing name raises `Unresolved`, which the
scheduler uses to run that node and evaluate again. `a.b` reads the key `b` of a mapping,
the field `b` of a pydantic model or the attribute of a plain namespace; on none it gives
none, so a skipped node reads as none. `a[k]` gets a mapping key (missing -> none) or a
sequence index. Results are bounded: integers of more than 10,000 bits, strings and lists
of more than 1,000,000 items (counted deeply: a literal or a template holding one value twice
holds it twice) are refused, as are type errors and division by zero, all as
`EvaluationError`.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import EvaluationError, ExpressionError
from engine.expr.compile import compile_source, compile_tree, divisors, rewritten
from engine.expr.runtime import Fail, concat, gathered, to_text
from engine.expr.wording import kind, quoted, translate
from engine.expr.wording import literal as show_literal

__all__ = ["Expr", "Ref", "Template", "Unresolved", "compile_expr", "compile_template"]

_Evaluate = Callable[[Mapping[str, Any]], Any]
_RUNTIME_ERRORS = (
    ArithmeticError,
    AttributeError,
    LookupError,
    RecursionError,
    TypeError,
    ValueError,
)
_IMMUTABLE = (str, int, float, bool, type(None))


class Unresolved(Exception):
    """Evaluation touched a name the scope does not have yet (internal control flow).

    Args:
        name: the missing top-level name; the scheduler resolves it and evaluates again.

    Built by the exception's own (C) constructor, without a Python `__init__`: a request
    raises several while the scheduler finds what its expressions reach.
    """

    @property
    def name(self) -> str:
        """The missing top-level name."""
        name: str = self.args[0]
        return name


@dataclass(frozen=True, slots=True)
class Ref:
    """One use of a free name, with the constant access chain that follows it."""

    name: str
    """The top-level name, e.g. `risk`."""
    path: tuple[str | int, ...]
    """Constant attribute/index chain after the name: `risk.json["a"].b` -> `("json", "a", "b")`."""
    column: int
    """1-based column of the name within the expression source."""


class Expr:
    """A compiled expression: what it reads, and a fast side-effect-free `evaluate`.

    Attributes:
        source: the expression text (or the literal's `repr` for non-string values).
        names: every free name the expression reads (function names excluded).
        certain: the names read on every evaluation path, safe to demand concurrently.
        refs: every use of a free name with its constant access path, in source order.
        constant: True when the expression reads no names at all.
        first: the name every evaluation reads before any other, if there is one (the
            test of a conditional, the base of `a.b`, ...).
    """

    __slots__ = ("_function", "_raw", "certain", "constant", "first", "names", "refs", "source")

    def __init__(self, raw: str | bool | int | float | None) -> None:
        self._raw = raw
        if isinstance(raw, str):
            compiled = compile_source(raw)
            self.source = raw
            self.names = compiled.names
            self.certain = compiled.certain
            self.refs = tuple(Ref(*ref) for ref in compiled.refs)
            self._function = compiled.function
            self.first = compiled.first
        else:
            self.source = repr(raw)
            self.names = self.certain = frozenset()
            self.refs = ()
            self._function = lambda scope: raw
            self.first = None
        self.constant = not self.names
        if self.constant:
            self._fold()

    def _fold(self) -> None:
        try:
            value = self.evaluate({})
        except EvaluationError:
            return  # keep failing at run time, where the error belongs
        if isinstance(value, _IMMUTABLE):
            self._function = lambda scope: value

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Evaluates the expression against `scope`.

        Args:
            scope: the names in scope (node values, `input`, `policy`, `request`, ...).

        Raises:
            Unresolved: a name the evaluation reached is not in `scope` yet.
            EvaluationError: bad types, division by zero, a value out of bounds, or an
                attribute a model does not have; the message names the expression.
        """
        try:
            return self._function(scope)
        except KeyError as exc:
            raise self._missing(exc, scope) from None
        except Fail as exc:
            raise EvaluationError(f"expression {quoted(self.source)}: {exc}") from None
        except _RUNTIME_ERRORS as exc:
            raise EvaluationError(f"expression {quoted(self.source)}: {_explain(exc)}") from exc

    def zero_divisor(self, scope: Mapping[str, Any]) -> tuple[str, tuple[Ref, ...]] | None:
        """After `evaluate` failed with division by zero: the first divisor (the right
        operand of `/`, `//` or `%`) that is zero in `scope`, as its source text with the
        references it reads; None if none is (or the expression is not text)."""
        if not isinstance(self._raw, str):
            return None
        for text, start, end in divisors(self._raw):
            try:
                value = compile_expr(text).evaluate(scope)
            except (EvaluationError, Unresolved):
                continue
            if isinstance(value, int | float) and value == 0:
                return text, tuple(ref for ref in self.refs if start <= ref.column < end)
        return None

    def _missing(self, exc: KeyError, scope: Mapping[str, Any]) -> Exception:
        key = exc.args[0] if len(exc.args) == 1 else None
        if isinstance(key, str) and key in self.names and key not in scope:
            return Unresolved(key)
        return EvaluationError(f"expression {quoted(self.source)}: missing key {exc}")

    def __repr__(self) -> str:
        return f"<Expr {self.source!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return compile_expr, (self._raw,)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    if isinstance(exc, RecursionError):
        return "the value is nested too deeply"
    if isinstance(exc, OverflowError) and exc.args and isinstance(exc.args[0], int):
        return "the result is too large for a number"  # not "(34, 'Numerical result ...')"
    text = translate(str(exc))
    if "none" in text and isinstance(exc, TypeError):
        text += " (is a node skipped, or a key missing?)"
    return text


def compile_expr(source: str | bool | int | float | None) -> Expr:
    """Compiles an expression once, at load time.

    Args:
        source: expression text; a bool, number or None (as YAML gives `true`, `3`, `~`)
            compiles to a constant expression.

    Returns:
        The compiled expression.

    Raises:
        ExpressionError: the text does not parse or uses something outside the language;
            `column` is 1-based within `source` (the loader adds path and line).
    """
    if source is not None and not isinstance(source, str | bool | int | float):
        raise ExpressionError(
            f"expected an expression (text, a number, true/false or none), "
            f"got a {kind(source)}: {show_literal(source)}"
        )
    return _compile_cached(source)


@functools.lru_cache(maxsize=8192, typed=True)
def _compile_cached(source: str | bool | int | float | None) -> Expr:
    # Compiling is pure and an Expr never changes, so the same text compiles once per
    # process: the checker compiles `with:` values per key and whole, graphs repeat guards.
    return Expr(source)


_OPEN = "{{"
_CLOSE = "}}"
_MAX_CLOSINGS = 64
"""How many `}}` are tried as the end of one `{{ EXPR }}` (a dict literal nested N deep
needs N + 1): text full of them is refused in linear time, not quadratic."""
_BLANK = re.compile(r"\s*")


class Template:
    """A compiled `with:` value: literals kept, `{{ EXPR }}` strings evaluated.

    Attributes:
        names: every free name its expressions read.
        certain: the names read on every evaluation (all expressions are evaluated).
        refs: the references of all its expressions, in document order; columns count
            from the start of the string holding the expression.
        constant: True when it holds no expression reading a name.
        expressions: the compiled expressions, in document order.
        first: the name every evaluation reads before any other, if there is one.
        open_keys: the keys of a mapping whose value an expression makes at run time (so
            of any type: `max_tokens: "{{ input.n }}"`), or None when the whole value is
            one expression.
        build: builds the value as `evaluate` does, but leaves a failure unexplained (a
            `KeyError` for a name not in scope, the raw error of an expression): the
            fast path for callers that call `evaluate` again to raise the error it is.
    """

    __slots__ = (
        "_function",
        "_raw",
        "build",
        "certain",
        "constant",
        "expressions",
        "first",
        "names",
        "open_keys",
        "refs",
    )

    def __init__(self, value: Any) -> None:
        self._raw = value
        found: list[tuple[Expr, int]] = []
        self._function = _build(value, "", found, fast=False)
        self.open_keys: tuple[Any, ...] | None = (
            tuple(key for key, item in value.items() if _dynamic(item))
            if isinstance(value, dict)
            else None
            if _dynamic(value)
            else ()
        )
        # compiled on first use: the checker compiles templates it never evaluates
        self.build: _Evaluate = self._first_build
        self.expressions = tuple(expr for expr, _ in found)
        self.names = frozenset().union(*(e.names for e in self.expressions))
        self.certain = frozenset().union(*(e.certain for e in self.expressions))
        self.refs = tuple(
            Ref(ref.name, ref.path, ref.column + offset) for e, offset in found for ref in e.refs
        )
        self.constant = not self.names
        # expressions are evaluated in document order: the first one's first name is read
        # before any other
        self.first = self.expressions[0].first if self.expressions else None

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Builds the value afresh: containers copied, expressions evaluated against `scope`.

        Raises:
            Unresolved: an expression reached a name not in `scope` yet.
            EvaluationError: an expression failed; the message says at which key.
        """
        try:
            return self.build(scope)  # the compiled code straight away: the common case
        except Unresolved:
            raise
        except Exception:
            pass
        # Again, to turn the failure into the error it is, naming the key: expressions are
        # pure, so evaluating twice changes nothing.
        return self._function(scope)

    def _first_build(self, scope: Mapping[str, Any]) -> Any:
        # One compiled function builds the whole value with its expressions' code inline;
        # values a code object cannot hold as constants keep a function per part.
        functions: dict[str, Callable[..., Any]] = {}
        tree = _compose(self._raw, functions)
        if tree is None:
            self.build = _build(self._raw, "", [], fast=True)
        else:
            self.build = compile_tree(tree, "template", functions)
        return self.build(scope)

    def __repr__(self) -> str:
        return f"<Template {self._raw!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return compile_template, (self._raw,)


def compile_template(value: Any) -> Template:
    """Compiles a `with:` value (nested dicts, lists and scalars) once, at load time.

    A string that is exactly `{{ EXPR }}` (whitespace around is fine) yields the value of
    EXPR with its type; a string with `{{ EXPR }}` inside other text yields text (none ->
    "", booleans -> true/false, containers -> JSON); anything else is a literal.

    Raises:
        ExpressionError: an inner expression is invalid or a `{{` is never closed; the
            message names the key path, `column` is 1-based within that string.
    """
    return Template(value)


def _build(value: Any, path: str, found: list[tuple[Expr, int]], *, fast: bool) -> _Evaluate:
    """The function that builds `value`: `fast` runs the compiled expressions bare (their
    errors unexplained), otherwise each failure is raised as the error it is."""
    if isinstance(value, str):
        if _OPEN not in value:
            return lambda scope: value
        return _build_string(value, path, found, fast)
    if isinstance(value, dict):
        return _build_dict(value, path, found, fast)
    if isinstance(value, list | tuple):
        elements = [_build(v, f"{path}[{i}]", found, fast=fast) for i, v in enumerate(value)]
        dynamic = tuple(i for i, item in enumerate(value) if _dynamic(item))
        if len(dynamic) < 2:
            return lambda scope: [build(scope) for build in elements]
        return lambda scope: _gather([build(scope) for build in elements], dynamic, path, fast)
    return lambda scope: value


def _dynamic(value: Any) -> bool:
    """Whether `value` may build a container at run time: a `{{ }}` expression alone, or a
    list or mapping holding one (text around an expression always makes text)."""
    if isinstance(value, str):
        return _OPEN in value and _exact(_pieces(value, "", []))
    if isinstance(value, dict):
        return any(_dynamic(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_dynamic(item) for item in value)
    return False


def _gather(built: Any, dynamic: tuple[Any, ...], path: str, fast: bool) -> Any:
    """`built`, bounded as a literal of the expression language is (`gathered`)."""
    try:
        return gathered(built, dynamic)
    except Fail as exc:
        if fast:
            raise
        where = f"template value '{path}'" if path else "template"
        raise EvaluationError(f"{where}: {exc}") from None


def _build_dict(
    value: dict[Any, Any], path: str, found: list[tuple[Expr, int]], fast: bool
) -> _Evaluate:
    # Literal values are placed as they are rather than through a function call each:
    # a node's `with:` is built on every run, and most of its values are literals.
    items: list[tuple[Any, _Evaluate | None, Any]] = []
    for key, item in value.items():
        if isinstance(item, _IMMUTABLE) and not (isinstance(item, str) and _OPEN in item):
            items.append((key, None, item))
        else:
            where = f"{path}.{key}" if path else str(key)
            items.append((key, _build(item, where, found, fast=fast), None))

    dynamic = tuple(key for key, item in value.items() if _dynamic(item))

    def build(scope: Mapping[str, Any]) -> dict[Any, Any]:
        built = {}
        for key, evaluate, literal in items:
            built[key] = literal if evaluate is None else evaluate(scope)
        return _gather(built, dynamic, path, fast) if len(dynamic) > 1 else built

    return build


def _compose(value: Any, functions: dict[str, Callable[..., Any]]) -> ast.expr | None:
    """The tree of one expression building `value`, or None if a part cannot be a constant.

    Each `{{ }}` expression's code is placed inline (a constant one becomes a call of its
    function, added to `functions` under the name the tree calls it by). Every node is on
    line 1 (see `_Rewrite`).
    """
    if isinstance(value, str) and _OPEN in value:
        pieces = _pieces(value, "", [])
        calls = [_call_expr(p, functions) if isinstance(p, Expr) else p for p in pieces]
        if _exact(pieces):
            return calls[1]  # type: ignore[return-value]
        parts: list[ast.expr] = [
            _constant(p) if isinstance(p, str) else _call("_text", p) for p in calls if p != ""
        ]
        return _call("_concat", ast.Tuple(parts, ast.Load(), lineno=1, col_offset=0))
    if isinstance(value, _IMMUTABLE):
        return _constant(value)
    if isinstance(value, dict):
        keys = [_constant(key) if isinstance(key, _IMMUTABLE) else None for key in value]
        values = [_compose(item, functions) for item in value.values()]
        if any(part is None for part in (*keys, *values)):
            return None
        tree: ast.expr = ast.Dict(keys, values, lineno=1, col_offset=0)  # type: ignore[arg-type]
        return _bounded(tree, [key for key, item in value.items() if _dynamic(item)])
    if isinstance(value, list | tuple):
        elements = [_compose(item, functions) for item in value]
        if any(element is None for element in elements):
            return None
        tree = ast.List(elements, ast.Load(), lineno=1, col_offset=0)  # type: ignore[arg-type]
        return _bounded(tree, [i for i, item in enumerate(value) if _dynamic(item)])
    return None


def _bounded(tree: ast.expr, dynamic: list[Any]) -> ast.expr:
    """The code building a container through `gathered` when it may hold two containers
    read at run time."""
    if len(dynamic) < 2:
        return tree
    bounds = ast.Name("_gathered", ast.Load(), lineno=1, col_offset=0)
    return ast.Call(bounds, [tree, _constant(tuple(dynamic))], [], lineno=1, col_offset=0)


def _call_expr(expr: Expr, functions: dict[str, Callable[..., Any]]) -> ast.expr:
    """The code of `expr` inline: what its function computes, without calling it."""
    if not isinstance(expr._raw, str):
        return _constant(expr._raw)
    if expr.constant:  # folded, or failing at run time: call what it was left as
        name = f"_e{len(functions)}"
        functions[name] = expr._function
        return _call(name, ast.Name("s", ast.Load(), lineno=1, col_offset=0))
    return rewritten(expr._raw)


def _call(name: str, argument: ast.expr) -> ast.expr:
    function = ast.Name(name, ast.Load(), lineno=1, col_offset=0)
    return ast.Call(function, [argument], [], lineno=1, col_offset=0)


def _constant(value: Any) -> ast.expr:
    return ast.Constant(value, lineno=1, col_offset=0)


def _pieces(text: str, path: str, found: list[tuple[Expr, int]]) -> list[str | Expr]:
    """`text` split into literal text and the compiled `{{ }}` expressions between."""
    pieces: list[str | Expr] = []
    position = 0
    while (start := text.find(_OPEN, position)) >= 0:
        pieces.append(text[position:start])
        expr, offset, position = _split_expression(text, start, path)
        pieces.append(expr)
        found.append((expr, offset))
    pieces.append(text[position:])
    return pieces


def _exact(pieces: list[str | Expr]) -> bool:
    """True when the pieces are one expression with only blanks around it."""
    return len(pieces) == 3 and all(_BLANK.fullmatch(str(p)) for p in pieces[::2])


def _build_string(text: str, path: str, found: list[tuple[Expr, int]], fast: bool) -> _Evaluate:
    pieces = _pieces(text, path, found)
    labelled = [
        (p._function if fast else _labelled(p, path)) if isinstance(p, Expr) else p for p in pieces
    ]
    if _exact(pieces):
        return labelled[1]  # type: ignore[return-value]
    parts = [p for p in labelled if p != ""]
    return lambda scope: _interpolate(parts, scope, path)


def _interpolate(parts: list[str | _Evaluate], scope: Mapping[str, Any], path: str) -> str:
    try:
        return concat(tuple(p if isinstance(p, str) else to_text(p(scope)) for p in parts))
    except (Fail, TypeError, ValueError, RecursionError) as exc:
        where = f"template value '{path}'" if path else "template"
        raise EvaluationError(f"{where}: cannot turn a value into text: {exc}") from exc


def _split_expression(text: str, start: int, path: str) -> tuple[Expr, int, int]:
    """Compiles the `{{ EXPR }}` opening at `start`.

    The closing `}}` is the first one whose inside compiles (of the next `_MAX_CLOSINGS`),
    so dict literals inside work.
    Returns the expression, the offset of its source within `text` and the end position.
    """
    first_error: ExpressionError | None = None
    end = text.find(_CLOSE, start + 2)
    for _ in range(_MAX_CLOSINGS):
        if end < 0:
            break
        inner = text[start + 2 : end]
        offset = start + 2 + len(inner) - len(inner.lstrip())
        try:
            return compile_expr(inner.strip() or inner), offset, end + 2
        except ExpressionError as exc:
            first_error = first_error or exc
        end = text.find(_CLOSE, end + 1)
    where = f"template value '{path}'" if path else "template"
    if first_error is None:
        raise ExpressionError(
            f"in {where}: '{{{{' at column {start + 1} is never closed with '}}}}'",
            column=start + 1,
        )
    inner = text[start + 2 :]
    offset = start + 2 + len(inner) - len(inner.lstrip())
    column = None if first_error.column is None else first_error.column + offset
    raise ExpressionError(
        f"in {where}: {first_error.reason}", problem=first_error.problem, column=column
    ) from first_error


def _labelled(expr: Expr, path: str) -> _Evaluate:
    if not path:
        return expr.evaluate

    def evaluate(scope: Mapping[str, Any]) -> Any:
        try:
            return expr.evaluate(scope)
        except EvaluationError as exc:
            raise EvaluationError(f"template value '{path}': {exc}") from exc

    return evaluate
