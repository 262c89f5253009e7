"""Trains the `router` node's learned model from recorded runs, and writes int8 weights.

    python -m bench.router_train [--n 4000] [--seeds 101,102] [--out FILE]
                                 [--record FILE.jsonl] [--from-record FILE.jsonl]

1. **Record.** Every request of a generated workload (seeds distinct from the bench's
   evaluation seeds, so the router is never scored on what it was trained on) runs
   through `bench/router-record.yaml`, which asks each model (`small`, `medium`, `large`)
   for an answer the way the flagship's cascade asks. `--record` keeps these runs as JSONL
   (text, labels, each model's answer), `--from-record` trains from such a file instead of
   running the models again, e.g. one recorded against real endpoints.
2. **Label.** A model's answer is labelled right when it checks out against the
   request's reference (`bench._metrics.score`, the bench's own scorer). Harmful requests
   carry no answer to check and are left out: routing them is the reviews' job.
3. **Fit.** One L2-regularised logistic regression per model on the features the router
   sees at request time (`nodes._support.learned.vector`), by stochastic gradient descent
   over sparse vectors in plain Python: no numpy, a few seconds for thousands of requests.
4. **Ship.** Weights are quantized to int8 with one scale per model and written as JSON
   (default `nodes/_support/router_weights.json`, the `weights: builtin` of the router).
   The log loss and accuracy of the quantized model on a held-out fifth are printed and
   stored in the file, beside the training seeds and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from trio.testing import MockClock

from bench import _cli
from bench.workload import generate
from engine.events import Record, RequestRecord, RequestStatus
from engine.graph.loader import load_graph
from engine.models import Gateway
from engine.plugin.context import SharedState
from engine.requests import InputValidator, parse_request
from engine.scheduler.runner import Runner
from nodes._support.learned import BUCKETS, DENSE, LearnedRouter, quantize_int8, vector

__all__ = ["MODELS", "fit", "main", "record", "train"]

ROOT = Path(__file__).resolve().parents[1]
RECORD_GRAPH = ROOT / "bench" / "router-record.yaml"
DEFAULT_OUT = ROOT / "nodes" / "_support" / "router_weights.json"
MODELS = ("small", "medium", "large")
MIN_EXAMPLES = 50
"""Checkable answers each model needs, right and wrong ones among them, before weights are
written."""

Sparse = list[tuple[int, float]]


class _Outputs:
    """A sink that keeps each finished request's output by sequence number."""

    def __init__(self) -> None:
        self.by_seq: dict[int, Mapping[str, Any]] = {}

    def record(self, item: Record) -> None:
        if isinstance(item, RequestRecord) and item.status is RequestStatus.OK and item.output:
            self.by_seq[item.seq] = item.output


async def _record_async(requests: Sequence[Mapping[str, Any]], seed: int) -> dict[int, Any]:
    graph = load_graph(RECORD_GRAPH)
    validator = InputValidator(graph.input_schema)
    items = [parse_request(r, seq=i, declared=validator.declared) for i, r in enumerate(requests)]
    sink = _Outputs()
    gateway = Gateway(graph.models)
    limiter = anyio.Semaphore(256)
    try:
        async with Runner(
            graph, sink=sink, gateway=gateway, shared=SharedState(), run_id="router-record",
            seed=seed,
        ) as runner:  # fmt: skip

            async def one(seq: int, data: dict[str, Any]) -> None:
                async with limiter:
                    await runner.run(
                        data, request_id=f"rec-{seed}-{seq:06d}", seq=seq, labels=items[seq].labels
                    )

            async with anyio.create_task_group() as tg:
                for item in items:
                    data, error = validator.validate(item)
                    if data is None:
                        raise ValueError(f"request {item.seq} is invalid: {error}")
                    tg.start_soon(one, item.seq, data)
    finally:
        await gateway.aclose()
    return sink.by_seq


def record(n: int, seed: int) -> list[dict[str, Any]]:
    """Run the recording graph over `n` requests of seed `seed`; one row per answered one."""
    requests = generate(n, seed)
    outputs = anyio.run(
        _record_async,
        requests,
        seed,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )
    rows = []
    for seq, out in sorted(outputs.items()):
        labels = requests[seq].get("_labels", {})
        answers = {m: str(out.get(m, "")) for m in MODELS}
        confidences = {m: out.get(f"{m}_confidence") for m in MODELS}
        costs = {m: out.get(f"{m}_cost") for m in MODELS}
        rows.append(
            {
                "text": str(out.get("text", "")),
                "labels": labels,
                "answers": answers,
                "confidences": confidences,
                "costs": costs,
            }
        )
    return rows


def _checks(text: str, labels: Mapping[str, Any]) -> bool | None:
    """Whether an answer checks out against the request's reference (None: nothing to check)."""
    from bench._metrics import score  # the bench's own scorer, whatever its checkers are

    if labels.get("harmful"):
        return None
    fake = RequestRecord(
        id="x", run_id="router-train", seq=0, status=RequestStatus.OK, started_at=0.0,
        finished_at=0.0, latency_ms=0.0, cost_usd=0.0,
        output={"answer": text, "decision": "accept"},
    )  # fmt: skip
    return score(fake, labels, None).correct


