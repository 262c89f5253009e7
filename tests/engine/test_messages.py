"""Messages speak the graph language: none, true/false, string, number, list, mapping; never
Python's NoneType, True, dict or 'int'."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import EvaluationError, PolicyError, load_graph_text
from engine.expr.expression import compile_expr
from engine.graph.loader import check_text
from engine.policy.manager import validate_policy
from engine.policy.validate import located_body
from tests.support.graph_nodes import registry

PYTHON_WORDS = re.compile(
    r"NoneType|\bTrue\b|\bFalse\b|\bNone\b|'(int|str|bool|float|dict|list|tuple)'|"
    r'"(int|str|bool|float|dict|list|tuple)"|\bdictionary\b|\bstr\b|\bbool\b'
)
DATA = Path(__file__).parents[1] / "data"


def speaks_graph_language(message: str) -> bool:
    return PYTHON_WORDS.search(message) is None


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-2, 2, allow_nan=False),
    st.text("ab", max_size=3),
    st.lists(st.one_of(st.none(), st.booleans(), st.integers(0, 3)), max_size=3),
    st.dictionaries(st.sampled_from("kq"), st.one_of(st.none(), st.booleans()), max_size=2),
)
SHAPES = [
    "x + y",
    "x - y",
    "x * y",
    "x / y",
    "x % y",
    "x < y",
    "x >= y",
    "-x",
    "x[y]",
    "x.k",
    "len(x)",
    "abs(x)",
    "round(x)",
    "int(x)",
    "float(x)",
    "sorted([x, y])",
    "min(x, y)",
    "x in y",
    "lower(x)",
    "join(x, y)",
    "x.k.q",
    "max(x)",
    "{x: 1}",
    "x ** y",
    "x // y",
    "any(x)",
    "all(x)",
    "upper(x)",
    "str(x)",
    "bool(x)",
    "round(x, y)",
    "x[y:]",
    "sorted(x)",
    "len(x) > y",
    "x == y and x < 1",
]


@settings(max_examples=300, deadline=None)
@given(shape=st.sampled_from(SHAPES), x=VALUES, y=VALUES)
def test_expression_errors_name_kinds_as_the_graph_language_does(
    shape: str, x: Any, y: Any
) -> None:
    expr = compile_expr(shape)
    try:
        expr.evaluate({"x": x, "y": y})
    except EvaluationError as exc:
        message = str(exc).removeprefix(f"expression {shape!r}: ")
        assert speaks_graph_language(message), message


def test_a_missing_value_is_called_none_with_a_hint() -> None:
    with pytest.raises(EvaluationError) as info:
        compile_expr("a.score + 1").evaluate({"a": SimpleNamespace(score=None)})
    assert str(info.value) == (
        "expression 'a.score + 1': unsupported operand type(s) for +: none and number "
        "(is a node skipped, or a key missing?)"
    )
    with pytest.raises(EvaluationError, match=r"cannot read '\.y' of true$"):
        compile_expr("a.t.y").evaluate({"a": SimpleNamespace(t=True)})


HEADER = "moat: 1\nname: t\nmodels:\n  small: {provider: sim, profile: small}\n"


def test_check_shows_the_with_value_it_refused_in_graph_words() -> None:
    text = HEADER + textwrap.dedent(
        """\
        nodes:
          a: {type: echo, with: {text: true}}
          b: {type: echo, with: {text: ~}}
          c: {type: review, with: {threshold: [1, null]}}
        output:
          x: a.text
          y: b.text
          z: c.score
        """
    )
    errors = [str(e) for e in check_text(text, "case.yaml", registry=registry()).errors]
    assert errors == [
        "case.yaml:6:32: node 'a': with.text: Input should be a string, got true "
        "(type 'echo'; see `moat nodes echo`)",
        "case.yaml:7:32: node 'b': with.text: Input should be a string, got none "
        "(type 'echo'; see `moat nodes echo`)",
        "case.yaml:8:39: node 'c': with.threshold: Input should be a number, got a list "
        "([1, none]) (type 'review'; see `moat nodes review`)",
    ]


def test_a_with_value_refused_at_run_time_is_named_in_graph_words() -> None:
    graph = load_graph_text(
        HEADER + "nodes:\n  a: {type: echo, with: {text: '{{ input.t }}'}}\noutput:\n  x: a.text\n",
        registry=registry(),
    )
    from engine import Pipeline

    async def go() -> str | None:
        async with Pipeline(graph) as pipe:
            return (await pipe.run({"t": None})).error

    error = anyio.run(go)
    assert error is not None and "text: Input should be a string, got none" in error
    assert speaks_graph_language(error), error


def test_policy_refusals_show_values_in_graph_words() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy({"cache": {"on": 1}}, located_body({}), previous={"cache": {"on": True}})
    message = str(info.value)
    assert "changed type from true/false (true in the active version) to number (1)" in message
    assert speaks_graph_language(message), message


def test_a_graph_file_of_the_wrong_shape_is_named_in_graph_words() -> None:
    for text, kind in (("[1, 2]", "a list"), ("'hello'", "a string"), ("true", "true/false")):
        (error,) = check_text(text, "case.yaml").errors
        assert f"this one is {kind}" in str(error)


def test_moat_nodes_shows_field_types_in_graph_words(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    for node_type in ("critic", "model", "validate", "cache", "router", "retrieve"):
        assert main(["nodes", node_type]) == 0
        out = capsys.readouterr().out
        fields = "\n".join(
            line
            for line in out.splitlines()
            if line.startswith("  ") and not line.startswith("      ")
        )
        assert speaks_graph_language(fields) and "Literal" not in fields, fields
    assert main(["nodes", "critic"]) == 0
    assert "  mode: 'request' | 'draft' = 'draft'\n" in capsys.readouterr().out
