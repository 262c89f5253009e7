"""The name an expression reads before anything else, which the scheduler relies on."""

from __future__ import annotations

import pytest

from engine.expr.expression import Unresolved, compile_expr, compile_template


@pytest.mark.parametrize(
    ("source", "first"),
    [
        ("risk.score", "risk"),
        ("a.b if c.d else e", "c"),
        ("x and y", "x"),
        ("not x or y", "x"),
        ("len(z) > 3", "z"),
        ("a['k'].b - 1", "a"),
        ("true and x", None),  # a constant first: nothing is sure to be read first
        ("1 + q", None),
        ("[q, r]", None),
        ("none", None),
    ],
)
def test_the_first_name_is_the_one_evaluation_reads_first(source: str, first: str | None) -> None:
    expr = compile_expr(source)
    assert expr.first == first
    if first is not None:  # reading it while it is missing is the first thing that happens
        with pytest.raises(Unresolved) as caught:
            expr.evaluate({})
        assert caught.value.name == first


def test_a_template_reads_its_first_expression_first() -> None:
    template = compile_template({"a": 1, "b": "x {{ p.q if r else s }}", "c": "{{ t }}"})
    assert template.first == "r"
    with pytest.raises(Unresolved) as caught:
        template.evaluate({})
    assert caught.value.name == "r"
