"""The `moat` command line: argument parsing and dispatch to the command modules.

Every error a user can cause ends as a located one-line message and exit code 2 (or 1 for
failed requests); a traceback is shown only for a bug in moat, and only with `MOAT_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence

from engine.errors import MoatError, printable

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


_MODULES = ("graph", "run", "serve", "store", "sim_server", "policy", "sync")
_COMMANDS = {
    "check": "graph",
    "show": "graph",
    "schema": "graph",
    "nodes": "graph",
    "run": "run",
    "serve": "serve",
    "runs": "store",
    "stats": "store",
    "report": "store",
    "prune": "store",
    "sim-server": "sim_server",
    "policy": "policy",
    "sync": "sync",
    "sync-server": "sync",
}
"""Which module of `engine.cli` defines each command: a command's start imports only its
own module (`moat runs` need not import the scheduler, the graph compiler and pydantic,
a second of a command's start on a loaded machine)."""
_QUIET = frozenset({"runs", "stats", "report"})
"""Commands that only read the store and print: they log nothing, so they do not load
the logging stack (structlog and rich, a third of their start) unless something they
imported already did."""


def on_terminal() -> bool:
    """Whether the command reads from and draws on a terminal: its input, its output, and
    its error output, which the terminal UI (Textual) draws on."""
    return all(
        stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout, sys.__stderr__)
    )


def identifier(text: str) -> str:
    """An argparse type: a run or request id, which is never empty (`''` from a shell
    variable that was not set would otherwise reach the store as an id)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty id; give one that `moat runs` lists")
    return text.strip()


def file_path(text: str) -> str:
    """An argparse type: a file path, where a leading `~` is the home folder as the shell
    would have it (a shell expands `--db ~/x.db` but not `--db=~/x.db`)."""
    return os.path.expanduser(text)


def store_file(value: str | None) -> str:
    """The store a command opens (`engine.store.store.store_path`: `--db`, else `$MOAT_DB`,
    else `moat.db`), loaded only by the commands that open one."""
    from engine.store.store import store_path

    return store_path(value)


def not_stdin(what: str, why: str = "") -> str:
    """Why `-` is refused where moat reads a named file (it neither reads standard input
    there nor looks for a file called `-`), and what to do instead."""
    return (
        f"moat does not read standard input{why}; save {what} to a file and pass its path "
        "(./- for a file named -)"
    )


def graph_file(text: str) -> str:
    """An argparse type: a graph file (`file_path`), which is never `-` (`not_stdin`)."""
    if text == "-":
        why = " (the paths in a graph, such as its `policy:`, are relative to its file)"
        raise argparse.ArgumentTypeError(not_stdin("the graph", why))
    return file_path(text)


def policy_file(text: str) -> str:
    """An argparse type: a policy file (`moat policy apply FILE`, a side of `diff`;
    `file_path`), which is never `-` (`not_stdin`)."""
    if text == "-":
        raise argparse.ArgumentTypeError(not_stdin("the policy"))
    return file_path(text)


class _Parser(argparse.ArgumentParser):
    """moat's argument parser: a command refuses an argument it does not know itself, so
    the usage line printed is that command's (`moat run --bogus` shows `moat run`'s), not
    the bare `moat COMMAND ...` of the top level."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser (README, "The CLI"), or, given a command of moat's own,
    one with just the commands of its module."""
    parser = _Parser(
        prog="moat",
        description="Run adaptive LLM request pipelines described as YAML graphs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    own = _COMMANDS.get(command or "")
    if own:
        importlib.import_module(f"engine.cli.{own}").add_commands(sub)
        return parser
    # Packages that build on the engine (the TUI) add their commands through entry points,
    # so the engine never imports them.
    from importlib.metadata import entry_points

    plugins = entry_points(group="moat.commands")
    named = [ep for ep in plugins if ep.name == command]
    if not named:
        for name in _MODULES:
            importlib.import_module(f"engine.cli.{name}").add_commands(sub)
    for ep in named or plugins:
        ep.load()(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command word of `argv` (its first argument, unless that is an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `moat` console script and `python -m engine`."""
    words = sys.argv[1:] if argv is None else list(argv)
    if _command(words) != "serve":
        return _main(words)
    # A SIGTERM while `moat serve` imports its modules and loads its graphs is noted from
    # here on, before anything heavy loads, and the command then stops cleanly (exit 0)
    # rather than meeting the signal's default action (exit 143).
    from engine.cli._starting import noting_sigterm

    with noting_sigterm():
        return _main(words)


def _main(words: list[str]) -> int:
    _printable_anywhere(sys.stdout)
    try:  # (the command's modules load here: a second or so on a loaded machine)
        args = build_parser(_command(words)).parse_args(words)
        if args.command not in _QUIET or "engine.logs" in sys.modules:
            from engine.logs import configure_logging, log_thread_failure

            configure_logging()
            if threading.excepthook is threading.__excepthook__:  # (an embedding app's stays)
                threading.excepthook = log_thread_failure
    except KeyboardInterrupt:
        return _interrupted()
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return _interrupted()
    except MoatError as exc:
        print(f"moat: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of the output went away (`| head`)
        # what is still buffered cannot be written either: no second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.command != "run":  # a reader that had seen enough (`moat runs | head`)
            return EXIT_OK
        with contextlib.suppress(OSError):  # (stderr may be that pipe too)
            print(
                "moat: the output was closed (broken pipe) before the batch ended; what "
                "finished is kept (`moat runs`; `moat run --resume RUN_ID` answers the rest)",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug in moat: say so briefly, details on request
        if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C inside a class body
            return _interrupted()
        if os.environ.get("MOAT_DEBUG"):
            import traceback  # (only here: `moat serve` notes SIGTERM once this module loads)

            traceback.print_exc()
        print(
            f"moat: internal error: {type(exc).__name__}: {printable(str(exc))} (set "
            "MOAT_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _printable_anywhere(stream: object) -> None:
    """Let `stream` print any text: on an output whose encoding cannot write a character
    (`LC_ALL=C` without UTF-8 mode: ASCII), it is written as an escape (`\\xe4`), as
    Python writes stderr, rather than ending the command in a UnicodeEncodeError. A graph's
    name, a stored value or a path may hold any character."""
    errors = getattr(stream, "errors", None)
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None or errors == "backslashreplace":
        return
    try:
        utf = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name.startswith("utf")
    except LookupError:
        utf = False
    if errors == "strict" or not utf:
        reconfigure(errors="backslashreplace")


def _interrupted() -> int:
    with contextlib.suppress(OSError):  # (a terminal that closed)
        print("moat: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
