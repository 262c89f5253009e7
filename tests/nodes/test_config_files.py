"""Files a node's `with:` names are read by `moat check`, not discovered by every request.

A missing, malformed or empty corpus, warm file, principles file or weights file is an error
at its `with:` key, naming the file (and its line) and the fix; so are unusable inline
passages and embedder names. A file named by an expression is the node's to read at run
time, as before.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel, ValidationInfo, field_validator

from engine import Node, NodeContext, graph_file, load_graph
from engine.graph.loader import check_text
from engine.plugin.registry import Registry
from tests.support.sched_nodes import run

HEADER = """\
moat: 1
name: files
input:
  type: object
  properties: {prompt: {type: string}, corpus: {type: string}}
  required: [prompt]
models:
  small: {provider: sim, profile: small}
nodes:
"""


def errors(tmp_path: Path, nodes: str, output: str = "n.passages") -> list[str]:
    text = HEADER + textwrap.indent(textwrap.dedent(nodes), "  ") + f"output:\n  a: {output}\n"
    report = check_text(text, str(tmp_path / "g.yaml"), base_dir=tmp_path)
    return [str(e) for e in report.errors]


def retrieve(with_: str) -> str:
    return f'n: {{type: retrieve, with: {{query: "{{{{ input.prompt }}}}", {with_}}}}}\n'


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("missing.jsonl", None, "cannot read corpus '{path}': No such file or directory"),
        ("empty.jsonl", "", "holds no passages"),
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', "corpus {path}:2: not JSON"),
        ("wrong.jsonl", '{"text": 5}\n', "passage #0 must be a string or a mapping with 'text'"),
        ("bad.yaml", "a: [b\n", "corpus {path}: not YAML or JSON"),
        ("latin1.txt", b"caf\xe9\n", "corpus {path}:1: not UTF-8 text"),
    ],
)
def test_a_corpus_that_cannot_serve_is_refused_at_its_key(
    tmp_path: Path, name: str, content: str | bytes | None, says: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    (error,) = errors(tmp_path, retrieve(f"corpus: {name}"))
    assert "g.yaml:10:" in error and "node 'n': with.corpus: " in error
    assert says.format(path=path) in error


def test_a_folder_or_a_fifo_is_not_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    assert "is a folder; name a file" in errors(tmp_path, retrieve("corpus: dir"))[0]
    assert "is not a regular file" in errors(tmp_path, retrieve("corpus: fifo"))[0]


@pytest.mark.parametrize(
    ("with_", "says"),
    [
        ("passages: []", "with.passages: an empty list; give passages, or a `corpus:` file"),
        ("passages: [{id: 1}]", "with.passages: passage #0 must be a string or a mapping"),
        ("passages: [a], embedder: weird", "with.embedder: unknown embedder 'weird'"),
        ("passages: [a], embedder: 'openai:'", "names no model"),
        ("passages: [a], embedder: 'hashing:0'", "DIMS must be a whole number from 1 to 65536"),
    ],
)
def test_unusable_inline_passages_and_embedders_are_refused(
    tmp_path: Path, with_: str, says: str
) -> None:
    (error,) = errors(tmp_path, retrieve(with_))
    assert says in error


def test_a_good_corpus_passes_and_answers(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"id": "a", "text": "refunds take five days"}\n')
    assert errors(tmp_path, retrieve("corpus: corpus.jsonl")) == []


def test_a_corpus_named_by_an_expression_is_read_at_run_time(tmp_path: Path) -> None:
    with_ = 'corpus: "{{ input.corpus }}"'
    assert errors(tmp_path, retrieve(with_)) == []


@pytest.mark.parametrize(
    ("node", "file", "content", "says"),
    [
        (
            'n: {type: cache, with: {text: "{{ input.prompt }}", warm_file: warm.jsonl}}',
            "warm.jsonl", '{"prompt": "a", "value": 1}\nnope\n',
            "cache warm_file {path}:2: not JSON",
        ),
        (
            'n: {type: cache, with: {text: "{{ input.prompt }}", warm_file: warm.yaml}}',
            "warm.yaml", "- just text\n", "expected a list of {{prompt, value}} entries",
        ),
        (
            "n: {type: critic, with: {mode: request, principles: p.yaml, model: small}}",
            "p.yaml", "- 5\n", "principle #1 must be a string or a mapping",
        ),
        (
            "n: {type: critic, with: {mode: request, principles: gone.txt, model: small}}",
            "", None, "cannot read principles file '{dir}/gone.txt'",
        ),
        (
            'n: {type: router, with: {text: "{{ input.prompt }}", weights: w.json, '
            "routes: {cheap: {model: small}}}}",
            "w.json", "{not json", "w.json: not JSON",
        ),
        (
            'n: {type: router, with: {text: "{{ input.prompt }}", weights: w.json, '
            "routes: {cheap: {model: small}}}}",
            "w.json", '{"format": "other"}', "not a router weights file",
        ),
    ],
)  # fmt: skip
def test_warm_files_principles_and_weights_are_read_at_check(
    tmp_path: Path, node: str, file: str, content: str | None, says: str
) -> None:
    if content is not None:
        (tmp_path / file).write_text(content)
    found = errors(tmp_path, node + "\n", output="n")
    assert len(found) == 1, found
    assert "node 'n': with." in found[0]
    assert says.format(path=tmp_path / file, dir=tmp_path) in found[0]


class _Config(BaseModel):
    table: str

    @field_validator("table")
    @classmethod
    def _table_reads(cls, value: str, info: ValidationInfo) -> str:
        path = graph_file(value, info)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no table at {path}; write one with `lookup-build`")
        return value


class _Output(BaseModel):
    rows: int


class Lookup(Node[_Config, _Output]):
    """Counts the lines of a table file."""

    type_name = "lookup"

    async def run(self, config: _Config, ctx: NodeContext) -> _Output:
        return _Output(rows=len(Path(ctx.resolve_path(config.table)).read_text().splitlines()))


def test_a_plugin_reads_its_files_at_check_through_graph_file(tmp_path: Path) -> None:
    registry = Registry.default().copy()
    registry.add(Lookup)
    text = HEADER + "  n: {type: lookup, with: {table: t.txt}}\noutput:\n  a: n.rows\n"
    report = check_text(text, str(tmp_path / "g.yaml"), registry=registry, base_dir=tmp_path)
    (error,) = (str(e) for e in report.errors)
    assert f"with.table: no table at {tmp_path / 't.txt'}; write one with `lookup-build`" in error
    (tmp_path / "t.txt").write_text("a\nb\n")
    report = check_text(text, str(tmp_path / "g.yaml"), registry=registry, base_dir=tmp_path)
    assert not report.errors and report.graph is not None
    result, _ = anyio.run(run, report.graph, {"prompt": "x"})
    assert result.output == {"a": 2}


def test_a_route_naming_an_undefined_model_is_refused_at_the_route(tmp_path: Path) -> None:
    node = (
        'n: {type: router, with: {text: "{{ input.prompt }}", '
        "routes: {cheap: {model: small}, capable: {model: lrage}}}}\n"
    )
    (error,) = errors(tmp_path, node, output="n.route")
    assert "g.yaml:10:" in error
    assert "node 'n': model 'lrage' is not defined under `models:`" in error
    assert "Defined: small" in error


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ("[]", "with.messages: an empty chat; give at least one {role, content} message"),
        ("[{content: hi}]", "message #0 has no role; use one of system, developer, user"),
        ("[{role: user, content: a}, {role: wizard, content: b}]", "message #1 has role 'wizard'"),
        ("[{role: user}]", "message #0 (user) has no content"),
    ],
)
def test_a_chat_a_provider_would_refuse_is_refused_at_check(
    tmp_path: Path, messages: str, says: str
) -> None:
    node = f"n: {{type: model, with: {{model: small, messages: {messages}}}}}\n"
    (error,) = errors(tmp_path, node, output="n.text")
    assert "node 'n': " in error and says in error


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (
            "n: {type: model, with: {model: small, prompt: hi, schema: {type: nonsense}}}",
            "with.schema: not a JSON Schema at type: 'nonsense' is not valid",
        ),
        (
            "n: {type: model, with: {model: small, prompt: hi, schema: {properties: 5}}}",
            "with.schema: not a JSON Schema at properties: 5 is not of type 'object'",
        ),
        (
            'n: {type: validate, with: {text: "{}", schema: {type: nonsense}}}',
            "with.schema.type: 'nonsense' is not valid under any of the given schemas",
        ),
        (
            'n: {type: validate, with: {text: "{}", '
            'schema: {properties: {a: {$ref: "#/$defs/a"}}}}}',
            "with.schema.properties.a.$ref: $ref '#/$defs/a' names nothing in `with.schema`",
        ),
    ],
)
def test_a_schema_that_is_no_json_schema_is_refused_at_check(
    tmp_path: Path, node: str, says: str
) -> None:
    (error,) = errors(tmp_path, node + "\n", output="n")
    assert "node 'n': " in error and says in error


@pytest.mark.parametrize(
    ("node", "key", "good"),
    [
        (
            'n: {type: cache, with: {text: "{{ input.prompt }}", warm_file: "{{ input.path }}"}}',
            "warm_file", ("warm.jsonl", '{"prompt": "refunds", "value": "five days"}\n'),
        ),
        (
            "n: {type: critic, with: {mode: request, model: small, request: "
            '"{{ input.prompt }}", principles: "{{ input.path }}"}}',
            "principles", ("p.yaml", "- Be kind\n"),
        ),
        (
            'n: {type: router, with: {text: "{{ input.prompt }}", weights: "{{ input.path }}", '
            "routes: {cheap: {model: small}}}}",
            "weights", None,
        ),
    ],
)  # fmt: skip
@pytest.mark.anyio
async def test_a_file_path_request_data_makes_stays_in_the_graph_folder(
    tmp_path: Path, node: str, key: str, good: tuple[str, str] | None
) -> None:
    """Every built-in node that reads a file its `with:` names follows one rule: a path an
    expression makes must resolve, symlinks followed, inside the graph file's folder."""
    home = tmp_path / "project"
    home.mkdir()
    (tmp_path / "secret.txt").write_text("- the launch code is 0000\n")
    (home / "link.txt").symlink_to(tmp_path / "secret.txt")
    text = HEADER.replace("corpus: {type: string}", "path: {type: string}")
    (home / "g.yaml").write_text(text + f"  {node}\noutput:\n  a: n\n")
    graph = load_graph(home / "g.yaml")
    for given, resolved in [
        ("/etc/passwd", "/etc/passwd"),
        ("../secret.txt", tmp_path / "secret.txt"),
        ("link.txt", tmp_path / "secret.txt"),
        ("~/../../etc/passwd", "/etc/passwd"),
    ]:
        result, _ = await run(graph, {"prompt": "refunds", "path": given})
        assert result.status == "failed", (given, result.output)
        assert result.error == (
            f"node 'n': `{key}` {given!r}, made by an expression, resolves to "
            f"'{os.path.realpath(resolved)}', outside the graph file's folder "
            f"'{os.path.realpath(home)}'; a path request data or a policy chooses must stay "
            "inside it: name a file there"
        )
    if good is not None:
        (home / good[0]).write_text(good[1])
        result, _ = await run(graph, {"prompt": "refunds", "path": good[0]})
        assert result.status == "ok", result.error


