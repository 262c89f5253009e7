"""Micro-benchmark of compiled expression evaluation (run: python bench/expr.py)."""

from __future__ import annotations

import functools
import timeit

from pydantic import BaseModel

from engine.expr.expression import compile_expr, compile_template


class Risk(BaseModel):
    score: float
    action: str = "proceed"


def main() -> None:
    scopes = {
        "dicts": {
            "risk": {"score": 0.2, "action": "proceed"},
            "policy": {"threshold": 0.3},
            "cached": {"hit": False},
        },
        "model": {"risk": Risk(score=0.2), "policy": {"threshold": 0.3}, "cached": {"hit": 0}},
    }
    cases = [
        "risk.score < policy.threshold and not cached.hit",
        "cached.value if cached.hit else risk.action",
        "len(risk.action) * 2 + 1",
        "true",
    ]
    number = 200_000
    for source in cases:
        expr = compile_expr(source)
        for label, scope in scopes.items():
            seconds = min(
                timeit.repeat(functools.partial(expr.evaluate, scope), number=number, repeat=5)
            )
            print(f"{seconds / number * 1e6:6.2f} µs  {label:5}  {source}")
    template = compile_template({"prompt": "Score {{ risk.score }}", "n": "{{ policy.threshold }}"})
    seconds = min(
        timeit.repeat(lambda: template.evaluate(scopes["dicts"]), number=number, repeat=5)
    )
    print(f"{seconds / number * 1e6:6.2f} µs  dicts  template with 2 expressions")
    compile_seconds = timeit.timeit(lambda: compile_expr(cases[0]), number=2_000) / 2_000
    print(f"{compile_seconds * 1e6:6.0f} µs  compile  {cases[0]}")


if __name__ == "__main__":
    main()
