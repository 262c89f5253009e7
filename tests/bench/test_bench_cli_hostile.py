"""The bench's command lines under hostile arguments: a clear error before any work, never a
traceback, and nothing already computed lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import _cli

_SMALL = ["--n", "3", "--seeds", "1", "--configs", "baseline", "--no-sweep", "--jobs", "1"]


def _refused(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)  # type: ignore[operator]
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--n", "0"], "--n: must be from 1"),
        (["--n", "-3"], "--n: must be from 1"),
        (["--n", "99999999999999999999"], "--n: must be from 1"),
        (["--n", "2.5"], "--n: expected a whole number"),
        (["--n", "1000", "--seeds", "100000000000000"], "at most 1,000,000 in one run"),
        (["--seed", "-1"], "--seed: must be 0 or more"),
        (["--seed", "one"], "--seed: expected a whole number"),
    ],
)
def test_bad_counts_and_seeds_are_refused_before_anything_runs(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    err = _refused(main, ["--configs", "baseline", "--no-sweep", *args], capsys)
    assert says in err and "seed 1 baseline" not in err


def test_a_file_that_cannot_be_written_loses_no_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """results.json cannot be written at the end of the run (here: a directory is in its
    place): the figures are printed anyway, every file that can be is written, the run says
    what failed and keeps the figures in a file of its own, exit 1."""
    from bench.__main__ import main

    (tmp_path / "results.json").mkdir()
    assert main([*_SMALL, "--json", "--out-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    figures = json.loads(out)
    assert figures["baseline"]["requests"] == 3
    assert f"could not write {tmp_path / 'results.json'}" in err
    assert (tmp_path / "cost_quality.png").read_bytes().startswith(b"\x89PNG")
    kept = Path(err.rsplit("are in ", 1)[1].strip())
    try:
        assert json.loads(kept.read_text())["results"] == figures
    finally:
        kept.unlink()


def test_json_figures_say_they_are_simulated(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    assert main([*_SMALL, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["baseline"]["simulated"] is True


def _figures(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    from bench.__main__ import main

    assert main(argv) == 0
    row: dict[str, object] = json.loads(capsys.readouterr().out)["baseline"]
    return {k: v for k, v in row.items() if k not in ("wall_s", "cpu_s")}


def test_a_seed_gives_the_same_figures_and_another_seed_other_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--n",
        "12",
        "--seeds",
        "1",
        "--configs",
        "baseline",
        "--no-sweep",
        "--json",
        "--jobs",
        "1",
    ]
    zero = _figures([*argv, "--seed", "0"], capsys)
    assert _figures([*argv, "--seed", "0"], capsys) == zero
    assert _figures([*argv, "--seed", "1"], capsys) != zero


def test_workloads_of_distinct_seeds_differ_and_a_negative_seed_is_refused() -> None:
    from bench.workload import generate

    prompts = {s: [r["prompt"] for r in generate(30, s)] for s in (0, 1, 2, 3)}
    assert len({tuple(p) for p in prompts.values()}) == 4
    assert [r["prompt"] for r in generate(30, 0)] == prompts[0]
    with pytest.raises(ValueError, match="0 or more"):
        generate(30, -3)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--n", "-5"], "--n: must be from 1"),
        (["--n", "0"], "--n: must be from 1"),
        (["--seed", "-1"], "--seed: must be 0 or more"),
        (["--n", "2", "--out", "/nonexistent-dir-for-bench/x.jsonl"], "does not exist"),
    ],
)
def test_the_workload_command_refuses_bad_arguments(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.workload import main

    assert says in _refused(main, args, capsys)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--n", "0"], "--n: must be from 1"),
        (["--n", "-1"], "--n: must be from 1"),
        (["--seed", "-4"], "--seed: must be 0 or more"),
        (["--buckets", "0"], "--buckets must be from 1"),
    ],
)
def test_the_calibration_command_refuses_bad_arguments(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.calibration import main

    assert says in _refused(main, args, capsys)


def test_the_calibration_says_it_is_simulated(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.calibration import main

    assert main(["--n", "5", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "SIMULATED" in err and json.loads(out)


def test_the_request_cap_is_what_the_commands_share() -> None:
    assert _cli.count(str(_cli.MAX_REQUESTS)) == _cli.MAX_REQUESTS
    with pytest.raises(Exception, match="must be from 1"):
        _cli.count(str(_cli.MAX_REQUESTS + 1))
