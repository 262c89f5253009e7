"""Turns expression text into a checked, analysed and compiled Python function.

Three steps, each on the `ast` of the text: `_Checker` rejects everything outside the
language and collects free names; `certain_names` and `collect_refs` analyse it for the
scheduler and the checker; `_Rewrite` routes names, access, bounded operators and calls
through `engine.expr.runtime` before the tree is compiled once into a lambda.
"""

from __future__ import annotations

import ast
import difflib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from engine.errors import ExpressionError
from engine.expr.runtime import FIELD_CLASSES, FUNCTIONS, HELPERS, MAX_INT_BITS
from engine.expr.wording import quoted, translate

MAX_DEPTH = 200
"""Deepest syntax tree accepted (Python's own compiler is recursive)."""

CONSTANT_NAMES: dict[str, Any] = {"true": True, "false": False, "none": None}
"""Lower-case spellings accepted beside True/False/None."""

SIGNATURES = {
    "abs": "abs(x)",
    "all": "all(items)",
    "any": "any(items)",
    "bool": "bool(x)",
    "float": "float(x)",
    "int": "int(x)",
    "join": 'join(items, sep=", ")',
    "len": "len(x)",
    "lower": "lower(s)",
    "max": "max(items) or max(a, b, ...)",
    "min": "min(items) or min(a, b, ...)",
    "round": "round(x, ndigits=0)",
    "sorted": "sorted(items)",
    "str": "str(x)",
    "upper": "upper(s)",
}

ALLOWED = (
    "Allowed: literals, names, attribute and index access, comparisons, and/or/not, "
    "in/not in, arithmetic (+ - * / // % **), 'x if c else y', list/dict/tuple literals "
    f"and calls to {', '.join(sorted(FUNCTIONS))}."
)

_FORBIDDEN: dict[type[ast.AST], str] = {
    ast.Lambda: "'lambda'",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string (use a {{ }} template or join())",
    ast.NamedExpr: "':=' (assignment)",
    ast.Starred: "'*' unpacking",
    ast.Set: "a set literal",
    ast.Await: "'await'",
    ast.Yield: "'yield'",
    ast.YieldFrom: "'yield'",
}
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_OP_SYMBOLS: dict[type[ast.AST], str] = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
}
_BOUNDED_OPS: dict[type[ast.AST], str] = {
    ast.Add: "_add",
    ast.Sub: "_sub",
    ast.Mult: "_mul",
    ast.Pow: "_pow",
    ast.Mod: "_mod",
}

RawRef = tuple[str, tuple[str | int, ...], int]


@dataclass(frozen=True, slots=True)
class Compiled:
    """What `compile_source` learns about one expression."""

    names: frozenset[str]
    certain: frozenset[str]
    refs: tuple[RawRef, ...]
    function: Callable[[Mapping[str, Any]], Any]
    first: str | None = None
    """The name every evaluation reads before anything else, if there is one."""


class _Columns:
    """Maps `ast` byte offsets of the (one-line) parsed text to 1-based source columns."""

    def __init__(self, text: str, lead: int) -> None:
        self.text = text
        self.lead = lead
        self.ascii = text.isascii()

    def __call__(self, byte_offset: int) -> int:
        if self.ascii:
            return byte_offset + self.lead + 1
        chars = self.text.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore")
        return len(chars) + self.lead + 1


def compile_source(source: str) -> Compiled:
    """Parses, checks, analyses and compiles `source`.

    Raises:
        ExpressionError: the text does not parse or leaves the language (with a column).
    """
    tree, columns = _parse(source)
    checker = _Checker(source, columns)
    checker.check(tree.body, 0)
    certain = certain_names(tree.body)
    refs = sorted(collect_refs(tree.body, columns), key=lambda ref: ref[2])
    first = first_name(tree.body)
    # _Rewrite transforms the tree in place, so it runs after the analysis.
    function = _compile_lambda(_Rewrite().visit(tree.body), source)
    return Compiled(
        names=frozenset(checker.names),
        certain=certain,
        refs=tuple(refs),
        function=function,
        first=first,
    )


