"""Check 12: nodes nothing can demand never run, and are reported as warnings.

A node runs when an expression being evaluated reads it (the graph's `output:`, a node
that runs, a loop's `until:` or `output:`), or when it is speculative; a loop's body is
judged against what its own `until:` and `output:` read, and the body nodes it reads as
`prev.X` (every cycle another may follow demands them: `CompiledLoop.prev_reads`).
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.graph.compiled import Scope

__all__ = ["undemanded"]


def undemanded(
    scope: Scope, wanted: set[str], at: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """The nodes of `scope` and of its loop bodies that neither `wanted` nor a speculative
    node demands, in order, each with where it stands (`at`: where `scope`'s nodes do)."""
    demanded: set[str] = set()
    stack = [n for n in wanted if n in scope.nodes]
    stack += [n for n in scope.speculative]
    while stack:
        nid = stack.pop()
        if nid in demanded:
            continue
        demanded.add(nid)
        stack.extend(d for d in scope.nodes[nid].deps if d in scope.nodes)
    for nid in scope.order:
        node = scope.nodes[nid]
        if nid not in demanded:
            yield (*at, nid), nid
        if node.loop is not None:
            loop = node.loop
            inner = {
                *(loop.until.names if loop.until else ()),
                *(n for e in loop.output.values() for n in e.names),
            }
            if loop.max_cycles > 1:  # (a single cycle has no next one to read them)
                inner |= loop.prev_reads
            yield from undemanded(loop.body, inner, (*at, nid, "nodes"))
