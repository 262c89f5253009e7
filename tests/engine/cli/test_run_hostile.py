"""`moat run` under careless and hostile use: whatever a request line or an argument holds,
the batch goes on, each request gets exactly one result, and moat never reports an internal
error. Runs the CLI in-process on a graph without models, so each run is quick."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.events import RequestRecord
from engine.store.store import Store

GRAPH = """
moat: 1
name: echo
input:
  type: object
  required: [prompt]
  properties:
    prompt: {type: string, minLength: 1}
    tenant: {type: string, default: public}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""
LIMITED = GRAPH.replace("nodes:", "limits: {max_request_bytes: 200, max_depth: 8}\nnodes:")
EXAMPLES = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write_graph(folder: Path, text: str = GRAPH) -> Path:
    graph = folder / "echo.yaml"
    graph.write_text(text)
    return graph


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, object]], str]:
    """Exit code, the result lines printed on stdout, and stderr."""
    code = main(["run", *args, "--quiet"])
    captured = capsys.readouterr()
    printed = [json.loads(line) for line in captured.out.split("\n") if line]
    return code, printed, captured.err


def run_file(
    capsys: pytest.CaptureFixture[str], graph: Path, requests: Path, out: Path, db: Path
) -> tuple[int, list[dict[str, object]], str]:
    """`run` of a request file, its results to `out`, stored in `db`."""
    return run(capsys, str(graph), "--input", str(requests), "--out", str(out), "--db", str(db))