def first_name(node: ast.AST) -> str | None:
    """The name an evaluation of `node` reads before anything else (None if unsure).

    The test of `x if c else y`, the first operand of `and`/`or`, a comparison or an
    arithmetic operator, the base of an access chain and the first argument of a call are
    evaluated first; for anything else no single name is sure to come first.
    """
    while True:
        if isinstance(node, ast.Name):
            return None if node.id in CONSTANT_NAMES else node.id
        if isinstance(node, ast.IfExp):
            node = node.test
        elif isinstance(node, ast.BoolOp):
            node = node.values[0]
        elif isinstance(node, ast.Compare | ast.BinOp):
            node = node.left
        elif isinstance(node, ast.UnaryOp):
            node = node.operand
        elif isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and node.args:
            node = node.args[0]
        else:
            return None


def rewritten(source: str) -> ast.expr:
    """The tree `compile_source` compiles for an expression it accepted: a template's code
    holds its expressions' trees inline instead of a call of each one's function."""
    tree, _ = _parse(source)
    return _Rewrite().visit(tree.body)  # type: ignore[no-any-return]


def compile_tree(
    body: ast.expr, label: str, functions: Mapping[str, Callable[..., Any]]
) -> Callable[[Mapping[str, Any]], Any]:
    """Compiles a tree of constants, containers and calls into a function of the scope `s`.

    `functions` are the names the tree calls besides the run-time helpers (compiled
    expressions, for a template); every node of the tree must carry its location.
    """
    return _compile_lambda(body, label, functions)


def divisors(source: str) -> list[tuple[str, int, int]]:
    """The divisors of an accepted expression (right operands of `/`, `//` and `%`), in
    source order: each one's text and its first and past-the-end columns (1-based, as
    `collect_refs` counts them), so an error can name the divisor that was zero."""
    tree, columns = _parse(source)
    raw = columns.text.encode("utf-8")
    found = []
    for node in ast.walk(tree.body):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
            right = node.right
            end = right.end_col_offset if right.end_col_offset is not None else len(raw)
            text = raw[right.col_offset : end].decode("utf-8")
            found.append((text, columns(right.col_offset), columns(end)))
    return sorted(found, key=lambda divisor: divisor[1])


def _parse(source: str) -> tuple[ast.Expression, _Columns]:
    # Newlines become spaces so that YAML block scalars parse as one line (columns then
    # count from the start of the whole expression).
    text = source.replace("\r", " ").replace("\n", " ")
    body = text.lstrip()
    lead = len(text) - len(body)
    if not body.strip():
        raise ExpressionError(
            "empty expression; write a value such as 'true' or a reference such as 'risk.score'",
            column=1,
        )
    try:
        with warnings.catch_warnings():
            # e.g. "invalid escape sequence": fine in our strings, and must not turn into a
            # SyntaxError where warnings are errors (as under pytest)
            warnings.simplefilter("ignore")
            return ast.parse(body, mode="eval"), _Columns(body, lead)
    except SyntaxError as exc:
        # offset 0 means "at the end of the input"
        column = (exc.offset or len(body) + 1) + lead if exc.lineno == 1 else None
        problem = f"{translate(exc.msg)}. {ALLOWED}"
        raise ExpressionError(
            f"cannot parse expression {quoted(source)}: {problem}",
            problem=f"cannot parse: {problem}",
            column=column,
        ) from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError(
            f"expression {source[:60]!r} is nested too deeply; split it up",
            problem="nested too deeply; split it up",
            column=1,
        ) from None


