"""Rules between a node's `with:` keys are judged by `moat check` when the keys are settled.

A router's feedback naming no route, a retrieve node with nothing to search (or two
corpora) and a cache store given no value: each would break or silently do nothing on every
request, so each is an error at check time naming the node, the key and the fix. When an
expression sets one of the keys involved, the rule is left to the request
(`at_check(info, *keys)`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import anyio
import pytest

from engine.graph.loader import check_text
from tests.support.sched_nodes import run

HEADER = """\
moat: 1
name: rules
models:
  small: {provider: sim, profile: small, time_scale: 0}
nodes:
"""
ROUTES = "routes: {cheap: {model: small}, capable: {model: small}}"


def check(tmp_path: Path, node: str, output: str) -> list[str]:
    text = HEADER + textwrap.indent(node, "  ") + f"output:\n  a: {output}\n"
    report = check_text(text, str(tmp_path / "g.yaml"), base_dir=tmp_path)
    return [str(e) for e in report.errors]


@pytest.mark.parametrize(
    ("node", "output", "says"),
    [
        (
            f"n: {{type: router, with: {{text: hi, mode: feedback, {ROUTES}}}}}\n",
            "n.route",
            "6:27: node 'n': with.route: `mode: feedback` records how a route did, but no "
            "`route:` is given; set `route:` to the route the request took (routes: cheap, "
            'capable), e.g. `route: "{{ pick.route }}"`',
        ),
        (
            f"n: {{type: router, with: {{text: hi, mode: feedback, route: cheep, {ROUTES}}}}}\n",
            "n.route",
            "6:61: node 'n': with.route: `mode: feedback` records how a route did, but 'cheep' is "
            "no route; set `route:` to the route the request took (routes: cheap, capable)",
        ),
        (
            'n: {type: retrieve, with: {query: "{{ input.prompt }}"}}\n',
            "n.passages",
            "6:29: node 'n': with.passages: nothing to search: give `corpus:` (a file of "
            "passages) or an inline `passages:` list",
        ),
        (
            'n: {type: retrieve, with: {query: hi, corpus: c.txt, passages: ["a"]}}\n',
            "n.passages",
            "6:66: node 'n': with.passages: give `corpus:` or `passages:`, not both: the corpus "
            "file would be searched and these passages ignored",
        ),
        (
            'n: {type: cache, with: {text: "{{ input.prompt }}", mode: store}}\n',
            "n.stored",
            "6:61: node 'n': with.mode: `mode: store` saves `value:` for `text:`, but no "
            "`value:` is given, so nothing is ever stored",
        ),
    ],
)
def test_a_config_every_request_would_break_on_is_refused_at_check(
    tmp_path: Path, node: str, output: str, says: str
) -> None:
    (tmp_path / "c.txt").write_text("a passage\n")
    (error,) = check(tmp_path, node, output)
    assert f"g.yaml:{says}" in error, error


@pytest.mark.parametrize(
    ("node", "output", "expected"),
    [
        (  # the mode is the request's to decide
            "n: {type: critic, with: {model: small, "
            "mode: \"{{ 'request' if input.prompt else 'draft' }}\"}}\n",
            "n.action in ['proceed', 'revise', 'refuse']",
            True,
        ),
        (
            'n: {type: critic, with: {model: small, draft: "{{ input.prompt }}"}}\n',
            "n.parsed in [true, false]",
            True,
        ),
        (
            f"n: {{type: router, with: {{text: hi, mode: feedback, "
            f'route: "{{{{ input.prompt }}}}", {ROUTES}}}}}\n',
            "n.route",
            "cheap",
        ),
        (
            'n: {type: retrieve, with: {query: hi, passages: "{{ [input.prompt] }}"}}\n',
            "n.passages[0].text",
            "cheap",
        ),
        (  # `store:` is the documented other name of `value:`
            'n: {type: cache, with: {text: hi, mode: store, store: "{{ input.prompt }}"}}\n',
            "n.stored",
            True,
        ),
        (
            'n: {type: cache, with: {text: hi, mode: store, negative_when: "{{ true }}"}}\n',
            "n.stored",
            True,
        ),
    ],
)
def test_a_rule_an_expression_decides_is_left_to_the_request(
    tmp_path: Path, node: str, output: str, expected: object
) -> None:
    text = HEADER + textwrap.indent(node, "  ") + f"output:\n  a: {output}\n"
    report = check_text(text, str(tmp_path / "g.yaml"), base_dir=tmp_path)
    assert report.errors == [] and report.graph is not None
    result, _ = anyio.run(run, report.graph, {"prompt": "cheap"})
    assert (result.status.value, result.output) == ("ok", {"a": expected})


def test_a_misspelt_route_key_is_refused_with_the_key_meant(tmp_path: Path) -> None:
    node = (
        "n: {type: router, with: {text: hi, routes: {cheap: {model: small, exemplar: [hi]}, "
        "capable: {model: small, teir: 1}}}}\n"
    )
    assert check(tmp_path, node, "n.route") == [
        f"{tmp_path / 'g.yaml'}:6:54: node 'n': with.routes.cheap: unknown route key "
        "'exemplar' (did you mean 'exemplars'?); keys: exemplars, model, tier (type 'router'; "
        "see `moat nodes router`)",
        f"{tmp_path / 'g.yaml'}:6:95: node 'n': with.routes.capable: unknown route key 'teir' "
        "(did you mean 'tier'?); keys: exemplars, model, tier (type 'router'; see `moat nodes "
        "router`)",
    ]


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (
            "n: {type: critic, with: {model: small, mode: request, revise_at: 0.9, "
            "refuse_at: 0.5}}\n",
            "6:84: node 'n': with.refuse_at: refuse_at (0.5) is under revise_at (0.9): a risk "
            "that forces a refusal must force a revision first; make revise_at <= refuse_at",
        ),
        (
            "n: {type: simulator, with: {model: small, draft: x, low_below: 0.7}}\n",
            "6:66: node 'n': with.low_below: low_below (0.7) is above high_at (0.6): a harm "
            "would be both low and high; make low_below <= high_at",
        ),
        (
            "n: {type: converge, with: {harm_floor: 0.5}}\n",
            "6:29: node 'n': with.harm_ceiling: harm_ceiling (0.4) is under harm_floor (0.5): "
            "early convergence must ask for less harm than a later cycle's acceptance; make "
            "harm_floor <= harm_ceiling",
        ),
        (
            "n: {type: converge, with: {refuse_harm: 0.3}}\n",
            "6:43: node 'n': with.refuse_harm: refuse_harm (0.3) is under harm_ceiling (0.4): "
            "a harm a later cycle accepts would also be refused; make harm_ceiling <= "
            "refuse_harm",
        ),
        (
            "n: {type: converge, with: {violations: -1}}\n",
            "6:42: node 'n': with.violations: a count is 0 or more, got -1",
        ),
    ],
)
def test_thresholds_out_of_order_are_refused_at_check(tmp_path: Path, node: str, says: str) -> None:
    (error,) = check(tmp_path, node, "n")
    assert f"g.yaml:{says}" in error, error


def test_thresholds_an_expression_sets_are_put_in_order_by_each_request(
    tmp_path: Path,
) -> None:
    node = 'n: {type: converge, with: {harm_ceiling: "{{ input.c }}", refuse_harm: 0.5}}\n'
    text = HEADER + textwrap.indent(node, "  ") + "output:\n  a: n.decision\n"
    report = check_text(text, str(tmp_path / "g.yaml"), base_dir=tmp_path)
    assert report.errors == [] and report.graph is not None
    result, _ = anyio.run(run, report.graph, {"c": 0.3})
    assert result.status.value == "ok"
    result, _ = anyio.run(run, report.graph, {"c": 0.7})
    assert result.status.value == "failed"
    assert "refuse_harm (0.5) is under harm_ceiling (0.7)" in str(result.error)
