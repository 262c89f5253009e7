"""Imports only point down the layers drawn in docs/architecture.md, and SQL stays in store/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The layer of each engine package or top-level module (architecture: Layers).
LAYERS = {
    "errors": 0,
    "frozen": 0,
    "stats": 0,
    "located_yaml": 0,
    "pii": 0,
    "events": 0,
    "logs": 0,
    "_quick_schema": 0,
    "expr": 1,
    "plugin": 1,
    "store": 1,
    "requests": 1,
    "seqs": 1,
    "telemetry": 1,
    "policy": 2,
    "report": 2,
    "sync": 2,
    "graph": 3,
    "models": 4,
    "collector": 4,
    "scheduler": 5,
    "_pipeline": 6,
    "api": 7,
    "serve": 8,
    "cluster": 9,
    "cli": 10,
    "__init__": 10,
    "__main__": 11,
}
# Modules of layer 0 that build on one another, in this order.
FOUNDATION = ["errors", "frozen", "stats", "located_yaml", "pii", "events", "logs"]


def _room(module: str) -> str:
    """`engine.scheduler.frame` -> `scheduler`; `engine` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_only(tree: ast.Module) -> set[int]:
    """Ids of the import statements under `if TYPE_CHECKING:` (annotations, not run)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            ids |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return ids


def _imports(path: Path) -> list[tuple[int, str]]:
    """The modules `path` imports when it runs, with their lines."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from engine.store import reads` imports the module engine.store.reads
            modules = [f"{node.module}.{a.name}" for a in node.names]
            modules = [m for m in modules if _is_module(m)] or [node.module]
            found += [(node.lineno, m) for m in modules]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _may_import(source: str, target: str) -> bool:
    if source == target:
        return True
    if source in FOUNDATION and target in FOUNDATION:
        return FOUNDATION.index(target) < FOUNDATION.index(source)
    return LAYERS[target] < LAYERS[source]


@pytest.mark.parametrize("path", _sources("engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_point_down(path: Path) -> None:
    source = _room(_module_name(path))
    assert source in LAYERS, f"{path}: add its package to the layers of docs/architecture.md"
    for line, module in _imports(path):
        top = module.split(".")[0]
        assert top not in ("nodes", "tui"), f"{path}:{line}: the engine imports {module}"
        if top != "engine" or module == "engine":
            continue
        target = _room(module)
        if target in LAYERS and not _may_import(source, target):
            pytest.fail(
                f"{path}:{line}: {source} (layer {LAYERS[source]}) imports {module} "
                f"({target}, layer {LAYERS[target]}): imports point down only"
            )


def test_only_the_http_servers_import_starlette_and_only_their_commands_import_them() -> None:
    """Starlette and uvicorn are the optional `serve` extra: engine/serve/ and the sync
    receiver alone import them, and only what runs them imports those modules: the commands
    (`moat serve`, `moat sim-server`, `moat sync-server`, when they run) and the Ray Serve
    deployment of `moat serve --ray`."""
    http = {ROOT / "engine" / "sync" / "server.py"}
    importers = {
        "engine.serve": {
            ROOT / "engine" / "cli" / "serve.py",
            ROOT / "engine" / "cli" / "sim_server.py",
            ROOT / "engine" / "cluster" / "serving.py",
        },
        "engine.sync.server": {ROOT / "engine" / "cli" / "sync.py"},
    }
    for path in _sources("engine"):
        if path.is_relative_to(ROOT / "engine" / "serve") or path in http:
            continue
        for line, module in _imports(path):
            assert module.split(".")[0] not in ("starlette", "uvicorn"), (
                f"{path}:{line}: {module} is the `serve` extra; keep HTTP in engine/serve/"
            )
            for server, allowed in importers.items():
                if module == server or module.startswith(server + "."):
                    assert path in allowed, f"{path}:{line}: only what runs {server} imports it"


def test_nodes_reach_the_engine_through_the_plugin_api() -> None:
    allowed = {"engine", "engine.pii"}  # the public API, and the one PII detector
    for path in _sources("nodes"):
        for line, module in _imports(path):
            if module.split(".")[0] == "engine" and module not in allowed:
                pytest.fail(f"{path}:{line}: nodes import {module}; use `engine`'s API")


# A statement at the start of a line (inside a triple-quoted string) or of a string.
def test_the_tui_reads_the_engine_through_its_api() -> None:
    allowed = {"engine", "engine.stats", "engine.store.reads"}
    for path in _sources("tui"):
        for line, module in _imports(path):
            if module.split(".")[0] == "engine" and module not in allowed:
                pytest.fail(f"{path}:{line}: the TUI imports {module}; use `engine`'s API")


_SQL = re.compile(
    r"""(?:^\s*|["'])\s*"""
    r"(SELECT\s+[\w*(]|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX))"
)


@pytest.mark.parametrize("package", ["engine", "nodes", "tui"])
def test_only_the_store_speaks_sql(package: str) -> None:
    for path in _sources(package):
        if path.is_relative_to(ROOT / "engine" / "store"):
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if _SQL.search(text) and not text.lstrip().startswith("#"):
                pytest.fail(f"{path}:{number}: SQL outside engine/store/: {text.strip()}")


def test_the_repository_explains_itself() -> None:
    """Docs and docstrings point at files in the repository, never at a design kept elsewhere."""
    for package in ("engine", "nodes", "tui", "bench", "tests", "docs"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".md") or path == Path(__file__):
                continue
            text = path.read_text()
            assert "DESIGN.md" not in text, f"{path}: point to docs/architecture.md instead"
