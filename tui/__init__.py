"""The moat terminal UI: a live Textual view of a store that runs are writing.

Launch it with `moat tui [--db PATH]`, `moat run GRAPH --tui`, or `run_tui(db_path)`.
Textual is imported on first use, so `moat` commands that never open the UI stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui.app import MoatApp, run_tui, run_tui_async

__all__ = ["MoatApp", "run_tui", "run_tui_async"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tui import app

        return getattr(app, name)
    raise AttributeError(f"module 'tui' has no attribute {name!r}")
