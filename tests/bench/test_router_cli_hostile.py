"""The router trainer and comparison under hostile arguments: a clear error before any
recording, never a traceback, and the shipped weights never replaced by weights fitted on
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _refused(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)  # type: ignore[operator]
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    return err


_ROUTER_ARGS = [
    (["--n", "-1"], "--n: must be from 1"),
    (["--n", "0"], "--n: must be from 1"),
    (["--seeds", ""], "--seeds: expected comma-separated seeds"),
    (["--seeds", "1,-2"], "--seeds: must be 0 or more"),
    (["--seeds", "1,1"], "listed twice"),
    (["--seeds", "1,x"], "--seeds: expected a whole number"),
]


@pytest.mark.parametrize(("args", "says"), _ROUTER_ARGS)
def test_the_router_comparison_refuses_bad_arguments(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.router_compare import main

    assert says in _refused(main, args, capsys)


@pytest.mark.parametrize(("args", "says"), _ROUTER_ARGS)
def test_the_router_trainer_refuses_bad_arguments_and_keeps_the_shipped_weights(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.router_train import DEFAULT_OUT, main

    before = DEFAULT_OUT.read_bytes()
    assert says in _refused(main, args, capsys)
    assert DEFAULT_OUT.read_bytes() == before


def test_the_router_trainer_refuses_an_output_it_could_not_write_before_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.router_train import main

    missing = tmp_path / "gone" / "weights.json"
    err = _refused(main, ["--n", "5", "--seeds", "1", "--out", str(missing)], capsys)
    assert "does not exist" in err and "recording" not in err
    err = _refused(main, ["--n", "5", "--out", str(tmp_path)], capsys)
    assert "is a directory" in err
    err = _refused(main, ["--n", "5", "--out", str(tmp_path / "w.json"), "--record",
                          str(missing)], capsys)  # fmt: skip
    assert "--record" in err and "recording" not in err


def _record(tmp_path: Path, rows: list[object] | str) -> Path:
    path = tmp_path / "runs.jsonl"
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text)
    return path


_ROW = {
    "text": "What is 2 + 2?",
    "labels": {"harmful": True},
    "answers": {"small": "x", "medium": "y", "large": "z"},
    "costs": {"small": 0.1, "medium": 0.2, "large": 0.3},
}


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ("not json\n", ":1: not JSON"),
        ("[1, 2]\n", ":1: expected a JSON object"),
        ([{"text": "hi"}], ":1: no field 'labels'"),
        ([{**_ROW, "answers": "small"}], ":1: `labels` and `answers` must be JSON objects"),
        ("\n\n", "no recorded runs"),
    ],
)
@pytest.mark.parametrize("module", ["bench.router_train", "bench.router_compare"])
def test_a_bad_recorded_runs_file_names_its_line(
    tmp_path: Path,
    rows: list[object] | str,
    says: str,
    module: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib

    main = importlib.import_module(module).main
    args = ["--from-record", str(_record(tmp_path, rows))]
    if module == "bench.router_train":
        args += ["--out", str(tmp_path / "w.json")]
    assert says in _refused(main, args, capsys)
    assert not (tmp_path / "w.json").exists()


def test_runs_with_nothing_to_learn_or_compare_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Harmful requests only (no answer to check): the trainer keeps its output as it was
    and the comparison says there is nothing to compare, both exit 1 without a traceback."""
    from bench.router_compare import main as compare
    from bench.router_train import main as train

    runs = _record(tmp_path, [_ROW] * 20)
    out = tmp_path / "w.json"
    assert train(["--from-record", str(runs), "--out", str(out)]) == 1
    assert "too few checkable answers" in capsys.readouterr().err and not out.exists()
    assert compare(["--from-record", str(runs)]) == 1
    assert "no benign request" in capsys.readouterr().err