def out_lines(path: Path) -> list[dict[str, object]]:
    # split on newlines only: a result's text may hold U+2028 and other line separators
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def runs(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, status FROM runs"))


# -- request lines -----------------------------------------------------------------------

DEEP = "[" * 1100 + "]" * 1100
HOSTILE_LINES = {
    "deep nesting": ('{"prompt": ' + DEEP + "}").encode(),
    "deep list": DEEP.encode(),
    "huge integer": b'{"prompt": "x", "n": ' + b"7" * 5000 + b"}",
    "NaN": b'{"prompt": "x", "n": NaN}',
    "lone surrogate": b'{"prompt": "\\ud800 half a pair"}',
    "surrogate key": b'{"\\udfff": 1, "prompt": "x"}',
    "not UTF-8": b'{"prompt": "caf\xe9"}',
    "null": b"null",
    "a list": b'["a list"]',
    "torn": b'{"prompt": "cut here',
    # meta fields go to the request row's columns, which hold no object and no integer
    # past 64 bits: each was once a store failure that lost the whole batch's rows
    "object conversation id": b'{"prompt": "x", "conversation_id": {"a": 1}}',
    "list parent id": b'{"prompt": "x", "parent_request_id": [1]}',
    "turn index past 64 bits": b'{"prompt": "x", "turn_index": 99999999999999999999999}',
    "turn index as text": b'{"prompt": "x", "turn_index": "2"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_a_hostile_line_is_its_own_invalid_input_and_the_batch_goes_on(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(b'{"prompt": "first"}\n' + HOSTILE_LINES[name] + b'\n{"prompt": "last"}\n')
    out = tmp_path / "out.jsonl"
    code, _, err = run_file(capsys, graph, requests, out, tmp_path / "t.db")
    assert code == 1, err
    assert "internal error" not in err
    results = sorted(out_lines(out), key=lambda r: str(r["request_id"]))
    assert [r["status"] for r in results] == ["ok", "invalid_input", "ok"]
    assert str(results[1]["error"]).startswith(f"{requests}:2")
    assert [r["output"] for r in (results[0], results[2])] == [{"text": "first"}, {"text": "last"}]


GOOD = '{"prompt": "a"}\n{"prompt": "b"}\n'
FILES = {
    "UTF-16 with its BOM": GOOD.encode("utf-16"),
    "UTF-16 without a BOM": GOOD.encode("utf-16-le"),
    "CR line ends": GOOD.replace("\n", "\r").encode(),
    "NUL bytes": b'{"prompt": "a"}\x00\n{"prompt": "b"}\x00\n',
    "a digit string past 4300": b'{"prompt": "a", "n": ' + b"1" * 4400 + b"}\n",
}
FIXES = {
    "UTF-16 with its BOM": "the file looks UTF-16: save it as UTF-8",
    "UTF-16 without a BOM": "the file looks UTF-16: save it as UTF-8",
    "CR line ends": "end each line with \\n (convert the file's CR line ends to LF)",
    "NUL bytes": "the line holds NUL bytes: remove them (in a string, write \\u0000)",
    "a digit string past 4300": "a number with more than 4300 digits; send it as a string",
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_file_moat_cannot_read_says_on_each_line_how_to_fix_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line's error named what JSON expected (`Expecting value`, `Extra data`), not
    what to do about a file saved in the wrong encoding or with the wrong line ends."""
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(FILES[name])
    out = tmp_path / "out.jsonl"
    args = ["--input", str(requests), "--out", str(out), "--db", str(tmp_path / "t.db")]
    code, _, err = run(capsys, str(graph), *args)
    assert code == 1, err
    results = out_lines(out)
    assert results and all(r["status"] == "invalid_input" for r in results)
    for result in results:
        assert str(result["error"]).endswith(FIXES[name]), result["error"]


def test_a_byte_order_mark_on_any_line_is_read_past(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files that each start with a BOM, joined with `cat`, have one on a later line."""
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    bom = "\ufeff".encode()
    requests.write_bytes(bom + b'{"prompt": "a"}\n' + bom + b'{"prompt": "b"}\n')
    out = tmp_path / "out.jsonl"
    args = ["--input", str(requests), "--out", str(out), "--db", str(tmp_path / "t.db")]
    code, _, err = run(capsys, str(graph), *args)
    assert code == 0, err
    assert [r["output"] for r in out_lines(out)] == [{"text": "a"}, {"text": "b"}]


def test_a_line_over_the_size_limit_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path, LIMITED)
    requests = tmp_path / "in.jsonl"
    big = json.dumps({"prompt": "x" * 5000})
    deep = json.dumps({"prompt": "x", "n": [[[[[[[[[[1]]]]]]]]]]})
    requests.write_text(f'{{"prompt": "small"}}\n{big}\n{deep}\n   \n{{"prompt": "after"}}\n')
    out = tmp_path / "out.jsonl"
    code, _, err = run_file(capsys, graph, requests, out, tmp_path / "t.db")
    assert code == 1, err
    results = {str(r["request_id"])[-1]: r for r in out_lines(out)}
    assert [results[k]["status"] for k in "0123"] == ["ok", "invalid_input", "invalid_input", "ok"]
    assert f"{requests}:2: the request is {len(big)} bytes, over the limit of 200" in str(
        results["1"]["error"]
    )
    assert "limits: {max_request_bytes: ...}" in str(results["1"]["error"])
    assert f"{requests}:3: nested more than 8 levels deep" in str(results["2"]["error"])


def test_the_size_limit_can_be_set_for_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "short"}\n{"prompt": "' + "y" * 100 + '"}\n')
    out = tmp_path / "out.jsonl"
    args = ["--input", str(requests), "--out", str(out), "--db", str(tmp_path / "t.db")]
    code, _, _ = run(capsys, str(graph), *args, "--max-request-bytes", "50")
    assert code == 1
    assert sorted(str(r["status"]) for r in out_lines(out)) == ["invalid_input", "ok"]
    assert "over the limit of 50" in "".join(str(r["error"]) for r in out_lines(out))


def test_the_graph_limits_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = write_graph(tmp_path, GRAPH.replace("nodes:", "limits: {max_request_bytes: 0}\nnodes:"))
    code, _, err = run(capsys, str(graph), "--prompt", "hi", "--db", str(tmp_path / "t.db"))
    assert code == 2
    assert "max_request_bytes" in err and "internal error" not in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"prompt": ' + DEEP + "}", "--json: nested more than 64 levels deep"),
        ('{"prompt": "\udc80"}', "--json: not UTF-8 text"),
        ('{"prompt": "\\ud800"}', "--json: input prompt has a lone surrogate"),
        ("{bad", "--json: column 2: invalid JSON"),
        ("null", '--json: a request must be a JSON object, such as {"prompt": "..."}, not none'),
        ('{"prompt": null}', "--json: input prompt: none is not of type 'string'"),
        ('{"prompt": true}', "--json: input prompt: true is not of type 'string'"),
        ('{"prompt": "x", "_labels": [1]}', "--json: `_labels` must be an object, not a list"),
    ],
)
def test_a_hostile_json_request_is_an_invalid_input_result(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    code, printed, err = run(capsys, str(graph), "--json", value, "--db", str(tmp_path / "t.db"))
    assert code == 1, err
    assert "internal error" not in err
    (result,) = printed
    assert result["status"] == "invalid_input"
    assert str(result["error"]).startswith(message), result["error"]


def test_prompt_errors_are_labelled_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    code, printed, _ = run(capsys, str(graph), "--prompt", "", "--db", str(tmp_path / "t.db"))
    assert code == 1
    assert str(printed[0]["error"]).startswith("--prompt: input prompt: ")
    code, printed, _ = run(capsys, str(graph), "--prompt", "\udc80", "--db", str(tmp_path / "t.db"))
    assert code == 1
    assert str(printed[0]["error"]) == (  # (bytes that are not UTF-8 arrive as surrogates)
        "--prompt: not UTF-8 text; pass it as UTF-8 (the encoding of the terminal or of the "
        "program that calls moat)"
    )


def test_a_utf8_prompt_read_under_an_ascii_locale_is_the_text_that_was_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    typed = "caf\u00e9 \u00fcber \u4e2d\u6587"
    as_ascii_locale = typed.encode("utf-8").decode("ascii", "surrogateescape")  # os.fsdecode
    for flag, value in (
        ("--prompt", as_ascii_locale),
        ("--json", json.dumps({"prompt": as_ascii_locale}, ensure_ascii=False)),
    ):
        code, printed, err = run(capsys, str(graph), flag, value, "--db", str(tmp_path / "t.db"))
        assert code == 0, err
        assert printed[0]["status"] == "ok"
        assert printed[0]["output"] == {"text": typed}


line_bytes = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
    st.sampled_from(sorted(HOSTILE_LINES.values())),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
)
valid_prompt = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1
).filter(lambda t: t.strip() == t and t)


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
"""A file that starts with one is read as UTF-16 (its lines are its text's lines), so the
properties below, which mix lines of any bytes, never start a file with one."""


