"""Benchmark: opening every TUI screen and `moat stats` on a store of a million requests.

Building the store: a real run of the flagship graph (simulated models, latency scaled to
zero, distinct prompts; `bench/store_run.py`) writes `--seed-requests` requests through the
store's own writer, so every row is one moat really writes (events, node runs, LLM calls,
traces, compressed payloads). SQLite then copies that run inside the file (`INSERT ...
SELECT` on the compact tables: new run ids, request ids and keys, times shifted) until the
store holds `--requests` requests in runs of `--run-size`, the newest finished a minute ago.

Timing: each screen of `moat tui` is opened headless (textual's `run_test` pilot) and
timed until it shows the store's data: `open_s` from starting the app (which shows the
dashboard first, then switches), `switch_s` from the key that shows the screen in a running
TUI. `moat stats` (the latest run, and the same with `--format json`) is timed as a
subprocess, start to exit.

    python bench/store_scale.py --requests 1000000 --db /tmp/scale.db --json
    python bench/store_scale.py --db /tmp/scale.db --reuse --json     # time again
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store_run import batch, instant_graph, one_run  # noqa: E402
from engine.store import tallies  # noqa: E402
from engine.store.compact import delete_keys  # noqa: E402
from engine.store.store import new_run_id  # noqa: E402
from tui._live import Metrics  # noqa: E402

_DONE = Metrics()

_COPY = {
    "requests": (
        "INSERT INTO requests (id, run_id, seq, conversation_id, turn_index, parent_request_id, "
        "tenant, status, started_at, finished_at, latency_ms, cost_usd, policy_name, "
        "policy_version, input_hash, output_json, error) "
        "SELECT printf('%s-%06d', :run, seq + :base), :run, seq + :base, conversation_id, "
        "turn_index, parent_request_id, tenant, status, started_at + :shift, "
        "finished_at + :shift, latency_ms, cost_usd, policy_name, policy_version, input_hash, "
        "output_json, error FROM requests WHERE run_id = :seed ORDER BY seq"
    ),
    # The compact layout (engine.store.compact): new request keys `:koff` above the seed's,
    # times are offsets from each key's t0, so only the keys' t0 shift.
    "request_keys": (
        "INSERT INTO request_keys (key, id, run, t0) SELECT key + :koff, "
        "printf('%s-%06d', :run, CAST(substr(id, -6) AS INTEGER) + :base), :rc, t0 + :shift "
        "FROM request_keys WHERE key BETWEEN :kmin AND :kmax ORDER BY key"
    ),
    "event_rows": (
        "INSERT INTO event_rows (rk, run, cycle, stage, component, type, decision, status, "
        "sequence, at, duration_ms, reasons, inputs, outputs, payload) SELECT rk + :koff, :rc, "
        "cycle, stage, component, type, decision, status, sequence, at, duration_ms, reasons, "
        "inputs, outputs, payload FROM event_rows WHERE rk BETWEEN :kmin AND :kmax ORDER BY id"
    ),
}
_CHILDREN = {
    "node_rows": "node, node_type, cycle, status, speculative, outcome, at, duration_us, "
    "attempts, error",
    "llm_rows": "node, cycle, model, provider, call_kind, call_outcome, cache_status, "
    "related_event_id, prompt_hash, input_tokens, output_tokens, cost_usd, latency_ms, "
    "at, status, error, prompt_text, response_text",
    "trace_rows": "cycle, stage, payload",
}
for _table, _columns in _CHILDREN.items():
    _COPY[_table] = (
        f"INSERT INTO {_table} (rk, {_columns}) SELECT rk + :koff, {_columns} FROM {_table} "
        "WHERE rk BETWEEN :kmin AND :kmax ORDER BY id"
    )


def build(db: Path, total: int, run_size: int, seed_requests: int) -> dict[str, Any]:
    """Write the seed run for real, then copy it into runs of `run_size` up to `total`."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        graph = instant_graph(Path(tmp))
        anyio.run(one_run, graph, db, batch(seed_requests))
    seeded = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    (seed, graph_name, graph_hash, config, seed_start, seed_end) = conn.execute(
        "SELECT id, graph_name, graph_hash, config_json, started_at, finished_at FROM runs"
    ).fetchone()
    kmin, kmax = conn.execute(
        "SELECT MIN(key), MAX(key) FROM request_keys WHERE id != '' "
        "AND run = (SELECT code FROM strings WHERE text = ?)",
        (seed,),
    ).fetchone()
    runs = max(1, total // run_size)
    now = time.time()
    span = seed_end - seed_start
    for r in range(runs):
        # newest last, one run every 30 minutes, the last one finished a minute ago
        start = now - 60 - (runs - r) * 1800
        run_id = new_run_id(start)
        config_done = json.loads(config)
        config_done["heartbeat_at"] = start
        conn.execute("BEGIN")
        conn.execute("INSERT INTO strings (text) VALUES (?)", (run_id,))
        rc = conn.execute("SELECT code FROM strings WHERE text = ?", (run_id,)).fetchone()[0]
        conn.execute(
            "INSERT INTO runs (id, graph_name, graph_hash, started_at, finished_at, status, "
            "requests_total, requests_done, config_json) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                graph_name,
                graph_hash,
                start,
                start + span * run_size / seed_requests,
                "finished",
                run_size,
                run_size,
                json.dumps(config_done),
            ),
        )
        for k in range(run_size // seed_requests):
            top = conn.execute("SELECT MAX(key) FROM request_keys").fetchone()[0]
            params = {
                "run": run_id,
                "rc": rc,
                "seed": seed,
                "base": k * seed_requests,
                "shift": start - seed_start + k * span,
                "kmin": kmin,
                "kmax": kmax,
                "koff": top + 1 - kmin,
            }
            since = tallies.mark(conn)
            for sql in _COPY.values():
                conn.execute(sql, params)
            tallies.tally(conn, since)  # as the writer tallies what it writes
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    seed_keys = [
        int(row[0])
        for row in conn.execute(
            "SELECT key FROM request_keys WHERE run = (SELECT code FROM strings WHERE text = ?)",
            (seed,),
        )
    ]
    delete_keys(conn, seed_keys)
    conn.execute("DELETE FROM requests WHERE run_id = ?", (seed,))
    conn.execute("DELETE FROM runs WHERE id = ?", (seed,))
    tallies.forget(conn, seed)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    conn.close()
    return {
        "requests": stored,
        "runs": runs,
        "run_size": run_size,
        "seed_requests": seed_requests,
        "seed_s": round(seeded - began, 1),
        "copy_s": round(time.perf_counter() - seeded, 1),
        "file_mb": round(db.stat().st_size / 1e6),
    }


async def _open_screen(db: Path, mode: str) -> dict[str, float]:
    """Start the app on `mode` and time it until the screen shows the store's data."""
    from textual.widgets import DataTable

    from tui.app import MoatApp

    started, cpu = time.perf_counter(), time.process_time()
    app = MoatApp(db, refresh_s=0)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.action_show(mode)
        while not app.snapshot.available:
            await pilot.pause(0.01)
        first_poll = app.snapshot.poll_ms
        await pilot.pause()
        shown, shown_cpu = time.perf_counter(), time.process_time()
        complete = None
        if mode == "dashboard":  # a large store's all-runs figures follow the first poll
            while not app.snapshot.metrics.get(None, _DONE).complete:
                app.refresh_now()
                await pilot.pause(0.05)
            complete = time.perf_counter() - started
        rows = 0
        if mode == "requests":
            rows = app.screen.query_one("#requests", DataTable).row_count
        detail = None
        if mode == "requests" and rows:
            begin = time.perf_counter()
            await app.screen.action_open()  # type: ignore[attr-defined]
            await pilot.pause()
            detail = time.perf_counter() - begin
    out = {
        "poll_s": round(first_poll / 1000, 3),
        "open_s": round(shown - started, 3),
        "cpu_s": round(shown_cpu - cpu, 3),
        "rows": rows,
    }
    if detail is not None:
        out["detail_open_s"] = round(detail, 3)
    if complete is not None:
        out["all_figures_s"] = round(complete, 3)
    return out


async def _switch_screen(db: Path, mode: str) -> float:
    """Seconds from the key that shows `mode` (the dashboard on display, its data read) to
    the screen drawn with the store's data: what opening a view costs in a running TUI."""
    from tui.app import MoatApp
    from tui.screens.requests import RequestTable

    app = MoatApp(db, refresh_s=0)
    async with app.run_test(size=(160, 50)) as pilot:
        while not app.snapshot.available:
            await pilot.pause(0.01)
        await pilot.pause()
        began = time.perf_counter()
        await pilot.press(mode[0])  # r, p
        await pilot.pause()
        if mode == "requests" and app.snapshot.requests:
            while not app.screen.query_one("#requests", RequestTable).row_count:
                await pilot.pause(0.005)
            await pilot.pause()
        return time.perf_counter() - began


def _stats(db: Path, *extra: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "engine", *extra, "--db", str(db)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return time.perf_counter() - began


def time_reads(db: Path, repeat: int) -> dict[str, Any]:
    """Median open time of each screen and of `moat stats`, over `repeat` openings."""
    figures: dict[str, Any] = {}
    for mode in ("dashboard", "requests", "policies"):
        runs = [anyio.run(_open_screen, db, mode) for _ in range(repeat)]
        figures[mode] = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        if mode != "dashboard":
            switches = [anyio.run(_switch_screen, db, mode) for _ in range(repeat)]
            figures[mode]["switch_s"] = round(statistics.median(switches), 3)
    for name, command in (
        ("moat_stats_s", ("stats",)),
        ("moat_stats_json_s", ("stats", "--format", "json")),
        ("moat_runs_s", ("runs",)),  # the same process start, imports and store opening
    ):
        figures[name] = round(statistics.median(_stats(db, *command) for _ in range(repeat)), 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--run-size", type=int, default=20_000)
    parser.add_argument("--seed-requests", type=int, default=1_000)
    parser.add_argument("--reuse", action="store_true", help="time an existing store")
    parser.add_argument("--build-only", action="store_true", help="build, do not time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"benchmark": "store.scale"}
    if not args.reuse:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        summary["build"] = build(args.db, args.requests, args.run_size, args.seed_requests)
    else:
        conn = sqlite3.connect(args.db)
        summary["requests"] = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        conn.close()
    if not args.build_only:
        summary["reads"] = time_reads(args.db, args.repeat)
    summary["python"] = sys.version.split()[0]
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
