"""The store commands: `moat runs`, `moat stats` and `moat report`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.cli.run import db_path
from engine.store.store import Store

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register the store-reading commands on the `moat` subparsers."""
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--db", metavar="PATH")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("stats", help="latency, cost, cache, validation and speculation figures")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="default: all runs")
    p.add_argument("--db", metavar="PATH")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("report", help="explain one request: what ran, what was skipped, why")
    p.add_argument("request_id", metavar="REQUEST_ID")
    p.add_argument("--db", metavar="PATH")
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.set_defaults(handler=cmd_report)


def _open(args: argparse.Namespace) -> Store:
    return Store.open(db_path(args.db), readonly=True)


def cmd_runs(args: argparse.Namespace) -> int:
    """Print the runs, newest first."""
    from engine.report.explain import render_runs

    with _open(args) as store:
        print(render_runs(store.list_runs(limit=args.limit)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print a run's (or every run's) figures."""
    from engine.report.explain import render_stats, run_stats, stats_json

    with _open(args) as store:
        stats = run_stats(store, args.run_id)
        if args.format == "json":
            print(json.dumps(stats_json(stats), indent=2))
        else:
            print(render_stats(stats))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the request detail of architecture: The request report."""
    from engine.report.explain import render_markdown, report_json, request_report

    with _open(args) as store:
        report = request_report(store, args.request_id)
        if args.format == "json":
            print(json.dumps(report_json(report), indent=2, default=str))
        else:
            print(render_markdown(report))
    return 0