def examples(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[Sparse, int]]]:
    """Per model, (sparse feature vector, 1 if its answer checked out) for each row."""
    data: dict[str, list[tuple[Sparse, int]]] = {m: [] for m in MODELS}
    for row in rows:
        labels = row["labels"]
        x = [(i, v) for i, v in enumerate(vector(row["text"])) if v]
        for model in MODELS:
            ok = _checks(row["answers"].get(model, ""), labels)
            if ok is not None:
                data[model].append((x, int(ok)))
    return data


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def fit(
    data: Sequence[tuple[Sparse, int]], *, epochs: int = 30, lr: float = 0.02, l2: float = 3e-3,
    seed: int = 0,
) -> list[float]:  # fmt: skip
    """Logistic regression by SGD with a decaying step and L2 (lazy, on touched weights)."""
    w = [0.0] * (len(DENSE) + BUCKETS)
    order = list(range(len(data)))
    rng = random.Random(seed)
    for epoch in range(epochs):
        rng.shuffle(order)
        step = lr / (1.0 + epoch * 0.3)
        for k in order:
            x, y = data[k]
            g = _sigmoid(sum(w[i] * v for i, v in x)) - y
            for i, v in x:
                w[i] -= step * (g * v + l2 * w[i])
    return w


def _evaluate(router: LearnedRouter, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Log loss and accuracy of each model's prediction on `rows`."""
    out: dict[str, Any] = {}
    for model in MODELS:
        loss = right = count = 0.0
        for row in rows:
            ok = _checks(row["answers"].get(model, ""), row["labels"])
            if ok is None:
                continue
            p = min(1 - 1e-6, max(1e-6, router.predict(row["text"])[model]))
            loss -= math.log(p if ok else 1 - p)
            right += (p >= 0.5) == ok
            count += 1
        base = sum(
            bool(_checks(r["answers"].get(model, ""), r["labels"]))
            for r in rows
            if not r["labels"].get("harmful")
        ) / max(1, count)
        out[model] = {
            "log_loss": round(loss / max(1, count), 4),
            "accuracy": round(right / max(1, count), 4),
            "base_rate": round(base, 4),
            "n": int(count),
        }
    return out


def train(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Fit on four fifths of `rows`, evaluate on the rest; the weights file's content."""
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    cut = len(shuffled) * 4 // 5
    train_rows, held_out = shuffled[:cut], shuffled[cut:]
    data = examples(train_rows)
    models = {}
    for model in MODELS:
        scale, q = quantize_int8(fit(data[model]))
        models[model] = {"scale": scale, "q": q}
    payload: dict[str, Any] = {
        "format": "moat-router/1",
        "features": [*DENSE, f"hashed_words_and_pairs[{BUCKETS}]"],
        "trained": {
            "date": dt.date.today().isoformat(),
            "seeds": list(seeds),
            "requests": len(train_rows),
            "graph": "bench/router-record.yaml",
            "labels": "the bench's scorer on each model's answer (benign requests only)",
        },
    }
    router = LearnedRouter.from_json({**payload, "models": models}, "trained")
    payload["held_out"] = _evaluate(router, held_out)
    payload["models"] = models
    return payload


_ROW_KEYS = ("text", "labels", "answers")
"""The fields `train` reads from each recorded run."""


def main(argv: list[str] | None = None) -> int:
    """Record (or read) runs, fit, write the weights; 0 on success, 2 on bad arguments."""
    p = argparse.ArgumentParser(prog="python -m bench.router_train", description=__doc__)
    p.add_argument("--n", type=_cli.count, default=4000, help="requests recorded per seed")
    p.add_argument(
        "--seeds", type=_cli.seed_list, default="101,102",
        help="workload seeds to record (not the bench's)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the weights file to write")
    p.add_argument("--record", type=Path, help="also keep the recorded runs here (JSONL)")
    p.add_argument("--from-record", type=Path, help="train from recorded runs (JSONL) instead")
    args = p.parse_args(argv)
    seeds: list[int] = args.seeds
    _cli.total_requests(p, args.n, len(seeds))
    # before any recording: an unwritable output would lose minutes of runs
    _cli.writable_file(p, "--out", args.out)
    _cli.writable_file(p, "--record", args.record)
    if args.from_record is not None:
        rows = _cli.read_rows(p, "--from-record", args.from_record, _ROW_KEYS)
    else:
        rows = []
        for seed in seeds:
            print(f"recording {args.n} requests of seed {seed}", file=sys.stderr, flush=True)
            rows += record(args.n, seed)
        if args.record is not None:
            args.record.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = examples(rows)
    scarce = [m for m in MODELS if len({y for _, y in data[m]}) < 2 or len(data[m]) < MIN_EXAMPLES]
    if scarce:
        # weights fitted on (almost) nothing would replace the shipped ones with noise
        print(
            f"python -m bench.router_train: too few checkable answers to train on for "
            f"{', '.join(scarce)} (need {MIN_EXAMPLES}, right and wrong ones); "
            f"{args.out} is left as it was",
            file=sys.stderr,
        )
        return 1
    payload = train(rows, seeds)
    args.out.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(args.out), "held_out": payload["held_out"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
