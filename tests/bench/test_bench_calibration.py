"""`python -m bench.calibration` prints each sim profile's calibration curve."""

from __future__ import annotations

import pytest

from bench.calibration import calibration, main


def test_every_profile_and_task_gets_a_curve_that_tracks_accuracy() -> None:
    curves = calibration(n=300, seed=3)
    assert set(curves) == {
        f"{p}/{t}" for p in ("small", "medium", "large") for t in ("answer", "critique", "risk")
    }
    for name, rows in curves.items():
        assert sum(r["calls"] for r in rows) >= 250, name
        for row in rows:
            if row["calls"] >= 80:
                assert abs(row["confidence"] - row["accuracy"]) <= 0.1, (name, row)


def test_the_curves_print_as_a_markdown_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--n", "20", "--buckets", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| profile/task | confidence bucket | calls | mean confidence | accuracy |"
    assert any(line.startswith("| small/answer | ") for line in lines)
