"""The public API of each package is re-exported in a sorted `__all__`, and nothing else leaks."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["engine", "nodes", "tui"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_unique(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(getattr(module, "__all__", []))
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", []):
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


def test_public_names_of_engine_are_all_exported() -> None:
    import engine

    public = {
        n
        for n, v in vars(engine).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("engine")
    }
    assert public <= set(engine.__all__)


def test_engine_does_not_import_nodes_or_tui() -> None:
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("engine").__file__ or "").parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in ("nodes", "tui"), f"{path} imports {n}"
