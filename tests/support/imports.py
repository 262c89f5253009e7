"""Importing as if an optional dependency were not installed, and undoing it exactly."""

from __future__ import annotations

import sys

import pytest


def without(monkeypatch: pytest.MonkeyPatch, missing: str, reloaded: str) -> None:
    """Make `import MISSING` (and its submodules) fail, and have the modules under
    `reloaded` imported afresh, so they meet the failure.

    Once the test ends everything is as before: the modules in `sys.modules` and the
    attributes of their parent packages (a fresh import rebinds `package.submodule`, which
    would leave later tests patching a module nobody uses).
    """
    for name in [m for m in sys.modules if m == reloaded or m.startswith(f"{reloaded}.")]:
        module = sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            monkeypatch.setattr(sys.modules[parent], child, module)
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m.split(".")[0] == missing] + [missing]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
