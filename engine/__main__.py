"""`python -m engine` runs the same CLI as the `moat` command.

`python -m` puts the working directory first on `sys.path`, where the `moat` command does
not: run from a graph's folder that holds its own `nodes.py` (as plugins may), that module
would stand in for moat's `nodes` package and no built-in node type would load. The
working directory goes, unless moat itself is imported from it (a source checkout).
"""

from __future__ import annotations

import os
import sys


def _without_working_directory() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first = os.path.abspath(sys.path[0]) if sys.path else None
    if first is not None and first == os.getcwd() and first != here:
        del sys.path[0]


_without_working_directory()

from engine.cli import main  # noqa: E402 (after the path is settled)

raise SystemExit(main())
