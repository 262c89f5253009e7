"""The `moat tui [--db PATH]` command."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_commands", "cmd_tui"]


def add_commands(sub: Any) -> None:
    """Register `moat tui` on the `moat` subparsers."""
    p = sub.add_parser("tui", help="the live terminal UI over a store")
    p.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help="the store file (default: $MOAT_DB or moat.db in the working directory)",
    )
    p.add_argument("--run", metavar="RUN_ID", default=None, help="focus on one run")
    p.set_defaults(handler=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    """Run the TUI until the user quits."""
    from tui.app import run_tui

    path = args.db or os.environ.get("MOAT_DB") or "moat.db"
    if args.run is not None and os.path.exists(path):
        # An unknown run would open on empty figures that look like an idle run.
        from engine import Store

        with Store.open(path, readonly=True) as store:
            store.require_run(args.run)  # raises, listing the latest runs
    run_tui(path, run_id=args.run)
    return 0
