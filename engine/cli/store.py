"""The store commands: `moat runs`, `moat stats`, `moat report` and `moat prune`."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from engine.cli import EXIT_FAILED, file_path, identifier
from engine.cli import store_file as db_path
from engine.errors import RequestNotFinished, StoreError, printable
from engine.store.store import Store

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register the store-reading commands on the `moat` subparsers."""
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--db", type=file_path, metavar="PATH")
    p.add_argument("--limit", type=_limit, default=20, metavar="N", help="show the newest N runs")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("stats", help="latency, cost, cache, validation and speculation figures")
    p.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        type=identifier,
        help="the run to sum up (default: the latest run; `moat runs` lists the others)",
    )
    p.add_argument("--db", type=file_path, metavar="PATH")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("report", help="explain one request: what ran, what was skipped, why")
    p.add_argument("request_id", metavar="REQUEST_ID", type=identifier)
    p.add_argument("--db", type=file_path, metavar="PATH")
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "prune",
        help="delete old runs with everything that belongs to them, and reclaim the space",
        description="Delete whole runs (requests, events, node runs, LLM calls, traces) "
        "that ended before DATE, or all but the newest N. A run still being written is "
        "never pruned; it is safe while other processes write.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--before",
        type=parse_before,
        metavar="DATE",
        help="runs that ended before DATE: 2026-11-30, 2026-11-30T12:00 (UTC unless it "
        "has an offset) or an age such as 30d, 12h, 90m",
    )
    which.add_argument("--keep-runs", type=_count, metavar="N", help="keep the newest N runs")
    p.add_argument("--db", type=file_path, metavar="PATH")
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="on a store made before incremental vacuum, shrink the file with a full VACUUM "
        "(refused while a run is being written)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be pruned")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=cmd_prune)


_AGE = re.compile(r"(\d+)([dhm])")
_AGE_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}


def parse_before(value: str) -> float:
    """`--before`: an ISO date or time (UTC unless it has an offset) or an age (`30d`,
    `12h`, `90m`); the epoch time it means."""
    text = value.strip()
    now = time.time()
    age = _AGE.fullmatch(text)
    if age:
        if int(age.group(1)) == 0:  # now: as a date in the future, it prunes every run
            raise argparse.ArgumentTypeError(
                f"{value!r} is no age: every run ended before now, so all would be pruned; "
                "give an age such as 30d (or --keep-runs 0 to prune every run)"
            )
        try:
            return now - int(age.group(1)) * _AGE_SECONDS[age.group(2)]
        except OverflowError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is further back than any date; use a smaller age such as 365d"
            ) from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM] or an "
            "age such as 30d, 12h, 90m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() > now:
        # Every finished run ended before a future date: a typo in the year would empty
        # the store, so that takes the explicit `--keep-runs 0`.
        raise argparse.ArgumentTypeError(
            f"{value!r} is in the future, so every run would be pruned; give a past date "
            "or an age such as 30d (or --keep-runs 0 to prune every run)"
        )
    return moment.timestamp()


_MAX_RUNS = 2**62
"""More runs than any store holds; larger counts mean the same and fit SQLite's integers."""


def _count(value: str, least: int = 0) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of runs ({least} or more)")
    return min(number, _MAX_RUNS)


def _limit(value: str) -> int:
    return _count(value, least=1)


def _open(args: argparse.Namespace) -> Store:
    return Store.open(db_path(args.db), readonly=True)


def _damage(store: Store) -> str:
    shown = ", ".join(store.damaged[:5]) + (", ..." if len(store.damaged) > 5 else "")
    return (
        f"{shown}; the file was damaged or edited by hand (`sqlite3 {store.path} "
        "'PRAGMA integrity_check'` checks it)"
    )


