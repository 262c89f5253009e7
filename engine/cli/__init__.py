"""The `moat` command line: argument parsing and dispatch to the command modules.

Every error a user can cause ends as a located one-line message and exit code 2 (or 1 for
failed requests); a traceback is shown only for a bug in moat, and only with `MOAT_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from engine.errors import MoatError

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (README, "The CLI")."""
    parser = argparse.ArgumentParser(
        prog="moat",
        description="Run adaptive LLM request pipelines described as YAML graphs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from engine.cli import graph, policy, run, serve, sim_server, store, sync

    for module in (graph, run, serve, store, sim_server, policy, sync):
        module.add_commands(sub)
    # Packages that build on the engine (the TUI) add their commands through entry points,
    # so the engine never imports them.
    for ep in entry_points(group="moat.commands"):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `moat` console script and `python -m engine`."""
    from engine.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("moat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MoatError as exc:
        print(f"moat: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in moat: say so briefly, details on request
        if os.environ.get("MOAT_DEBUG"):
            traceback.print_exc()
        print(
            f"moat: internal error: {type(exc).__name__}: {exc} (set MOAT_DEBUG=1 for the "
            "traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
