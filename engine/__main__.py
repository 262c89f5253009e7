"""`python -m engine` runs the same CLI as the `moat` command."""

from __future__ import annotations

from engine.cli import main

raise SystemExit(main())