@EXAMPLES
@given(
    lines=st.lists(
        st.one_of(
            valid_prompt.map(lambda p: ("valid", json.dumps({"prompt": p}).encode())),
            line_bytes.map(lambda b: ("any", b)),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_lines_never_abort_the_batch_and_each_gets_one_result(
    lines: list[tuple[str, bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    graph = write_graph(folder)
    requests = folder / "in.jsonl"
    assume(not lines[0][1].startswith(UTF16_BOMS))
    requests.write_bytes(b"\n".join(raw for _, raw in lines) + b"\n")
    expected = [(kind, n) for n, (kind, raw) in enumerate(lines, start=1) if raw.strip()]
    out = folder / "out.jsonl"
    args = ["--input", str(requests), "--out", str(out), "--db", str(folder / "t.db")]
    code, _, err = run(capsys, str(graph), *args)
    assert "internal error" not in err
    assert code in (0, 1), err
    if not expected:
        assert not out.exists() and "has no requests" in err
        return
    results = sorted(out_lines(out), key=lambda r: str(r["request_id"]))
    assert len(results) == len(expected)
    for (kind, number), result in zip(expected, results, strict=True):
        if kind == "valid":
            assert result["status"] == "ok", result
        if result["status"] == "invalid_input":
            assert str(result["error"]).startswith(f"{requests}:{number}")
    assert code == (1 if any(r["status"] != "ok" for r in results) else 0)


BAD_LINES = sorted(
    {
        *HOSTILE_LINES.values(),
        '{"prompt": "a"}'.encode("utf-16"),
        '{"prompt": "a"}'.encode("utf-16-le"),
        b'{"prompt": "a"}\r{"prompt": "b"}',
        b'{"prompt": "a"}\x00',
        b'{"prompt": "a", "n": 1e999}',
        b'{"prompt": "a", "n": -1e999}',
        b'{"prompt": "a", "prompt": 5}',  # the last of two keys counts
        b'{"prompt": "a", "_labels": 5}',
        b'{"prompt": "a", "turn_index": -1}',
        b'{"prompt": "a", "conversation_id": 1.5}',
        b"[" * 100_000,
        b'"a string"',
        b"\xef\xbb\xbf",
    }
)


@EXAMPLES
@given(
    lines=st.lists(
        st.one_of(
            valid_prompt.map(lambda p: ("valid", json.dumps({"prompt": p}).encode())),
            st.sampled_from(BAD_LINES).map(lambda b: ("bad", b)),
            line_bytes.map(lambda b: ("any", b.replace(b"\r", b" "))),
        ),
        min_size=1,
        max_size=12,
    ),
    ending=st.sampled_from([b"\n", b"\r\n"]),
    final=st.booleans(),
)
def test_every_line_is_answered_once_and_recorded_whatever_the_others_hold(
    lines: list[tuple[str, bytes]],
    ending: bytes,
    final: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Good lines are answered ok, bad ones invalid_input, each exactly once, in --out and
    in the store alike, with LF or CRLF line ends and with or without a final one."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    graph = write_graph(folder)
    requests = folder / "in.jsonl"
    assume(not lines[0][1].startswith(UTF16_BOMS))
    requests.write_bytes(ending.join(raw for _, raw in lines) + (ending if final else b""))
    expected = [kind for kind, raw in lines if raw.strip()]
    out, db = folder / "out.jsonl", folder / "t.db"
    started = time.monotonic()
    code, _, err = run_file(capsys, graph, requests, out, db)
    assert time.monotonic() - started < 20
    assert "internal error" not in err and "store failed" not in err, err
    if not expected:
        assert code == 0 and "has no requests" in err
        return
    results = sorted(out_lines(out), key=lambda r: str(r["request_id"]))
    assert len(results) == len(expected) == len({r["request_id"] for r in results})
    for kind, result in zip(expected, results, strict=True):
        if kind != "any":
            assert result["status"] == ("ok" if kind == "valid" else "invalid_input"), result
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT id, status FROM requests"))
        (status,) = conn.execute("SELECT status FROM runs").fetchone()
    assert stored == {r["request_id"]: r["status"] for r in results}
    assert status == "finished"
    assert code == (1 if "invalid_input" in stored.values() else 0)


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{tmp}"], "--out {tmp}: is a folder"),
        (["--out", "{tmp}/missing/out.jsonl"], "folder {tmp}/missing does not exist"),
        (["--db", "{tmp}"], "--db {tmp}: is a folder"),
        (["--db", "{tmp}/missing/t.db"], "folder {tmp}/missing does not exist"),
        (["--input", "{tmp}"], "--input {tmp}: is a folder"),
        (["--concurrency", "0"], "--concurrency 0: must be at least 1"),
        (["--max-request-bytes", "0"], "--max-request-bytes 0: give 1 to 1073741824 (1 GiB)"),
        (["--max-request-bytes", str(10**30)], "give 1 to 1073741824"),
        (["--policy", "{tmp}/nope.yaml"], "--policy {tmp}/nope.yaml: no such file"),
        (["--out", "{tmp}/in.jsonl"], "--out {tmp}/in.jsonl: is also --input"),
        (["--db", "{tmp}/in.jsonl"], "--db {tmp}/in.jsonl: is also --input"),
        # another name of the input: results appended to it would be read back as requests
        (["--out", "{tmp}/hard-link.jsonl"], "--out {tmp}/hard-link.jsonl: is also --input"),
        (["--out", "{tmp}/symlink.jsonl"], "--out {tmp}/symlink.jsonl: is also --input"),
        # SQLite's journal and moat's lock file beside the store: lines there would vanish
        (["--out", "{tmp}/t.db-wal"], "--out {tmp}/t.db-wal: is a file of the store"),
        (["--out", "{tmp}/t.db-writer"], "--out {tmp}/t.db-writer: is a file of the store"),
        (["--out", ""], "--out '': an empty path (a shell variable that is not set?); give a"),
        (["--model", "large=sim:"], "--model 'large=sim:': write NAME=PROVIDER:MODEL, each"),
        (["--model", "large=:small"], "--model 'large=:small': write NAME=PROVIDER:MODEL"),
        (
            ["--model", "large=sim:small", "--model", "large=sim:large"],
            "model 'large' is already bound to 'sim:small' by another --model; give each",
        ),
    ],
)
def test_an_unusable_argument_exits_2_before_anything_is_stored(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "hi"}\n')
    (tmp_path / "hard-link.jsonl").hardlink_to(requests)
    (tmp_path / "symlink.jsonl").symlink_to(requests)
    extra = [e.format(tmp=tmp_path) for e in extra]
    if "--input" not in extra:
        extra = ["--input", str(requests), *extra]
    if "--db" not in extra:
        extra = [*extra, "--db", str(tmp_path / "t.db")]
    code, _, err = run(capsys, str(graph), *extra)
    assert code == 2
    assert message.format(tmp=tmp_path) in err
    assert "internal error" not in err
    assert runs(tmp_path / "t.db") == []


def test_resume_with_an_unusable_out_exits_2_and_leaves_the_run_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    db = tmp_path / "t.db"
    code, _, _ = run(capsys, str(graph), "--prompt", "hi", "--db", str(db))
    assert code == 0
    ((run_id, status),) = runs(db)
    code, _, err = run(capsys, "--resume", run_id, "--out", str(tmp_path), "--db", str(db))
    assert code == 2 and "is a folder" in err and "internal error" not in err
    assert runs(db) == [(run_id, status)]


def test_an_empty_input_file_is_reported_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text("\n   \n")
    code, _, err = run(capsys, str(graph), "--input", str(requests), "--db", str(tmp_path / "t.db"))
    assert code == 0
    assert f"moat: {requests} has no requests" in err
    assert runs(tmp_path / "t.db") == []


arguments = st.lists(
    st.sampled_from(
        [
            ["--out", "{tmp}"],
            ["--out", "{tmp}/no/such/out.jsonl"],
            ["--out", "{tmp}/out.jsonl"],
            ["--db", "{tmp}"],
            ["--db", "{tmp}/in.jsonl"],
            ["--input", "{tmp}"],
            ["--input", "{tmp}/in.jsonl"],
            ["--input", "{tmp}/missing.jsonl"],
            ["--concurrency", "-3"],
            ["--max-request-bytes", "1"],
            ["--resume", "r-20990101-000000-dead"],
            ["--model", "nope"],
            ["--model", "small=sim:huge"],
            ["--policy", "{tmp}/in.jsonl"],
            ["--seed", "7"],
            ["--seed", str(10**30)],
            ["--max-request-bytes", str(10**30)],
            ["--concurrency", str(10**30)],
        ]
    ),
    max_size=4,
)


@EXAMPLES
@given(
    picked=arguments,
    source=st.one_of(
        st.none(),
        st.text(max_size=30).map(lambda t: ["--json", t]),
        st.text(max_size=30).map(lambda t: ["--prompt", t]),
    ),
)
def test_no_arguments_make_an_internal_error(
    picked: list[list[str]],
    source: list[str] | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    graph = write_graph(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n{"prompt": 3}\n')
    args = [str(graph)]
    for pair in picked:
        args += [part.format(tmp=tmp_path) for part in pair]
    if source is not None and "--input" not in args:
        args += source
    if "--db" not in args:
        args += ["--db", str(tmp_path / "t.db")]
    try:
        code = main(["run", *args, "--quiet"])
    except SystemExit as exc:  # argparse refusing a malformed command line
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert code in (0, 1, 2), err


def test_an_output_too_wide_to_print_fails_its_request_not_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(
        tmp_path, GRAPH.replace("text: clean.text", "n: int(input.prompt) + int(input.prompt)")
    )
    code, printed, err = run(
        capsys, str(graph), "--prompt", "9" * 4300, "--db", str(tmp_path / "t.db")
    )
    assert "internal error" not in err and code == 1, err
    assert printed[0]["status"] == "failed"
    assert "would produce an integer wider than 10,000 bits" in str(printed[0]["error"])


def _doubling(value: str, levels: int = 40) -> str:
    """Nodes each holding the one before twice: 2**40 times the input by the last."""
    nodes = ["nodes:", "  n0: {type: validate, with: {schema: {}, value: '{{ input.prompt }}'}}"]
    for i in range(1, levels):
        twice = value.format(f"n{i - 1}.value")
        nodes.append(f'  n{i}: {{type: validate, with: {{schema: {{}}, value: "{twice}"}}}}')
    nodes += ["output:", f"  x: n{levels - 1}.valid", ""]
    return "moat: 1\nname: doubling\n" + "\n".join(nodes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("{{{{ [{0}, {0}] }}}}", "a list or mapping of values read at run time would exceed"),
        ("{{{{ {0} }}}} {{{{ {0} }}}}", "the text of a template would exceed"),
    ],
    ids=["list", "text"],
)
def test_a_value_doubled_node_after_node_fails_its_request_at_the_bound(
    value: str, refusal: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path, _doubling(value))
    code, printed, err = run(capsys, str(graph), "--prompt", "hi", "--db", str(tmp_path / "t.db"))
    assert code == 1 and printed[0]["status"] == "failed", err
    assert refusal in str(printed[0]["error"])


def test_a_non_store_db_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    db = tmp_path / "t.db"
    db.write_text("not a database")
    code, _, err = run(capsys, str(graph), "--prompt", "hi", "--db", str(db))
    assert code == 2 and "not a moat store" in err


def test_resume_hint_names_a_non_default_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import build_parser
    from engine.cli.run import _stopped

    args = build_parser().parse_args(["run", "g.yaml", "--db", "my runs.db"])
    assert _stopped("r-1", args, "interrupted; ", 130) == 130
    assert "Resume with: moat run --resume r-1 --db 'my runs.db'" in capsys.readouterr().err


def test_store_rows_of_a_hostile_batch_are_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(b"\n".join(HOSTILE_LINES.values()) + b"\n")
    db = tmp_path / "t.db"
    code, _, _ = run(
        capsys, str(graph), "--input", str(requests), "--db", str(db), "--out", str(tmp_path / "o")
    )
    assert code == 1
    with Store.open(db, readonly=True) as store:
        (row,) = store.list_runs()
        rows = store.list_requests(row["id"])
    assert [r["seq"] for r in rows] == list(range(len(HOSTILE_LINES)))
    assert {r["status"] for r in rows} == {"invalid_input"}
    assert row["status"] == "finished"


def test_a_tui_left_open_does_not_count_as_the_runs_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    from engine.cli import run as _cli_run

    async def operator_reads_for_a_while(pipe: Any, run_id: str, scope: Any) -> None:
        while pipe.store.get_run(run_id)["status"] != "finished":
            await anyio.sleep(0.02)
        await anyio.sleep(1.5)  # the batch is done; the operator keeps the UI open
        scope.cancel()

    monkeypatch.setattr(_cli_run, "_tui", operator_reads_for_a_while)
    monkeypatch.setattr(_cli_run, "on_terminal", lambda: True)
    finished: list[str] = []
    record_end = Store.finish_run

    def finish_run(self: Store, run_id: str, status: str, at: float | None = None) -> None:
        finished.append(status)
        record_end(self, run_id, status, at)

    monkeypatch.setattr(Store, "finish_run", finish_run)
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    db = tmp_path / "t.db"
    args = ["--input", str(requests), "--out", str(tmp_path / "o.jsonl"), "--db", str(db)]
    code, _, err = run(capsys, str(graph), *args, "--tui")
    closed = time.time()
    assert code == 0, err
    with Store.open(db, readonly=True) as store:
        (row,) = store.list_runs()
        last = max(r["finished_at"] for r in store.list_requests(row["id"]))
    assert row["status"] == "finished"
    assert finished == ["finished"]  # once, when the batch ended, not again when the UI closed
    assert last <= row["finished_at"] < last + 1.0  # generous: it is about 1.5 s otherwise
    assert row["finished_at"] < closed - 1.0


def test_an_input_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    graph = write_graph(tmp_path)
    fifo = tmp_path / "requests.fifo"
    os.mkfifo(fifo)  # reading it twice (count, then answer) would hang or lose requests
    code, _, err = run(capsys, str(graph), "--input", str(fifo), "--db", str(tmp_path / "t.db"))
    assert code == 2
    assert f"--input {fifo}: not a regular file (a pipe or a device); save its content" in err


def test_standard_input_as_the_input_is_refused_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = write_graph(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, str(graph), "--input", "-", "--db", str(tmp_path / "t.db"))
    assert code == 2
    assert "--input -: moat does not read standard input" in err
    assert "save them to a file and pass its path" in err
    assert runs(tmp_path / "t.db") == []


def test_a_store_that_fails_mid_run_exits_1_names_the_cause_and_offers_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store.writer import StoreWriter

    def disk_full(*_: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    graph = write_graph(tmp_path)
    db = tmp_path / "t.db"
    monkeypatch.setattr(StoreWriter, "_commit", disk_full)
    code, _, err = run(capsys, str(graph), "--prompt", "hi", "--db", str(db))
    assert code == 1  # requests ran: not 2
    assert "database or disk is full: check the free disk space" in err
    assert "internal error" not in err
    ((run_id, status),) = runs(db)
    assert status == "failed"
    assert f"Resume with: moat run --resume {run_id} --db {db}" in err


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def test_a_store_that_fails_mid_run_leaves_no_line_in_out_the_store_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines of requests whose rows were not committed stay out of --out; a resume writes
    them once the store has them."""
    from engine.store.writer import StoreWriter

    commit = StoreWriter._commit
    failing = [True]

    def disk_full(self: StoreWriter, conn: sqlite3.Connection, groups: Any) -> int:
        if failing[0] and any(isinstance(r, RequestRecord) for g in groups for r in g):
            raise sqlite3.OperationalError("database or disk is full")
        return commit(self, conn, groups)

    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    db, out = tmp_path / "t.db", tmp_path / "out.jsonl"
    args = [str(graph), "--input", str(requests), "--out", str(out), "--db", str(db)]
    monkeypatch.setattr(StoreWriter, "_commit", disk_full)
    code, _, err = run(capsys, *args)
    assert code == 1, err
    ((run_id, status),) = runs(db)
    assert status == "failed"
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM requests")}
    written = {str(r["request_id"]) for r in out_lines(out)} if out.exists() else set()
    assert written <= stored
    failing[0] = False
    code, _, err = run(capsys, "--resume", run_id, "--db", str(db))
    assert code == 0, err
    assert sorted(str(r["output"]) for r in out_lines(out)) == ["{'text': 'a'}", "{'text': 'b'}"]


def test_numbers_json_has_no_spelling_for_are_written_as_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output that computes NaN or an infinity still gives lines a strict JSON parser
    reads (null, as JavaScript writes them), on stdout, in --out and on --resume."""
    graph = write_graph(
        tmp_path,
        GRAPH.replace(
            "text: clean.text", "text: clean.text\n  nan: float('nan')\n  big: '[1e308 * 10, 1.5]'"
        ),
    )
    db, out = tmp_path / "t.db", tmp_path / "out.jsonl"
    main(["run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet"])
    printed = capsys.readouterr().out
    main(["run", str(graph), "--json", '{"prompt": "hi"}', "--db", str(db), "--out", str(out)])
    for text in (printed, out.read_text()):
        (line,) = [json.loads(t, parse_constant=_refuse) for t in text.split("\n") if t]
        assert line["status"] == "ok"
        assert line["output"] == {"text": "hi", "nan": None, "big": [None, 1.5]}


def test_the_terminal_ui_without_a_terminal_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under cron or with its output in a file, `--tui` had nothing to draw on and the
    command seemed to hang once the batch was done."""
    db = tmp_path / "t.db"
    code, _, err = run(
        capsys, str(write_graph(tmp_path)), "--prompt", "a", "--db", str(db), "--tui"
    )
    assert code == 2 and "--tui: the terminal UI needs a terminal" in err
    assert "moat tui" in err and not db.exists()


def test_an_input_file_whose_name_is_not_utf8_is_read_and_named_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name's bytes that are not UTF-8 reach Python as lone surrogates, which no
    stored text can hold: the bad line's error names the file with them escaped, and the
    batch goes on and is stored whole."""
    graph = write_graph(tmp_path)
    requests = tmp_path / "we\udcffird.jsonl"  # the name's bytes: b"we\xffird.jsonl"
    requests.write_text('{"prompt": "hi"}\n{bad\n{"prompt": "there"}\n')
    out, db = tmp_path / "out.jsonl", tmp_path / "t.db"
    code, _, err = run_file(capsys, graph, requests, out, db)
    assert code == 1, err
    results = sorted(out_lines(out), key=lambda r: str(r["request_id"]))
    assert [r["status"] for r in results] == ["ok", "invalid_input", "ok"]
    assert str(results[1]["error"]).startswith(f"{tmp_path}/we\\xffird.jsonl:2:2: invalid JSON")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "finished"


def test_out_lines_start_on_a_line_of_their_own_after_text_without_a_newline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    out = tmp_path / "out.jsonl"
    out.write_text('{"request_id": "r-old-000000", "status": "ok", "outp')  # a torn line
    code, _, err = run_file(capsys, graph, requests, out, tmp_path / "t.db")
    assert code == 0, err
    first, *lines = out.read_text().split("\n")
    assert first == '{"request_id": "r-old-000000", "status": "ok", "outp'
    assert lines[-1] == ""
    assert [json.loads(line)["status"] for line in lines[:-1]] == ["ok", "ok"]


def test_lines_added_to_the_input_while_the_run_reads_it_are_not_its_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run counted its requests when it started: a line appended since (a file still
    being written) is no request of it, never answered past the run's total."""
    from engine.cli import run as run_command

    graph = write_graph(tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    counted = run_command.count_requests

    def count_then_grow(path: object, **kwargs: object) -> int:
        total = counted(path, **kwargs)  # type: ignore[arg-type]
        with open(requests, "a") as fh:  # another program appends after the count
            fh.write('{"prompt": "three"}\n')
        return total

    out, db = tmp_path / "out.jsonl", tmp_path / "t.db"
    run_command.count_requests = count_then_grow  # type: ignore[assignment]
    try:
        code, _, err = run_file(capsys, graph, requests, out, db)
    finally:
        run_command.count_requests = counted
    assert code == 0, err
    assert len(out_lines(out)) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT requests_total, requests_done FROM runs").fetchone() == (2, 2)
