"""Two installed packages whose `moat.nodes` entry points claim one type name: which one
a graph got depended on the order the packages were installed in, and `moat check` said
nothing. Now two third-party claims leave the name to neither (a graph that uses it is
told to uninstall one), and a package that claims a built-in type's name is the broken
one, in either order: the built-in keeps its name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Node, NodeContext
from engine.cli import main
from engine.plugin import registry as registry_module
from engine.plugin.registry import Registry
from nodes.redact import RedactNode


def node_type(type_name: str, module: str) -> type[Node]:
    class Out(BaseModel):
        text: str = module

    async def run(self: Node, config: Any, ctx: NodeContext) -> Out:
        return Out()

    body = {"type_name": type_name, "Config": Out, "Output": Out, "run": run, "__module__": module}
    return type("Claim", (Node,), body)


FIRST = node_type("dupe", "first_pkg.nodes")
SECOND = node_type("dupe", "second_pkg.nodes")
SHADOW = node_type("redact", "shadow_pkg.nodes")


def entry_point(name: str, cls: type[Node], package: str) -> SimpleNamespace:
    value = f"{cls.__module__}:{cls.__qualname__}"
    return SimpleNamespace(
        name=name, value=value, dist=SimpleNamespace(name=package), load=lambda: cls
    )


REDACT = entry_point("redact", RedactNode, "moat")


def installed(monkeypatch: pytest.MonkeyPatch, *points: SimpleNamespace) -> Registry:
    monkeypatch.setattr(registry_module, "entry_points", lambda group: list(points))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    return Registry.default()


def test_two_packages_claiming_one_type_leave_it_to_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = installed(
        monkeypatch,
        REDACT,
        entry_point("dupe", FIRST, "first-pkg"),
        entry_point("dupe", SECOND, "second-pkg"),
        entry_point("dupe", node_type("dupe", "third_pkg.nodes"), "third-pkg"),
    )
    said = (
        "node type 'dupe' is installed twice: by first_pkg.nodes:Claim (package 'first-pkg') "
        "and by second_pkg.nodes:Claim (package 'second-pkg'); uninstall one, or rename one "
        "`type_name`"
    )
    assert "dupe" not in registry and registry.problem("dupe") == said
    uses = tmp_path / "uses.yaml"
    uses.write_text("moat: 1\nname: u\nnodes:\n  d: {type: dupe}\noutput:\n  v: d.text\n")
    fine = tmp_path / "fine.yaml"
    fine.write_text(
        "moat: 1\nname: f\nnodes:\n  r: {type: redact, with: {text: hi}}\noutput: {t: r.text}\n"
    )
    assert main(["check", str(uses)]) == 2
    assert f"uses.yaml:4:13: node 'd': {said}" in capsys.readouterr().err
    assert main(["check", str(fine)]) == 0
    assert main(["nodes"]) == 0
    assert f"moat: warning: {said}" in capsys.readouterr().err


@pytest.mark.parametrize("built_in_first", [True, False])
def test_a_package_claiming_a_built_in_name_is_the_broken_one_in_either_order(
    monkeypatch: pytest.MonkeyPatch, built_in_first: bool
) -> None:
    shadow = entry_point("redact", SHADOW, "shadow-pkg")
    points = (REDACT, shadow) if built_in_first else (shadow, REDACT)
    registry = installed(monkeypatch, *points)
    assert registry.get("redact") is RedactNode
    assert registry.origin("redact") == "nodes.redact:RedactNode"
    assert registry.problem("redact") is None
    assert list(registry.broken.values()) == [
        "the installed node type 'redact' (shadow_pkg.nodes:Claim, of package 'shadow-pkg') "
        "takes the name of moat's built-in node type 'redact' (nodes.redact:RedactNode), "
        "which keeps it; rename its `type_name`, or uninstall package 'shadow-pkg'"
    ]


def test_one_class_under_two_entry_points_is_one_type(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = installed(
        monkeypatch,
        entry_point("dupe", FIRST, "first-pkg"),
        entry_point("alias", FIRST, "first-pkg"),
    )
    assert registry.get("dupe") is FIRST and not registry.broken
