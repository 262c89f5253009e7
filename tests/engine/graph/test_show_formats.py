"""`moat show` draws any valid graph in each format without breaking the format: every
node is drawn once under an id of its own (loop bodies may reuse the ids of other scopes),
no node id is read as a word of the format's syntax, and no name or expression can break
a line or reach the terminal as a control character."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.cli.graph import render_dot, render_mermaid, render_text
from engine.graph.loader import load_graph_text

MERMAID_WORDS = [
    "call",
    "classdef",
    "click",
    "default",
    "direction",
    "end",
    "flowchart",
    "graph",
    "href",
    "interpolate",
    "linkstyle",
    "style",
    "subgraph",
    "v",
]
"""Valid node ids that are words of mermaid's flowchart syntax (`class` is refused as a
Python keyword already)."""

_MERMAID_ID = r"[A-Za-z][A-Za-z0-9_.]*"
_MERMAID_STATEMENT = re.compile(
    rf'(?P<box>{_MERMAID_ID})\["(?P<label>[^"\n]*)"\]'
    rf'|subgraph (?P<loop>{_MERMAID_ID})\["[^"\n]*"\]'
    r"|end"
    rf"|style {_MERMAID_ID} stroke-dasharray: 5 5"
    rf"|(?P<src>{_MERMAID_ID}) (?:-->|-\.->) (?P<dst>{_MERMAID_ID})"
    r'|(?P<out>out_\w+)\[/"output: [^"\n]*"/\]'
)


def redact(text: str) -> dict[str, object]:
    return {"type": "redact", "with": {"text": text}}


def mermaid_parts(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The ids declared (nodes, loops, output boxes) and the edges of a mermaid chart, each
    line checked against the statements `moat show` writes."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    declared: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        found = _MERMAID_STATEMENT.fullmatch(line.strip())
        assert found is not None, line
        declared += [found[k] for k in ("box", "loop", "out") if found[k]]
        if found["src"]:
            edges.append((found["src"], found["dst"]))
    return declared, edges


def dot_parts(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The node ids declared in a dot graph and its edges (ids unquoted)."""
    declared = re.findall(r'^\s*"((?:[^"\\]|\\.)*)" \[', text, flags=re.M)
    edges = re.findall(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"', text, flags=re.M)
    return declared, edges


def loop_graph() -> str:
    """Two loops whose bodies reuse a top-level id, and an `out_` node beside an output."""
    body = {"a": redact("{{ input.q }}")}
    doc = {
        "moat": 1,
        "name": "loops",
        "nodes": {
            "a": redact("{{ input.q }}"),
            "out_v": redact("{{ a.text }}"),
            "first": {"type": "loop", "max_cycles": 2, "nodes": body, "output": {"t": "a.text"}},
            "second": {"type": "loop", "max_cycles": 2, "nodes": body, "output": {"t": "a.text"}},
        },
        "output": {"v": "first.t + second.t", "w": "out_v.text"},
    }
    return yaml.safe_dump(doc)


def test_loop_bodies_reusing_an_id_are_drawn_as_nodes_of_their_own() -> None:
    graph = load_graph_text(loop_graph())
    declared, edges = mermaid_parts(render_mermaid(graph))
    assert sorted(declared) == sorted(
        ["a", "first.a", "second.a", "first", "second", "N.out_v", "out_v", "out_w"]
    )
    assert ("N.out_v", "out_w") in edges and ("first", "out_v") in edges
    assert '        first.a["a: redact"]' in render_mermaid(graph).splitlines()
    dot_declared, dot_edges = dot_parts(render_dot(graph))
    assert sorted(dot_declared) == sorted(
        ["a", "first/a", "second/a", "first", "second", "out_v", "output.v", "output.w"]
    )
    assert ("a", "out_v") in dot_edges and ("out_v", "output.w") in dot_edges


@pytest.mark.parametrize("word", MERMAID_WORDS)
def test_a_node_id_that_is_a_mermaid_word_is_drawn_under_another_id(word: str) -> None:
    doc = {
        "moat": 1,
        "name": "words",
        "nodes": {
            "a": redact("{{ input.q }}"),
            word: redact("{{ a.text }}"),
            "lp": {"type": "loop", "max_cycles": 1, "nodes": {word: redact("x")}, "output": {}},
        },
        "output": {"v": f"{word}.text"},
    }
    text = render_mermaid(load_graph_text(yaml.safe_dump(doc)))
    declared, edges = mermaid_parts(text)
    assert word not in declared, text
    assert f'    N.{word}["{word}: redact"]' in text.splitlines()
    assert ("a", f"N.{word}") in edges and (f"N.{word}", "out_v") in edges
    assert f'        lp.{word}["{word}: redact"]' in text.splitlines()


_IDS = st.sampled_from(["a", "b", "out_a", "out_0", "end", "style", "v", "graph", "n"])


@settings(max_examples=40, deadline=None)
@given(
    top=st.lists(_IDS, min_size=1, max_size=5, unique=True),
    body=st.lists(_IDS, min_size=1, max_size=3, unique=True),
    loop_id=_IDS,
    outputs=st.lists(st.sampled_from(["a", "0", "x y", "end", "v"]), max_size=3, unique=True),
)
def test_every_node_is_declared_once_and_every_edge_joins_declared_ids(
    top: list[str], body: list[str], loop_id: str, outputs: list[str]
) -> None:
    nodes: dict[str, object] = {}
    for i, nid in enumerate(top):  # a chain: each node reads the one before
        nodes[nid] = redact(f"{{{{ {top[i - 1]}.text }}}}" if i else "{{ input.q }}")
    if loop_id not in nodes:
        inner = {
            nid: redact(f"{{{{ {body[0]}.text }}}}" if i else "x") for i, nid in enumerate(body)
        }
        nodes[loop_id] = {"type": "loop", "max_cycles": 2, "nodes": inner, "output": {}}
    doc = {
        "moat": 1,
        "name": "any",
        "nodes": nodes,
        "output": {o: f"{top[-1]}.text" for o in outputs} or {"r": f"{top[-1]}.text"},
    }
    graph = load_graph_text(yaml.safe_dump(doc))
    for draw, parts in ((render_mermaid, mermaid_parts), (render_dot, dot_parts)):
        declared, edges = parts(draw(graph))
        assert len(declared) == len(set(declared)), declared
        assert len(declared) == len(nodes) + len(graph.output) + (
            len(body) if loop_id not in top else 0
        )
        for src, dst in edges:
            assert src in declared and dst in declared, (src, dst, declared)
    mermaid_declared = mermaid_parts(render_mermaid(graph))[0]
    assert not set(mermaid_declared) & set(MERMAID_WORDS)


HOSTILE = 'x\x1b[31m\r\x0b\x85\u2028y#35;"\\\t\n z'
SHOWN = r"x\x1b[31m\r\x0b\x85\u2028y#35;" + '"' + "\\\t" + r"\n z"
"""`HOSTILE` on one line, control characters escaped (a tab is kept)."""


def test_names_descriptions_and_expressions_cannot_break_a_line_or_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {
        "moat": 1,
        "name": HOSTILE,
        "description": f"first line\n{HOSTILE}",
        "nodes": {"a": redact("{{ input.q }}") | {"when": "input.q != 'x\\x1b'"}},
        "output": {HOSTILE: "a.text"},
    }
    graph = load_graph_text(yaml.safe_dump(doc))
    assert render_text(graph).splitlines() == [
        f"{SHOWN}  (<string>)",
        "  first line",  # a description's lines are its own, each indented
        f"  {SHOWN.partition(chr(92) + 'n')[0]}",
        "   z",
        r"  a: redact  [when input.q != 'x\x1b']",
        "  output:",
        f"    {SHOWN} = a.text",
    ]
    mermaid = render_mermaid(graph).splitlines()
    label = SHOWN.replace("#", "#35;").replace('"', "#quot;")
    assert mermaid[2] == f'    out_0[/"output: {label}"/]'
    dot = render_dot(graph).splitlines()
    assert len(dot) == 7 and dot[0].startswith('digraph "x\\\\x1b[31m\\\\r')
    for drawn in (render_text(graph), render_mermaid(graph), render_dot(graph)):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", drawn), drawn
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(doc))
    for form in ("text", "mermaid", "dot"):
        assert main(["show", str(tmp_path / "g.yaml"), "--format", form]) == 0
        assert "\x1b" not in capsys.readouterr().out
