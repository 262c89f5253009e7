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
