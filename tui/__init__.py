"""The moat terminal UI: a live Textual view of a store that runs are writing.

Launch it with `moat tui [--db PATH]`, `moat run GRAPH --tui`, or `run_tui(db_path)`.
"""

from __future__ import annotations

from tui.app import MoatApp, run_tui

__all__ = ["MoatApp", "run_tui"]
