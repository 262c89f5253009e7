"""Careless command lines get a clear refusal (exit 2, before anything runs or is deleted),
and a batch whose output reader goes away says it was cut short (exit 130), never 0."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.cli import main
from tests.support.fast_graphs import one_model_graph

FAST = """\
moat: 1
name: fast
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes: {}
output: {p: input.prompt}
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse refuses an argument
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_empty_ids_are_refused_rather_than_looked_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "s.db")
    for args in (
        ("report", "", "--db", db),
        ("stats", " ", "--db", db),
        ("run", "--resume", " ", "--db", db),
    ):
        code, err = run(capsys, *args)
        assert code == 2 and "an empty id" in err, args
    assert not Path(db).exists()


def test_an_age_of_zero_is_refused_as_a_date_in_the_future_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for age in ("0d", "0h", "00m"):
        code, err = run(capsys, "prune", "--before", age, "--db", str(tmp_path / "s.db"))
        assert code == 2 and "is no age" in err and "--keep-runs 0" in err


def test_a_graph_whose_input_schema_refers_to_nothing_is_refused_by_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    graph = tmp_path / "refs.yaml"
    graph.write_text(
        FAST.replace(
            "properties: {prompt: {type: string}}",
            'properties: {prompt: {$ref: "#/$defs/nope"}, q: {$ref: "#/$defs/ok"}, '
            'r: {$ref: "http://example.com/s.json"}}, $defs: {ok: {type: string}}',
        )
    )
    code, err = run(capsys, "check", str(graph))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, err
    assert "input.properties.prompt.$ref: $ref '#/$defs/nope' names nothing" in lines[0]
    assert "input.properties.r.$ref" in lines[1] and "moat fetches no schemas" in lines[1]


def test_a_plugin_that_exits_while_imported_is_a_refused_graph(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "quitter.py").write_text("raise SystemExit(0)\n")
    graph = tmp_path / "g.yaml"
    graph.write_text(FAST.replace("nodes: {}", "plugins: [quitter]\nnodes: {}"))
    code, err = run(capsys, "check", str(graph))
    assert code == 2 and "plugin module 'quitter' could not be imported (SystemExit" in err


def test_a_store_text_that_moat_does_not_know_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nstore_text: Full\n")
    code, err = run(capsys, "policy", "apply", str(policy), "--db", str(tmp_path / "s.db"))
    assert code == 2
    assert "p.yaml:2:13: `store_text:` must be one of hash, redacted, full" in err


@pytest.mark.parametrize(
    ("graph_text", "count"),
    # no model: the last lines' write meets the closed pipe; a model that takes a while:
    # the result lines' loop meets it while the batch runs
    [(FAST, 20_000), (one_model_graph("slow", 0.05), 300)],
    ids=["at-the-end", "mid-batch"],
)
def test_a_batch_whose_output_reader_goes_away_exits_interrupted(
    tmp_path: Path, graph_text: str, count: int
) -> None:
    graph = tmp_path / "g.yaml"
    graph.write_text(graph_text)
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(count)))
    db = tmp_path / "s.db"
    moat = [sys.executable, "-m", "engine", "run", str(graph), "--input", str(lines)]
    with subprocess.Popen(
        [*moat, "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 130, err
    assert "the output was closed (broken pipe) before the batch ended; finished requests" in err
    assert "are kept. Resume with: moat run --resume r-" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    listed = subprocess.run(
        [sys.executable, "-m", "engine", "runs", "--db", str(db)], capture_output=True, text=True
    )
    assert " interrupted " in listed.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:abc", "Port could not be cast"),
        ("http://[::1:99", "Invalid IPv6 URL"),
        ("http://:80", "not an http(s) URL with a host"),
        ("http://user:secret@127.0.0.1:1", "credentials in the URL are not used"),
    ],
)
def test_a_sync_target_that_is_no_usable_url_is_refused_without_echoing_secrets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, says: str
) -> None:
    code, err = run(capsys, "sync", "--to", url, "--db", str(tmp_path / "s.db"))
    assert code == 2 and says in err and "internal error" not in err
    assert "secret" not in err


@pytest.mark.parametrize("patience", ["nan", "inf", "0", "-1"])
def test_a_sync_patience_that_would_wait_forever_or_never_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, patience: str
) -> None:
    code, err = run(capsys, "sync", "--to", "http://127.0.0.1:1", "--patience", patience)
    assert code == 2 and "must be a positive number" in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_out_stops_the_run_with_a_resume_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    graph = tmp_path / "fast.yaml"
    graph.write_text(FAST)
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(50)))
    db = str(tmp_path / "s.db")
    code, err = run(
        capsys, "run", str(graph), "--input", str(lines), "--out", "/dev/full", "--db", db
    )
    assert code == 1 and "internal error" not in err
    assert "--out /dev/full: writing result lines failed: No space left on device" in err
    assert "Resume with: moat run --resume r-" in err


def test_check_messages_stay_short_and_say_what_is_wrong(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long = tmp_path / "long.yaml"
    long.write_text(FAST.replace("{p: input.prompt}", '{p: "' + "+".join(["1"] * 20_000) + '+"}'))
    tab = tmp_path / "tab.yaml"
    tab.write_text(FAST.replace("nodes: {}", "nodes:\n\ta: {type: model}"))
    folder = tmp_path / "policies"
    folder.mkdir()
    policy = tmp_path / "folder.yaml"
    policy.write_text(FAST.replace("nodes: {}", "policy: policies\nnodes: {}"))
    code, err = run(capsys, "check", str(long))
    assert code == 2 and "in expression '1+1+" in err and ": cannot parse: invalid syntax" in err
    assert len(err) < 2_000
    code, err = run(capsys, "check", str(tab))
    assert code == 2 and "(a tab: YAML indents with spaces only" in err
    code, err = run(capsys, "check", str(policy))
    assert code == 2 and "policy file 'policies' is a folder, not a file" in err


def test_a_graph_given_as_a_policy_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    graph = tmp_path / "fast.yaml"
    graph.write_text(FAST)
    code, err = run(capsys, "policy", "apply", str(graph), "--db", str(tmp_path / "s.db"))
    assert code == 2 and "this is a graph file (it has `moat:` and `nodes:`), not a policy" in err


@pytest.mark.parametrize(
    ("kbps", "says"),
    [("0", "must be a positive number"), ("nan", "must be a positive number"),
     ("1e-300", "is below 1"), ("0.5", "is below 1")],
)  # fmt: skip
def test_a_sync_bandwidth_cap_that_would_never_finish_a_batch_is_refused(
    capsys: pytest.CaptureFixture[str], kbps: str, says: str
) -> None:
    code, err = run(capsys, "sync", "--to", "http://127.0.0.1:1", "--max-kbps", kbps)
    assert code == 2 and says in err
