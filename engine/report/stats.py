"""Aggregates one run from the store (`moat stats`) and lists runs (`moat runs`).

Only finished requests (those with a `requests` row) count. Percentiles and the failed
statuses are `engine.stats`'s, the same the CLI summary, the TUI and the guard use; the
reads are `engine.store.reads`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import StoreError, printable
from engine.report.columns import columns
from engine.report.markdown import fmt_time
from engine.store import reads
from engine.store.store import Row, Store

__all__ = ["RunStats", "render_runs", "render_stats", "run_stats", "stats_json"]

_SLOWEST = 5
_GRAPH_CHARS = 40
"""Longest graph name `moat runs` shows whole (a name is free text)."""


@dataclass(frozen=True, slots=True)
class RunStats:
    """The figures of one run; rates are None when nothing was measured."""

    run_id: str
    graph_name: str | None
    run_status: str | None
    started_at: float | None
    finished_at: float | None
    requests: int
    requests_total: int | None
    by_status: dict[str, int]
    by_route: dict[str, int]
    """Requests per route (the last `ROUTE_SELECTED` decision of each)."""
    latency_ms: dict[str, float | None]
    """`p50`, `p95`, `p99`, `mean`, `max`."""
    cost_total_usd: float
    cost_per_case_usd: float | None
    throughput_rps: float | None
    llm_calls: int
    llm_calls_per_request: float | None
    by_model: dict[str, dict[str, float]]
    """`model (provider)` -> `calls`, `cost_usd`."""
    cache: dict[str, float | None]
    """`hits`, `misses` (CACHE_HIT / CACHE_MISS events) and `hit_rate`."""
    validation: dict[str, float | None]
    """`passed`, `failed` (VALIDATION_* events) and `success_rate`."""
    speculative: dict[str, float]
    """Speculative node runs `started`, `used`, `discarded`, `cancelled`; LLM spend
    `cost_usd` and `wasted_usd` (calls discarded or cancelled)."""
    simulated: bool
    """True if any LLM call went to the `sim` provider."""
    slowest: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _resolve_run(store: Store, run_id: str | None) -> tuple[str, Row | None]:
    if run_id is None:
        latest = store.latest_run()
        if latest is None:
            raise StoreError(f"{store.path}: no runs yet; start one with `moat run GRAPH`")
        return str(latest["id"]), latest
    run = store.get_run(run_id)
    if run is None and not store.finished_request_seqs(run_id):
        store.require_run(run_id)  # raises with the list of runs
    return run_id, run


_FACTS = ("CACHE_HIT", "CACHE_MISS", "VALIDATION_PASSED", "VALIDATION_FAILED")


def _routes(store: Store, run_id: str) -> dict[str, int]:
    return dict(sorted(reads.route_counts(store, run_id).items()))


def _speculative(store: Store, run_id: str, calls: list[Row]) -> dict[str, float]:
    counts = reads.speculative_counts(store, run_id)
    spent = sum(float(r["spec_cost"]) for r in calls)
    wasted = sum(float(r["spec_wasted"]) for r in calls)
    return {
        **counts,
        "cost_usd": round(spent, 9),
        "wasted_usd": round(wasted, 9),
    }


def _models(rows: list[Row]) -> tuple[dict[str, dict[str, float]], bool]:
    by_model = {
        f"{r['model']} ({r['provider']})": {"calls": r["calls"], "cost_usd": round(r["cost"], 9)}
        for r in rows
    }
    return by_model, any(r["provider"] == "sim" for r in rows)


def run_stats(store: Store, run_id: str | None = None) -> RunStats:
    """Aggregate one run (the latest if `run_id` is None) from its tallies
    (`engine.store.tallies`): the cost depends on neither the run's size nor the store's.

    Raises:
        StoreError: no such run (the message lists recent ones), or no runs at all.
    """
    run_id, run = _resolve_run(store, run_id)
    figures = reads.run_figures(store, run_id)
    n = int(figures["requests"])
    cost = float(figures["cost"])
    p50, p95, p99 = reads.percentiles(store, run_id, "latency_ms", (50, 95, 99))
    events = reads.event_counts(store, run_id, _FACTS)
    calls_rows = reads.calls_by_model(store, run_id)
    by_model, simulated = _models(calls_rows)
    calls = int(sum(m["calls"] for m in by_model.values()))
    slowest, failed = reads.slowest_and_failed(store, run_id, _SLOWEST)
    run = run or {}
    started, finished = run.get("started_at"), run.get("finished_at")
    if finished is None and n:
        finished = figures["last_finished"]
    hits, misses = events["CACHE_HIT"], events["CACHE_MISS"]
    passed, failed_n = events["VALIDATION_PASSED"], events["VALIDATION_FAILED"]
    return RunStats(
        run_id=run_id,
        graph_name=run.get("graph_name"),
        run_status=run.get("status"),
        started_at=started,
        finished_at=run.get("finished_at"),
        requests=n,
        requests_total=run.get("requests_total"),
        by_status=dict(sorted(reads.status_counts(store, run_id).items())),
        by_route=_routes(store, run_id),
        latency_ms={
            "p50": p50,
            "p95": p95,
            "p99": p99,
            "mean": float(figures["latency_sum"]) / n if n else None,
            "max": figures["latency_max"],
        },
        cost_total_usd=round(cost, 9),
        cost_per_case_usd=round(cost / n, 9) if n else None,
        throughput_rps=_rate(n, finished - started) if started and finished else None,
        llm_calls=calls,
        llm_calls_per_request=_rate(calls, n),
        by_model=by_model,
        cache={"hits": hits, "misses": misses, "hit_rate": _rate(hits, hits + misses)},
        validation={
            "passed": passed,
            "failed": failed_n,
            "success_rate": _rate(passed, passed + failed_n),
        },
        speculative=_speculative(store, run_id, calls_rows),
        simulated=simulated,
        slowest=[
            {"request_id": r["id"], "latency_ms": r["latency_ms"], "status": r["status"]}
            for r in slowest
        ],
        failed=[
            {"request_id": r["id"], "status": r["status"], "error": r["error"]} for r in failed
        ],
    )


def stats_json(stats: RunStats) -> dict[str, Any]:
    """The stats as JSON-able data with stable keys (`moat stats --format json`)."""
    return asdict(stats)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{key} {value}" for key, value in counts.items()) or "—"


def render_stats(stats: RunStats) -> str:
    """A compact text table of the run's figures."""
    lat, spec = stats.latency_ms, stats.speculative
    done = f"{stats.requests}/{stats.requests_total if stats.requests_total is not None else '?'}"
    rps = "" if stats.throughput_rps is None else f"  {stats.throughput_rps:.1f} req/s"
    per_case = "—" if stats.cost_per_case_usd is None else f"${stats.cost_per_case_usd:.6f}"
    per_req = "—" if stats.llm_calls_per_request is None else f"{stats.llm_calls_per_request:.2f}"
    models = ", ".join(
        f"{name} {int(m['calls'])} ${m['cost_usd']:.6f}" for name, m in stats.by_model.items()
    )
    lines = [
        f"run {stats.run_id}  {printable(stats.graph_name or '?')}  {stats.run_status or '?'}  "
        f"{done} requests{rps}",
    ]
    if stats.simulated:
        lines.append("figures come from simulated models (provider sim), not real providers")
    rows = [
        (
            "latency ms",
            f"p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  "
            f"p99 {_ms(lat['p99'])}  mean {_ms(lat['mean'])}  max {_ms(lat['max'])}",
        ),
        ("cost", f"{per_case} per case  ${stats.cost_total_usd:.6f} total"),
        (
            "llm calls",
            f"{per_req} per request  {stats.llm_calls} total" + (f"  ({models})" if models else ""),
        ),
        (
            "cache",
            f"hit rate {_pct(stats.cache['hit_rate'])}  "
            f"({stats.cache['hits']} hits, {stats.cache['misses']} misses)",
        ),
        (
            "validation",
            f"success {_pct(stats.validation['success_rate'])}  "
            f"({stats.validation['passed']} passed, {stats.validation['failed']} failed)",
        ),
        (
            "speculative",
            f"used {spec['used']}  discarded {spec['discarded']}  "
            f"cancelled {spec['cancelled']}  wasted ${spec['wasted_usd']:.6f} "
            f"of ${spec['cost_usd']:.6f}",
        ),
        ("status", _counts(stats.by_status)),
        ("route", _counts(stats.by_route)),
        (
            "slowest",
            "  ".join(f"{s['request_id']} {s['latency_ms']:.0f}ms" for s in stats.slowest) or "—",
        ),
    ]
    if stats.failed:
        rows.append(("failed", "  ".join(f"{f['request_id']} {f['status']}" for f in stats.failed)))
    lines += [f"{label:<12} {value}" for label, value in rows]
    return "\n".join(lines) + "\n"


def render_runs(runs: list[Row]) -> str:
    """The `moat runs` listing: one line per run, newest first, columns as wide as their
    contents (a graph name is cut at `_GRAPH_CHARS`: `moat stats RUN_ID` shows it whole)."""
    if not runs:
        return "no runs yet; start one with `moat run GRAPH`\n"
    rows = [["RUN", "GRAPH", "STATUS", "DONE", "STARTED (UTC)", "TOOK"]]
    for run in runs:
        total = run["requests_total"]
        took = "—"
        if run["finished_at"] is not None:
            took = f"{run['finished_at'] - run['started_at']:.1f}s"
        graph = printable(run["graph_name"])
        if len(graph) > _GRAPH_CHARS:
            graph = graph[: _GRAPH_CHARS - 1] + "…"
        rows.append(
            [
                printable(run["id"]),
                graph,
                run["status"],
                f"{run['requests_done']}/{total if total is not None else '?'}",
                fmt_time(run["started_at"])[:19],
                took,
            ]
        )
    return columns(rows, right={3})
