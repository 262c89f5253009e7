"""Check 9 on model names an expression picks: each literal the expression can give is a
model under `models:`, reported at that literal with the closest name, before any request
takes the branch that holds it."""

from __future__ import annotations

import textwrap

import pytest

from engine.graph.loader import check_text

HEADER = """\
moat: 1
name: pick
input: {type: object, properties: {prompt: {type: string}}, required: [prompt]}
models:
  small: {provider: sim, profile: small}
  large: {provider: sim, profile: large}
nodes:
  route: {type: router, with: {text: "{{ input.prompt }}", routes: {a: {model: small}}}}
"""
# The node under test is on line 9.


def check(node: str, output: str = "n.text") -> list[str]:
    text = HEADER + textwrap.indent(node, "  ") + f"\noutput:\n  out: {output}\n"
    report = check_text(text, "pick.yaml")
    return [str(e) for e in report.errors]


LRAGE = "'lrage'"
UNKNOWN = "is not defined under `models:` (did you mean 'large'?). Defined: large, small"


def at(node: str, literal: str) -> str:
    """`line:column` of `literal` in the node under test (written on line 9, indented 2)."""
    return f"9:{node.index(literal) + 3}"


@pytest.mark.parametrize(
    "model",
    [
        "{{ 'lrage' if route.route == 'a' else 'small' }}",
        "{{ 'small' if route.route == 'a' else 'lrage' }}",
        "{{ 'small' if route.confidence > 0.5 else ('large' if request.degraded else 'lrage') }}",
        "{{ route.route == 'a' and 'lrage' or 'small' }}",
        "{{ {'a': 'small', 'b': 'lrage'}[route.route] }}",
        "{{ ['small', 'lrage'][request.degraded] }}",
    ],
)
def test_a_model_name_an_expression_can_give_is_checked_at_its_literal(model: str) -> None:
    node = f'n: {{type: model, with: {{prompt: hi, model: "{model}"}}}}'
    assert check(node) == [
        f"pick.yaml:{at(node, LRAGE)}: node 'n': model 'lrage' (a value the expression "
        f"can give) {UNKNOWN}"
    ]


def test_a_route_whose_model_an_expression_picks_is_checked_too() -> None:
    node = (
        "n: {type: router, with: {text: hi, routes: {a: {model: small}, "
        "b: {model: \"{{ 'lrage' if request.degraded else 'small' }}\"}, c: {model: lrag}}}}"
    )
    assert check(node, output="n.route") == [
        f"pick.yaml:{at(node, LRAGE)}: node 'n': model 'lrage' (a value the expression "
        f"can give) {UNKNOWN}",
        f"pick.yaml:{at(node, 'lrag}')}: node 'n': model 'lrag' {UNKNOWN}",
    ]


@pytest.mark.parametrize(
    "model",
    [
        "{{ 'large' if route.route == 'a' else 'small' }}",
        "{{ route.route }}",  # known only per request: the node says so then
        "{{ input.prompt or 'small' }}",
        "{{ 'lar' + 'ge' if request.degraded else 'small' }}",  # not evaluated
        "sim-{{ route.route }}",  # text around it: a name put together at run time
    ],
)
def test_expressions_whose_literals_are_models_or_unknown_pass(model: str) -> None:
    assert check(f'n: {{type: model, with: {{prompt: hi, model: "{model}"}}}}') == []
