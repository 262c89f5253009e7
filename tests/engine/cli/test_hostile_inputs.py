"""No file or argument a user can give makes `moat check/show/nodes/policy` fail with an
internal error: every refusal is exit 2 with a message that names the file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.cli.graph import render_dot, render_mermaid
from engine.graph.loader import load_graph_text
from engine.located_yaml import MAX_BYTES

COMMANDS = (("check",), ("show",), ("nodes", "--graph"))
FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: a malformed option
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_cleanly(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    for command in COMMANDS:
        code, _, err = run(capsys, *command, str(path))
        assert code in (0, 2), (command, err)
        assert "internal error" not in err and "Traceback" not in err, (command, err)
        if code == 2:
            assert str(path) in err, (command, err)  # located: the message names the file


GRAPH_KEYS = [
    "moat",
    "name",
    "nodes",
    "output",
    "models",
    "policy",
    "input",
    "budget",
    "type",
    "with",
    "when",
    "speculative",
    "max_cycles",
    "until",
    "optional",
    "timeout_ms",
    "retries",
    "provider",
    "profile",
    "prompt",
    "model",
    "text",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "{{ input.x }}",
            "{{",
            "a.b",
            "loop",
            "model",
            "sim",
            "policy.x",
            "${HOME}",
            "${NOPE_X}",
            "1e999",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.one_of(st.sampled_from(GRAPH_KEYS), st.text(max_size=8)), inner, max_size=5
        )
    ),
    max_leaves=30,
)
GRAPHS = st.fixed_dictionaries(
    {},
    optional={
        "moat": st.one_of(st.just(1), VALUES),
        "name": st.one_of(st.just("g"), VALUES),
        "nodes": VALUES,
        "output": VALUES,
        "models": VALUES,
        "policy": st.one_of(VALUES, st.sampled_from(["p.yaml", "/", "x" * 300, "g.yaml"])),
        "plugins": st.lists(st.sampled_from(["", "no_such_mod_q", "../x", "a..b", ".x"])),
        "input": VALUES,
        "budget": VALUES,
    },
)


@settings(max_examples=50, deadline=None, suppress_health_check=FIXTURE)
@given(data=GRAPHS)
def test_random_graph_shaped_yaml_is_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any]
) -> None:
    (tmp_path / "p.yaml").write_text("name: p\nx: 1\n")
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    assert_refused_cleanly(capsys, path)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(raw=st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode)))
def test_random_bytes_are_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes(raw)
    assert_refused_cleanly(capsys, path)


LAUGHS = "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
HOSTILE = {
    "deep list": "[" * 5000 + "]" * 5000,
    "deep mapping": "a: " * 3000 + "1",
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + LAUGHS
    + "moat: 1\nname: x\nnodes: {}\noutput: {x: i}\n",
    "laughs in with": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + LAUGHS
    + "moat: 1\nname: x\nmodels: {m: {provider: sim, profile: small}}\n"
    "nodes: {n: {type: model, with: {model: m, prompt: hi, x: *i}}}\noutput: {x: n.text}\n",
    "python tag": "!!python/object/apply:os.system ['echo pwned']\n",
    "nul": "moat: 1\x00\n",
    "tab indent": "moat: 1\n\tname: x\n",
    "complex key": "? [1, 2]\n: x\nmoat: 1\n",
    "odd keys": "moat: 1\nname: x\nnodes: {1: {type: model}, ~: {type: x}, true: {}}\n"
    "output: {~: 1}\n",
    "wrong types everywhere": "moat: 1\nname: [1]\nnodes: {a: {type: [1], with: 3, when: {x: 1}}}"
    "\noutput: 5\nplugins: 3\npolicy: [1]\nmodels: 1\nbudget: x\ninput: 3\n",
    "policy is a folder": "moat: 1\nname: x\npolicy: /\nnodes: {}\noutput: {}\n",
    "policy name too long": f"moat: 1\nname: x\npolicy: {'a' * 300}\nnodes: {{}}\noutput: {{}}\n",
    "policy with a NUL": 'moat: 1\nname: x\npolicy: "a\\0b"\nnodes: {}\noutput: {}\n',
    "policy is the graph": "moat: 1\nname: x\npolicy: g.yaml\nnodes: {}\noutput: {x: policy.a}\n",
    "deep expression": "moat: 1\nname: x\nnodes: {}\noutput: {x: '"
    + "(" * 500
    + "1"
    + ")" * 500
    + "'}\n",
    "long expression": "moat: 1\nname: x\nnodes: {}\noutput: {x: '" + "1+" * 5000 + "1'}\n",
    "nested loops": "moat: 1\nname: x\nnodes:\n"
    + "".join(
        "  " * (i + 1)
        + f"l{i}:\n"
        + "  " * (i + 2)
        + "type: loop\n"
        + "  " * (i + 2)
        + "max_cycles: 2\n"
        + "  " * (i + 2)
        + "nodes:\n"
        for i in range(60)
    )
    + "output: {}\n",
    "huge numbers": "moat: 1\nname: x\nbudget: {cost_usd: 1e999, deadline_ms: "
    + "9" * 5000
    + "}\nnodes: {}\noutput: {x: "
    + "9" * 5000
    + "}\n",
    "two documents": "moat: 1\n---\nmoat: 2\n",
    "failing constant in with": "moat: 1\nname: x\nnodes:\n  a: {type: validate, with: "
    '{schema: {}, value: "{{ 1/0 }}", max_repairs: "{{ [] + 1 }}"}}\noutput: {x: a.value}\n',
    "oversized constant in with": "moat: 1\nname: x\nnodes:\n  a: {type: validate, with: "
    "{schema: {}, value: \"{{ 'a' * 10**9 }}\"}}\noutput: {x: a.value}\n",
    "wide hexadecimal numbers": f"moat: 1\nname: 0x{'f' * 5000}\n"
    f"budget: {{cost_usd: 0x{'f' * 5000}}}\nnodes: {{}}\noutput: {{x: 1}}\n",
    "wide number in with": "moat: 1\nname: x\nnodes:\n  a: {type: validate, with: {schema: {}, "
    f"max_repairs: 0x{'f' * 5000}}}}}\noutput: {{x: a.value}}\n",
    "binary tag": "moat: 1\nname: !!binary aGVsbG8=\nnodes: {}\noutput: {}\n",
    "set tag": "moat: 1\nname: x\nnodes: !!set {a, b}\noutput: {}\n",
    "merge keys": "b: &b {type: model}\nmoat: 1\nname: x\nnodes: {a: {<<: *b}}\noutput: {}\n",
    "nan version": "moat: .nan\nname: x\nnodes: {}\noutput: {x: .inf}\n",
    "huge file": "moat: 1\nname: x\nnodes: {}\noutput:\n"
    + "".join(f"  k{i}: '{i} + 1'\n" for i in range(MAX_BYTES // 12)),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_graph_files_are_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    assert_refused_cleanly(capsys, path)


@pytest.mark.parametrize(
    "name", ["missing.yaml", "/", "a" * 300, "/dev/zero", "-", ".", "\u00e9\u00e9.yaml"]
)
def test_hostile_graph_paths_are_refused_cleanly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in COMMANDS:
        code, _, err = run(capsys, *command, name)
        assert code == 2, (command, err)
        assert "internal error" not in err and "Traceback" not in err, (command, err)


@pytest.mark.timeout(20)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_rather_than_waited_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    for command in ("check", "show"):
        code, _, err = run(capsys, command, str(pipe))
        assert code == 2 and f"{pipe}:1:1: a graph file must be a mapping" in err, (command, err)
    assert run(capsys, "nodes", "--graph", str(pipe))[0] == 0  # no `plugins:` to add
    graph = tmp_path / "g.yaml"
    graph.write_text("moat: 1\nname: x\npolicy: pipe.yaml\nnodes: {}\noutput: {x: 1}\n")
    code, _, err = run(capsys, "check", str(graph))
    assert code == 2 and "policy file 'pipe.yaml' is not a regular file" in err, err


_ANY_NAME = st.text(st.sampled_from('ab "\\\n];{}-->|#&'), min_size=1, max_size=12)
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)(?:\\\\)*"')


@settings(max_examples=60, deadline=None)
@given(name=_ANY_NAME, outputs=st.lists(_ANY_NAME, min_size=1, max_size=4, unique=True))
def test_any_graph_or_output_name_is_escaped_in_mermaid_and_dot(
    name: str, outputs: list[str]
) -> None:
    doc = {"moat": 1, "name": name, "nodes": {}, "output": {o: "1" for o in outputs}}
    graph = load_graph_text(yaml.safe_dump(doc))
    for line in render_dot(graph).splitlines():  # one statement per line, its ids quoted
        assert len(_UNESCAPED_QUOTE.findall(line)) % 2 == 0, line
    boxes = render_mermaid(graph).splitlines()[1:]
    assert len(boxes) == len(outputs)
    for line in boxes:
        assert re.fullmatch(r'    out_\w+\[/"output: [^"\n]*"/\]', line), line


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(
    raw=st.one_of(st.binary(max_size=300), st.builds(lambda d: yaml.safe_dump(d).encode(), VALUES))
)
def test_hostile_policy_files_are_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_bytes(raw)
    db = str(tmp_path / "moat.db")
    for args in (
        ("apply", str(policy)),
        ("apply", str(policy), "--graph", str(policy)),
        ("diff", str(policy), str(policy)),
        ("show", "p"),
    ):
        code, _, err = run(capsys, "policy", *args, "--db", db)
        assert code in (0, 2), (args, err)
        assert "internal error" not in err and "Traceback" not in err, (args, err)
