"""`bench.router_train`: fits a signal, quantizes losslessly enough, writes a loadable file."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench import router_train
from nodes._support.learned import LearnedRouter, dequantize, load_router, quantize_int8


@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=200))
def test_int8_quantization_is_within_half_a_step(weights: list[float]) -> None:
    scale, q = quantize_int8(weights)
    assert all(-127 <= x <= 127 for x in q)
    for w, back in zip(weights, dequantize(scale, q), strict=True):
        assert abs(w - back) <= scale / 2 + 1e-9


def _rows(n: int, seed: int) -> list[dict[str, object]]:
    """Requests where `small` is right on lookups and wrong on explanations; `large` always."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        reasoning = rng.random() < 0.5
        text = f"Explain why topic {i} works" if reasoning else f"What is item {i}?"
        token = f"ANS-{i:06x}"
        small_right = (rng.random() < 0.15) if reasoning else (rng.random() < 0.9)
        answers = {
            "small": f"The answer is {token if small_right else 'nope'}.",
            "medium": f"The answer is {token}.",
            "large": f"The answer is {token}.",
        }
        rows.append({"text": text, "labels": {"answer": token}, "answers": answers})
    return rows


def test_training_learns_where_the_small_model_fails(tmp_path: Path) -> None:
    payload = router_train.train(_rows(600, 1), seeds=[7])
    assert payload["trained"]["seeds"] == [7] and payload["format"] == "moat-router/1"
    held = payload["held_out"]["small"]
    assert held["accuracy"] >= 0.8 and held["n"] > 100
    path = tmp_path / "w.json"
    path.write_text(json.dumps(payload))
    router = load_router(path)
    assert router.predict("What is item 99999?")["small"] > 0.75
    assert router.predict("Explain why topic 99999 works")["small"] < 0.3


def test_harmful_requests_carry_no_label() -> None:
    rows = _rows(10, 2)
    rows[0]["labels"] = {"harmful": True}
    data = router_train.examples(rows)
    assert all(len(v) == 9 for v in data.values())


def test_the_shipped_weights_match_the_format() -> None:
    shipped = Path(router_train.DEFAULT_OUT)
    body = json.loads(shipped.read_text())
    assert isinstance(LearnedRouter.from_json(body, "shipped"), LearnedRouter)
    assert shipped.stat().st_size < 8000 and set(body["models"]) == set(router_train.MODELS)
    assert not set(body["trained"]["seeds"]) & {1, 2, 3, 4, 5}  # never the bench's seeds


def _recorded(ok: dict[str, bool], i: int) -> dict[str, object]:
    token = f"ANS-{i:06x}"
    return {
        "text": f"What is item {i}?",
        "labels": {"answer": token},
        "answers": {m: f"The answer is {token if ok[m] else 'no'}." for m in ok},
        "costs": {"small": 1.0, "medium": 4.0, "large": 20.0},
    }


def test_the_oracle_frontier_buys_the_cheapest_right_answers_first() -> None:
    from bench.router_compare import compare, oracle_cost_at

    oks = [
        {"small": True, "medium": True, "large": True},
        {"small": False, "medium": True, "large": True},
        {"small": False, "medium": False, "large": True},
        {"small": False, "medium": False, "large": False},
    ]
    raw = [_recorded(ok, i) for i, ok in enumerate(oks)]
    rows = [{**r, "ok": ok} for r, ok in zip(raw, oks, strict=True)]
    assert oracle_cost_at(rows, 25.0) == 1.0  # small everywhere
    assert oracle_cost_at(rows, 50.0) == (4 + 3) / 4  # then medium where it is right
    assert oracle_cost_at(rows, 75.0) == (4 + 3 + 19) / 4
    assert oracle_cost_at(rows, 100.0) is None  # nobody answers the last one
    by_name = {r["router"]: r for r in compare(raw)}
    assert by_name["oracle"]["quality"] == 75.0 and by_name["oracle"]["x_oracle"] == 1.0
    assert by_name["always-large"]["x_oracle"] == round(20 / ((4 + 3 + 19) / 4), 3)