def _compile_lambda(
    body: ast.expr, source: str, functions: Mapping[str, Callable[..., Any]] | None = None
) -> Callable[[Mapping[str, Any]], Any]:
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg="s", lineno=1, col_offset=0)],
        vararg=None,
        kwonlyargs=[],
        kw_defaults=[],
        kwarg=None,
        defaults=[],
    )
    tree = ast.Expression(body=ast.Lambda(args=arguments, body=body, lineno=1, col_offset=0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(tree, f"<expr {source[:40]!r}>", "eval")
    except (RecursionError, MemoryError):  # pragma: no cover - guarded by MAX_DEPTH
        raise ExpressionError(f"expression {source[:60]!r} is too large", column=1) from None
    # The code object comes from the checked, rewritten tree above, never from raw text.
    function: Callable[[Mapping[str, Any]], Any] = eval(code, {**HELPERS, **(functions or {})})
    return function


class _Checker:
    """Rejects syntax outside the language; collects the free names."""

    def __init__(self, source: str, columns: _Columns) -> None:
        self.source = source
        self.columns = columns
        self.names: set[str] = set()

    def reject(self, node: ast.AST, what: str, hint: str = ALLOWED, offset: int = -1) -> NoReturn:
        column = self.columns(offset if offset >= 0 else getattr(node, "col_offset", 0))
        fix = f" {hint}" if hint else ""
        raise ExpressionError(
            f"{what} is not allowed in expression {quoted(self.source)}.{fix}",
            problem=f"{what} is not allowed.{fix}",
            column=column,
        )

    def check(self, node: ast.AST, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.reject(node, f"nesting deeper than {MAX_DEPTH} levels", "Split it up.")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            text = self.source.strip()
            if type(node) is ast.Set and text.startswith("{{") and text.endswith("}}"):
                inner = text[2:-2].strip()
                self.reject(
                    node,
                    "a template's `{{ }}`",
                    f"`output`, `when`, `until` and `speculative` take an expression, "
                    f"without braces: write {quoted(inner)}. (`{{{{ }}}}` marks an "
                    "expression inside a `with:` string.)",
                )
            self.reject(node, _FORBIDDEN.get(type(node), f"'{type(node).__name__}'"))
        method(node, depth + 1)

    def check_all(self, nodes: list[ast.expr] | list[ast.expr | None], depth: int) -> None:
        for node in nodes:
            if node is not None:
                self.check(node, depth)

    def _Constant(self, node: ast.Constant, depth: int) -> None:
        value = node.value
        if type(value) is int and value.bit_length() > MAX_INT_BITS:  # `0x` + 3,000 digits
            self.reject(node, f"a number wider than {MAX_INT_BITS:,} bits", "Write a smaller one.")
        if value is None or isinstance(value, bool | int | float | str):
            return
        kinds = {bytes: "a bytes literal", complex: "a complex number"}
        self.reject(node, kinds.get(type(value), repr(value)))

    def _Name(self, node: ast.Name, depth: int) -> None:
        if node.id in CONSTANT_NAMES:
            return
        if node.id.startswith("_"):
            self.reject(node, f"the name '{node.id}' (names starting with '_')", _UNDERSCORE)
        self.names.add(node.id)

    def _Attribute(self, node: ast.Attribute, depth: int) -> None:
        if node.attr.startswith("_"):
            offset = (node.end_col_offset or 0) - len(node.attr.encode("utf-8"))
            what = f"the attribute '{node.attr}' (names starting with '_')"
            self.reject(node, what, _UNDERSCORE, offset)
        self.check(node.value, depth)

    def _Subscript(self, node: ast.Subscript, depth: int) -> None:
        self.check(node.value, depth)
        self.check(node.slice, depth)

    def _Slice(self, node: ast.Slice, depth: int) -> None:
        self.check_all([node.lower, node.upper, node.step], depth)

    def _Compare(self, node: ast.Compare, depth: int) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, ast.Is | ast.IsNot) and not _is_singleton(operands[i + 1]):
                self.reject(
                    operands[i + 1],
                    "'is' with anything but none, true or false",
                    "Use == or != to compare values.",
                )
        self.check(node.left, depth)
        self.check_all(node.comparators, depth)

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> None:
        self.check_all(node.values, depth)

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> None:
        if isinstance(node.op, ast.Invert):
            self.reject(node, "the operator '~'")
        self.check(node.operand, depth)

    def _BinOp(self, node: ast.BinOp, depth: int) -> None:
        if not isinstance(node.op, _BINOPS):
            self.reject(node, f"the operator '{_OP_SYMBOLS.get(type(node.op), '?')}'")
        self.check(node.left, depth)
        self.check(node.right, depth)

    def _IfExp(self, node: ast.IfExp, depth: int) -> None:
        self.check_all([node.test, node.body, node.orelse], depth)

    def _List(self, node: ast.List, depth: int) -> None:
        self.check_all(node.elts, depth)

    def _Tuple(self, node: ast.Tuple, depth: int) -> None:
        self.check_all(node.elts, depth)

    def _Dict(self, node: ast.Dict, depth: int) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                self.reject(value, "'**' unpacking")
            self.check_all([key, value], depth)

    def _Call(self, node: ast.Call, depth: int) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            self.reject(
                node,
                f"a method call ('.{func.attr}(...)')",
                f"Call a function instead, e.g. {SIGNATURES.get(func.attr, 'len(x)')}. {ALLOWED}",
            )
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            self.reject_function(node)
        self.check_arguments(node, func.id)
        self.check_all([*node.args, *(kw.value for kw in node.keywords)], depth)

    def reject_function(self, node: ast.Call) -> NoReturn:
        if not isinstance(node.func, ast.Name):
            self.reject(node, "calling the result of an expression")
        name = node.func.id
        close = difflib.get_close_matches(name, list(FUNCTIONS), n=1)
        maybe = f" (did you mean '{close[0]}'?)" if close else ""
        functions = ", ".join(SIGNATURES[f] for f in sorted(FUNCTIONS))
        self.reject(node, f"the function '{name}'{maybe}", f"Functions: {functions}.")

    def check_arguments(self, node: ast.Call, name: str) -> None:
        _, fewest, most = FUNCTIONS[name]
        for keyword in node.keywords:
            if name != "join" or keyword.arg != "sep":
                label = f"'{keyword.arg}='" if keyword.arg else "'**'"
                self.reject(
                    keyword, f"the keyword argument {label}", "Only join(items, sep=...) has one."
                )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.reject(arg, "'*' unpacking")
        given = len(node.args) + len(node.keywords)
        if len(node.args) < fewest or given > most:
            self.reject(node, f"{name}() with {given} argument(s)", f"Use {SIGNATURES[name]}.")


_UNDERSCORE = (
    "Such names reach Python's internals, never data; a key that starts with '_' is read "
    "by index: x['_key']."
)


def _is_singleton(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in CONSTANT_NAMES
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool))


def certain_names(node: ast.AST) -> frozenset[str]:
    """The names read on every evaluation path of `node`.

    `x if c else y` reads c and whatever both branches read; `a and b`, `a or b` read only
    `a` for sure; a chained comparison `a < b < c` reads only `a` and `b` for sure.
    """
    if isinstance(node, ast.Name):
        return frozenset() if node.id in CONSTANT_NAMES else frozenset([node.id])
    if isinstance(node, ast.IfExp):
        both = certain_names(node.body) & certain_names(node.orelse)
        return certain_names(node.test) | both
    if isinstance(node, ast.BoolOp):
        return certain_names(node.values[0])
    if isinstance(node, ast.Compare):
        return certain_names(node.left) | certain_names(node.comparators[0])
    children: list[ast.AST]
    if isinstance(node, ast.Call):
        children = [*node.args, *(kw.value for kw in node.keywords)]
    else:
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    return frozenset().union(*(certain_names(child) for child in children))


def collect_refs(node: ast.AST, columns: _Columns) -> list[RawRef]:
    """Every free name with the constant attribute/index chain that directly follows it."""
    chain = _chain(node, columns)
    if chain is not None:
        return [chain]
    if isinstance(node, ast.Call):
        children: list[ast.AST] = [*node.args, *(kw.value for kw in node.keywords)]
    else:
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    return [ref for child in children for ref in collect_refs(child, columns)]


def _chain(node: ast.AST, columns: _Columns) -> RawRef | None:
    path: list[str | int] = []
    while True:
        if isinstance(node, ast.Attribute):
            path.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and (key := _constant_key(node.slice)) is not None:
            path.append(key)
            node = node.value
        elif isinstance(node, ast.Name) and node.id not in CONSTANT_NAMES:
            return node.id, tuple(reversed(path)), columns(node.col_offset)
        else:
            return None


def _constant_key(node: ast.expr) -> str | int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int):
        return None if isinstance(node.value, bool) else node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    return None


