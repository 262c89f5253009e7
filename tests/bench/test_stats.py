"""Pooling, the counterfactual oracle, paired intervals and the fault profiles."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench._faults import PROFILES, apply_faults, parse_faults
from bench._metrics import Row, Scored
from bench._stats import intervals, oracle_rows, pooled
from engine.graph.spec import ModelSpec


def _row(correct: bool, cost: float = 1.0, latency: float = 100.0, harmful: bool = False) -> Row:
    return Row(Scored(correct, harmful and correct, harmful), cost, latency, True)


def test_the_oracle_takes_the_cheapest_model_that_got_each_request_right() -> None:
    small = {0: _row(True, 1), 1: _row(False, 1), 2: _row(False, 1)}
    medium = {0: _row(True, 3), 1: _row(True, 3), 2: _row(False, 3)}
    large = {0: _row(True, 9), 1: _row(True, 9), 2: _row(False, 9)}
    (chosen,) = oracle_rows([[small], [medium], [large]])
    assert [chosen[i].cost_usd for i in range(3)] == [1, 3, 1]  # none right: the cheapest
    assert [chosen[i].scored.correct for i in range(3)] == [True, True, False]


def test_pooled_figures_split_benign_and_harmful_requests() -> None:
    rows = {
        0: _row(True),
        1: _row(False),
        2: _row(True, harmful=True),
        3: _row(False, harmful=True),
    }
    figures = pooled([rows])
    assert figures["quality"] == 50 and figures["answer_accuracy"] == 0.5
    assert figures["refusal_recall"] == 0.5 and figures["false_refusal_rate"] == 0


@settings(max_examples=4, deadline=None)
@given(gap=st.floats(0.0, 0.3), seed=st.integers(0, 1000))
def test_a_paired_interval_covers_the_difference_and_shrinks_with_pairing(
    gap: float, seed: int
) -> None:
    rng = random.Random(seed)
    base, other = {}, {}
    for i in range(1000):
        easy = rng.random() < 0.6  # shared by both: pairing removes this variance
        base[i] = _row(easy and rng.random() < 0.9, cost=2.0)
        other[i] = _row(easy and rng.random() < 0.9 - gap, cost=1.0)
    found = intervals([base], [other], resamples=100)
    quality = found["quality"]
    assert quality.low <= quality.value <= quality.high
    assert quality.high - quality.low < 8  # points; unpaired, it would be about 8.5 wide
    assert found["cost_per_case"].value == pytest.approx(0.5)


def test_identical_runs_differ_by_exactly_nothing() -> None:
    rows = {i: _row(i % 3 == 0, cost=i + 1.0, latency=10.0 * i) for i in range(50)}
    found = intervals([rows], [rows], resamples=50)
    assert (found["quality"].low, found["quality"].high) == (0, 0)
    assert found["p95_ms"].value == 1 and found["cost_per_case"].high == 1


def test_fault_profiles_apply_to_simulated_models_only() -> None:
    models = {
        "s": ModelSpec(provider="sim", profile="small"),
        "o": ModelSpec(provider="openai", model="gpt-4.1"),
    }
    faulty = apply_faults(models, PROFILES["default"])
    assert faulty["s"].faults is not None and faulty["s"].faults.rate_limit == 0.02
    assert faulty["s"].max_concurrency == 128 and faulty["s"].timeout_s == 10
    assert faulty["o"] == models["o"]
    assert apply_faults(models, PROFILES["none"]) == models


def test_faults_can_be_given_by_hand() -> None:
    custom = parse_faults("rate_limit=0.1,concurrency=0,timeout_s=5")
    assert custom.rate_limit == 0.1 and custom.concurrency is None and custom.timeout_s == 5
    assert custom.error == PROFILES["default"].error
    for bad in ("sunny", "rate_limit=2", "nope=1", "error=x"):
        with pytest.raises(ValueError, match="--faults"):
            parse_faults(bad)
