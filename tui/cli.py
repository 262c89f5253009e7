"""The `moat tui [--db PATH]` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_commands", "cmd_tui"]


def add_commands(sub: Any) -> None:
    """Register `moat tui` on the `moat` subparsers."""
    p = sub.add_parser("tui", help="the live terminal UI over a store")
    p.add_argument(
        "--db",
        type=os.path.expanduser,  # (`--db=~/x.db`: the shell leaves that `~` alone)
        metavar="PATH",
        default=None,
        help="the store file (default: $MOAT_DB or moat.db in the working directory)",
    )
    p.add_argument("--run", metavar="RUN_ID", default=None, help="focus on one run")
    p.set_defaults(handler=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    """Run the TUI until the user quits."""
    from engine import SpecError, store_path
    from tui.app import run_tui

    path = store_path(args.db)  # (refuses an empty `--db` and `-`)
    if args.run is not None and os.path.exists(path):
        # An unknown run would open on empty figures that look like an idle run.
        from engine import Store

        with Store.open(path, readonly=True) as store:
            store.require_run(args.run)  # raises, listing the latest runs
    if not _on_terminal():
        # Drawn on a pipe or a file, the UI would wait for keys that never come, busy.
        raise SpecError(
            "moat tui: the terminal UI needs a terminal, and this command's input, output or "
            "error output is not one (a pipe, a file, a cron job); run it from a terminal, or "
            "read the store with `moat runs`, `moat stats` and `moat report`"
        )
    run_tui(path, run_id=args.run)
    return 0


def _on_terminal() -> bool:
    """Whether the command reads from and draws on a terminal: its input, its output and
    its error output, which Textual draws on (what `moat run --tui` checks too)."""
    return all(
        stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout, sys.__stderr__)
    )
