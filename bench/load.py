"""Benchmark: load and check a generated 500-node graph (goal: well under a second).

python bench/load.py [--nodes 500] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from typing import Any

from pydantic import BaseModel

from engine import Node, NodeContext
from engine.expr.expression import _compile_cached
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry


class Step(Node):
    """A step that adds its inputs (only its shape matters here)."""

    type_name = "step"

    class Config(BaseModel):
        value: Any = None
        weight: float = 1.0

    class Output(BaseModel):
        value: Any = None
        score: float = 0.0

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        return self.Output(value=config.value, score=config.weight)


def generate(n: int, seed: int = 1) -> str:
    """A layered DAG of `n` nodes, each reading up to three earlier ones, some guarded."""
    rnd = random.Random(seed)
    lines = ["moat: 1", "name: generated", "nodes:"]
    for i in range(n):
        lines.append(f"  n{i}:")
        lines.append("    type: step")
        if i:
            deps = rnd.sample(range(max(0, i - 20), i), k=min(i, rnd.randint(1, 3)))
            expr = " + ".join(f"n{d}.score" for d in deps)
            lines.append(f'    with: {{value: "{{{{ {expr} }}}}", weight: {rnd.random():.3f}}}')
            if rnd.random() < 0.2:
                lines.append(f"    when: n{deps[0]}.score > 0.1 or input.force")
            if rnd.random() < 0.1:
                lines.append("    speculative: true")
    lines += ["output:", f"  result: n{n - 1}.value", "  first: n0.score"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    text = generate(args.nodes)
    registry = Registry([Step])
    times, cpu = [], []
    for _ in range(args.repeat):
        _compile_cached.cache_clear()  # every repeat is a cold load, as in a fresh process
        t0, c0 = time.perf_counter(), time.process_time()
        graph = load_graph_text(text, "generated.yaml", registry=registry)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    result = {
        "nodes": len(graph.nodes),
        "yaml_lines": text.count("\n"),
        "load_and_check_ms_median": round(statistics.median(times) * 1000, 1),
        "load_and_check_ms_min": round(min(times) * 1000, 1),
        "load_and_check_cpu_ms_median": round(statistics.median(cpu) * 1000, 1),
        "repeat": args.repeat,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
