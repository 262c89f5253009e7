"""Check 16: no chain of nodes each reading the one before is longer than `MAX_CHAIN`.

A node runs the one input it waits for inline, a stack frame or four deeper than itself, so
a graph written as a long chain passes every other check and then exhausts Python's stack
on every request. Loops run their body below the loop node, so a loop counts as itself plus
its body's longest chain.
"""

from __future__ import annotations

from engine.graph.compiled import Scope

__all__ = ["MAX_CHAIN", "longest_chain"]

MAX_CHAIN = 100
"""Most nodes one chain may hold, each reading the one before (a loop counts with its body's
longest chain): a node runs the input it waits for inline, a few stack frames deeper, so
a chain of a thousand would exhaust Python's stack at run time."""


def longest_chain(scope: Scope) -> tuple[int, list[str]]:
    """The length of the longest chain of nodes in `scope` each reading the one before (a
    loop counts as itself plus its body's longest chain), and its nodes in `scope`."""
    length: dict[str, int] = {}
    before: dict[str, str | None] = {}
    for nid in scope.order:  # inputs come first
        node = scope.nodes[nid]
        inputs = [dep for dep in node.deps if dep in length]
        prior = max(inputs, key=lambda dep: (length[dep], dep), default=None)
        inner = longest_chain(node.loop.body)[0] if node.loop is not None else 0
        length[nid] = 1 + inner + (length[prior] if prior is not None else 0)
        before[nid] = prior
    if not length:
        return 0, []
    end = max(length, key=lambda nid: (length[nid], nid))
    chain: list[str] = []
    last: str | None = end
    while last is not None:
        chain.append(last)
        last = before[last]
    return length[end], chain[::-1]
