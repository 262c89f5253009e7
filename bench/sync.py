"""Benchmark of deferred sync: compression ratio and upload throughput of an edge store.

Usage:
    python bench/sync.py [--records 100000] [--kbps 256] [--capped-seconds 20] [--json]

1. Builds an edge store of real records: runs of the shipped governed-answer graph on the
   `sim` provider (latency scaled to zero), repeating its examples until the store holds
   `--records` syncable rows (requests, events, node runs, LLM calls, traces, policies).
2. Compression: every batch `moat sync` would send (500 rows), encoded and compressed with
   zstd and with gzip: raw JSON bytes, compressed bytes, ratio, bytes per record, CPU time.
3. Uncapped: the whole store uploaded to a `moat sync-server` subprocess on loopback:
   records/s end to end (read, compress, post, merge, acknowledge).
4. At the cap: a fresh central store, the upload capped at `--kbps` for `--capped-seconds`,
   then stopped (an interrupted sync resumes later); the achieved rate is measured and the
   time for every record at the cap is extrapolated from the compressed size (said so in
   the output), since uploading 100k records at 256 kbps takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli import main as moat
from engine.store import sync_ops
from engine.store.schema import connect
from engine.sync import EdgeSync
from engine.sync.codec import encode_batch
from tests.support.edge_stores import SyncServerProcess, counts
from tests.support.fast_graphs import GRAPHS, fast_copy


def build_store(folder: Path, records: int) -> Path:
    """An edge store holding at least `records` syncable rows from real runs."""
    graph = fast_copy("governed-answer", folder, time_scale=0.0)
    examples = (GRAPHS / "examples" / "governed-answer.jsonl").read_text().splitlines()
    db = folder / "edge.db"
    per_request = 55  # about what one request of this graph writes; refined after run 1
    while True:
        have = sum(counts(db).values()) if db.exists() else 0
        if have >= records:
            return db
        need = max(10, int((records - have) / per_request) + 10)
        lines = [examples[i % len(examples)] for i in range(need)]
        requests = folder / "requests.jsonl"
        requests.write_text("\n".join(lines) + "\n")
        args = ["run", str(graph), "--input", str(requests), "--db", str(db)]
        assert moat([*args, "--out", os.devnull, "--quiet", "--concurrency", "32"]) in (0, 1)
        per_request = max(1, (sum(counts(db).values()) - have) // need)


def compression(db: Path, batch_rows: int = 500) -> dict[str, Any]:
    """Every batch of the store, compressed both ways."""
    conn = connect(db)
    out: dict[str, Any] = {"records": 0, "raw_bytes": 0}
    sizes = {"zstd": 0, "gzip": 0}
    cpu = {"zstd": 0.0, "gzip": 0.0}
    try:
        for spec in sync_ops.SYNC_TABLES:
            after = 0
            acked: dict[str, str] = {}
            while True:
                if spec.mutable:
                    batch = sync_ops.read_changed(conn, spec.name, acked, batch_rows)
                    acked.update(batch.digests)
                else:
                    batch = sync_ops.read_appended(conn, spec.name, after, batch_rows)
                    after = batch.last
                if not batch.rows:
                    break
                out["records"] += len(batch.rows)
                for codec in sizes:
                    t0 = time.process_time()
                    body, raw = encode_batch("bench", spec.name, batch.columns, batch.rows, codec)
                    cpu[codec] += time.process_time() - t0
                    sizes[codec] += len(body)
                out["raw_bytes"] += raw
    finally:
        conn.close()
    for codec, size in sizes.items():
        out[codec] = {
            "bytes": size,
            "ratio": round(out["raw_bytes"] / size, 2),
            "bytes_per_record": round(size / out["records"], 1),
            "cpu_s": round(cpu[codec], 2),
        }
    return out


def upload(db: Path, central: Path, kbps: float | None, seconds: float | None) -> dict[str, Any]:
    """Upload `db` to a sync-server subprocess (stopped after `seconds` when given)."""
    copy = central.parent / f"edge-{central.stem}.db"
    copy.write_bytes(db.read_bytes())  # fresh watermarks for each measurement
    server = SyncServerProcess(central)
    sync = EdgeSync(copy, server.url, max_kbps=kbps)
    reports: list[Any] = []
    progress: list[tuple[float, int, int]] = []
    sync._progress = lambda r: progress.append((time.monotonic(), r.total_rows, r.sent_bytes))

    async def go() -> None:
        if seconds is None:
            reports.append(await sync.run())
            return
        with anyio.move_on_after(seconds):
            reports.append(await sync.run())

    try:
        t0 = time.monotonic()
        anyio.run(go)
        wall = time.monotonic() - t0
    finally:
        server.stop()
    rows, sent = (progress[-1][1], progress[-1][2]) if progress else (0, 0)
    with sqlite3.connect(central) as conn:
        stored = conn.execute("SELECT COALESCE(SUM(stored), 0) FROM sync_origins").fetchone()[0]
    return {
        "seconds": round(wall, 2),
        "records_acknowledged": rows,
        "records_stored_centrally": stored,
        "bytes_sent": sent,
        "records_per_s": round(rows / wall, 1),
        "kbps_achieved": round(sent * 8 / 1000 / wall, 1),
        "finished": bool(reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--kbps", type=float, default=256.0)
    parser.add_argument("--capped-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        db = build_store(folder, args.records)
        built = time.monotonic() - t0
        comp = compression(db)
        free = upload(db, folder / "central-free.db", None, None)
        capped = upload(db, folder / "central-capped.db", args.kbps, args.capped_seconds)
    zstd_bytes = comp["zstd"]["bytes"]
    at_cap_s = zstd_bytes * 8 / (args.kbps * 1000)
    result = {
        "records": comp["records"],
        "build_s": round(built, 1),
        "compression": comp,
        "uncapped": free,
        "capped": capped,
        "cap_kbps": args.kbps,
        "extrapolated_s_for_all_at_cap": round(at_cap_s, 1),
        "extrapolated_records_per_s_at_cap": round(comp["records"] / at_cap_s, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{comp['records']} records, {comp['raw_bytes']} B of JSON")
    for codec in ("zstd", "gzip"):
        c = comp[codec]
        print(f"  {codec}: {c['bytes']} B, x{c['ratio']}, {c['bytes_per_record']} B/record")
    print(f"uncapped: {free['records_per_s']} records/s ({free['seconds']} s)")
    print(
        f"capped at {args.kbps} kbps for {args.capped_seconds} s: {capped['kbps_achieved']} kbps, "
        f"{capped['records_acknowledged']} records; all at the cap: {at_cap_s:.0f} s (extrapolated)"
    )


if __name__ == "__main__":
    main()