_TEMP = "_v"
"""The compiled code's one local besides the scope `s` (user names are never locals)."""
_AT: dict[str, int] = {"lineno": 1, "col_offset": 0}


def _name(name: str, ctx: ast.expr_context | None = None) -> ast.Name:
    return ast.Name(id=name, ctx=ctx or ast.Load(), **_AT)


def _call(name: str, arg: ast.expr) -> ast.Call:
    return ast.Call(_name(name), [arg], [], **_AT)


def _helper(name: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    call = ast.Call(
        func=ast.Name(id=name, ctx=ast.Load(), lineno=1, col_offset=0), args=args, keywords=[]
    )
    return ast.copy_location(call, like)


class _Rewrite(ast.NodeTransformer):
    """Routes names, access, bounded operators and calls through the run-time helpers.

    Every node it adds carries a location (line 1: expressions are one line, and errors
    name columns of the source, never of compiled code), so the tree compiles without a
    pass of `ast.fix_missing_locations`, which walks every node and took half of a
    graph's load time.
    """

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in CONSTANT_NAMES:
            return ast.copy_location(ast.Constant(CONSTANT_NAMES[node.id]), node)
        scope = ast.Name(id="s", ctx=ast.Load(), lineno=1, col_offset=0)
        key = ast.Constant(node.id, lineno=1, col_offset=0)
        return ast.copy_location(ast.Subscript(value=scope, slice=key, ctx=ast.Load()), node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        """`a.b` as `attr(a, 'b')`, with its two common cases inline (no Python call):

            _v.b if _type(_v := a) in _fields['b']
            else (_v.get('b') if _type(_v) is _dict or _type(_v) is _frozen_dict
                  else _attr(_v, 'b'))

        which is what `attr` does for a model with the field `b` and for a dict. One
        temporary is enough: a nested access finishes before the outer one binds it.
        """
        FIELD_CLASSES.setdefault(node.attr, set())
        name = ast.Constant(node.attr, lineno=1, col_offset=0)
        bound = ast.NamedExpr(_name(_TEMP, ast.Store()), self.visit(node.value), **_AT)
        test = ast.Compare(
            _call("_type", bound),
            [ast.In()],
            [ast.Subscript(_name("_fields"), name, ast.Load(), **_AT)],
            **_AT,
        )
        fast = ast.Attribute(_name(_TEMP), node.attr, ast.Load(), **_AT)
        is_dict = ast.BoolOp(
            ast.Or(),
            [
                ast.Compare(_call("_type", _name(_TEMP)), [ast.Is()], [_name(kind)], **_AT)
                for kind in ("_dict", "_frozen_dict")  # a pinned policy's mappings are frozen
            ],
            **_AT,
        )
        get = ast.Call(ast.Attribute(_name(_TEMP), "get", ast.Load(), **_AT), [name], [], **_AT)
        slow = _helper("_attr", [_name(_TEMP), name], node)
        return ast.IfExp(test, fast, ast.IfExp(is_dict, get, slow, **_AT), **_AT)

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        return _helper("_item", [self.visit(node.value), self.visit(node.slice)], node)

    def visit_List(self, node: ast.List) -> ast.expr:
        return self._gathered(node, node.elts)

    def visit_Tuple(self, node: ast.Tuple) -> ast.expr:
        return self._gathered(node, node.elts)

    def visit_Dict(self, node: ast.Dict) -> ast.expr:
        return self._gathered(node, node.values)

    def _gathered(self, node: ast.List | ast.Tuple | ast.Dict, parts: list[ast.expr]) -> ast.expr:
        """A literal holding values read at run time, through `gathered` (bounded size)."""
        self.generic_visit(node)
        if sum(not isinstance(part, ast.Constant) for part in parts) < 2:
            return node  # no two values read at run time: nothing it could repeat
        return _helper("_gathered", [node], node)

    def visit_Slice(self, node: ast.Slice) -> ast.expr:
        parts = [node.lower, node.upper, node.step]
        args = [
            ast.Constant(None, lineno=1, col_offset=0) if p is None else self.visit(p)
            for p in parts
        ]
        return _helper("_slice", args, node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        helper = _BOUNDED_OPS.get(type(node.op))
        if helper is None:
            return self.generic_visit(node)  # type: ignore[return-value]
        return _helper(helper, [self.visit(node.left), self.visit(node.right)], node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        assert isinstance(node.func, ast.Name)  # guaranteed by _Checker
        args = [self.visit(arg) for arg in node.args]
        args += [self.visit(keyword.value) for keyword in node.keywords]
        return _helper(f"_f_{node.func.id}", args, node)