def _note_damaged(store: Store) -> None:
    """Say on stderr which stored values a command showed as empty because they did not
    read back (the figures printed are of everything else)."""
    if store.damaged:
        print(
            f"moat: note: {store.path}: stored values that do not read back were shown as "
            f"empty: {_damage(store)}",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _showing(store: Store) -> Iterator[None]:
    """Turn a failure to lay out what a damaged store holds into the damage it met: a
    value that did not read back, empty where a figure was needed."""
    try:
        yield
    except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
        if not store.damaged:
            raise  # a bug of moat's, not the file's
        raise StoreError(
            f"{store.path}: cannot show this: stored values do not read back: {_damage(store)}"
        ) from exc
    _note_damaged(store)


def cmd_runs(args: argparse.Namespace) -> int:
    """Print the runs, newest first."""
    from engine.report.explain import render_runs

    with _open(args) as store, _showing(store):
        print(render_runs(store.list_runs(limit=args.limit)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print a run's figures (the latest run's without RUN_ID)."""
    from engine.report.explain import render_stats, run_stats, stats_json

    with _open(args) as store, _showing(store):
        stats = run_stats(store, args.run_id)
        if args.format == "json":
            print(json.dumps(stats_json(stats), indent=2))
        else:
            print(render_stats(stats))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the request detail of architecture: The request report.

    Exits 0 for a finished request; 1 for one its run has not answered (yet): in flight
    (what is stored of it so far is printed), waiting its turn, or left unanswered by a run
    that stopped, saying so on stderr; 2 for an id the store does not have."""
    from engine.report.explain import render_markdown, report_json, request_report

    with _open(args) as store, _showing(store):
        try:
            report = request_report(store, args.request_id)
        except RequestNotFinished as exc:
            print(f"moat: {printable(str(exc))}", file=sys.stderr)
            return EXIT_FAILED
        if args.format == "json":
            print(json.dumps(report_json(report), indent=2, default=str))
        else:
            print(render_markdown(report))
        if report.summary.status != "unfinished":
            return 0
        note = report.summary.note or f"request '{report.summary.request_id}' is unfinished"
        print(f"moat: {printable(f'{store.path}: {note}')}", file=sys.stderr)
    return EXIT_FAILED


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete old runs and reclaim their space (`engine.store.retention`)."""
    from engine.store.retention import prune

    result = prune(
        db_path(args.db),
        before=args.before,
        keep_runs=args.keep_runs,
        vacuum=args.vacuum,
        dry_run=args.dry_run,
    )
    if args.format == "json":
        print(json.dumps({"dry_run": args.dry_run, **result.as_json()}, indent=2))
        return 0
    verb = "would prune" if args.dry_run else "pruned"
    runs = len(result.runs)
    print(
        f"{verb} {runs} run{'s' * (runs != 1)} ({result.requests:,} requests"
        + ("" if args.dry_run else f", {result.rows:,} rows")
        + f") in {result.seconds:.2f} s"
        + (f": {', '.join(result.runs)}" if args.dry_run and result.runs else "")
    )
    if result.skipped:
        print(f"kept {len(result.skipped)} run(s) still being written: {', '.join(result.skipped)}")
    if result.elsewhere:
        print(
            f"{len(result.elsewhere)} run(s) were pruned by another process meanwhile (the "
            f"requests of theirs this prune deleted are counted above): "
            f"{', '.join(result.elsewhere)}"
        )
    if not args.dry_run:
        freed = f"space: this prune freed {_mb(result.bytes_freed)}"
        if result.vacuum in ("none", "skipped"):
            why = (
                "the full VACUUM was skipped, as a run started being written meanwhile; "
                if result.vacuum == "skipped"
                else ""
            )
            print(
                f"{freed}, kept as free pages that new records reuse (store "
                f"{_mb(result.bytes_after)}); {why}`--vacuum` shrinks the file when no run is "
                "running"
            )
        else:
            how = "incremental vacuum" if result.vacuum == "incremental" else "full VACUUM"
            print(
                f"{freed}; {_mb(result.bytes_returned)} handed back to the file system ({how}); "
                f"store {_mb(result.bytes_before)} -> {_mb(result.bytes_after)}"
            )
    return 0