@pytest.mark.anyio
async def test_a_plugin_confines_the_paths_an_expression_makes_by_naming_the_key(
    tmp_path: Path,
) -> None:
    class Confined(Lookup):
        type_name = "confined"

        async def run(self, config: _Config, ctx: NodeContext) -> _Output:
            path = ctx.resolve_path(config.table, key="table")
            return _Output(rows=len(Path(path).read_text().splitlines()))

    registry = Registry.default().copy()
    registry.add(Confined)
    (tmp_path / "t.txt").write_text("a\nb\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("x\n")
    for table, ok in [("t.txt", True), (str(outside), True), ('"{{ input.path }}"', None)]:
        text = HEADER.replace("corpus: {type: string}", "path: {type: string}")
        text += f"  n: {{type: confined, with: {{table: {table}}}}}\noutput:\n  a: n.rows\n"
        (tmp_path / "g.yaml").write_text(text)
        graph = load_graph(tmp_path / "g.yaml", registry=registry)
        if ok:  # written in the graph: the author's choice, wherever it is
            result, _ = await run(graph, {"prompt": "p"})
            assert result.output == {"a": 2 if table == "t.txt" else 1}, result.error
            continue
        result, _ = await run(graph, {"prompt": "p", "path": "t.txt"})
        assert result.output == {"a": 2}, result.error
        result, _ = await run(graph, {"prompt": "p", "path": str(outside)})
        assert result.status == "failed"
        assert result.error is not None and "outside the graph file's folder" in result.error
