"""Random graphs with several loops whose body nodes share names, for the scheduler's tests.

`graphs()` draws graphs of `work` nodes (`tests.support.sched_nodes.Work`) with two or
three loops at the top level, in sequence (a later loop reads an earlier one's output) or
side by side (the request's output demands them together), sometimes a loop nested in a
body, and body nodes whose ids repeat across loops (`step`, `check`, ...) or repeat an
outer node's id (a body node then hides the outer one from the body's expressions, as
the checker resolves names: innermost scope first). Loop ids are unique in the graph, so
a loop's events and `CYCLE_SUMMARY` traces name one loop; body ids are not, as the store
records only the bare id. `tests.support.loop_reference` judges a run of one.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.support.loop_reference import NodeSpec, expressions, graph_yaml, read, read_prev

__all__ = ["graphs"]

MS = st.sampled_from([0, 0, 2, 5, 10, 30])
BODY_NAMES = ("step", "check", "draft", "n0", "n1")
"""Body node ids: the same few in every loop, and two the top level uses too."""


def _expression(names: list[str], prevs: list[str]) -> st.SearchStrategy[str]:
    return expressions(names, prevs, shapes=("const", "sum", "sum", "cond"))


@st.composite
def _work(
    draw: st.DrawFn, node_id: str, earlier: list[str], prevs: list[str], in_loop: bool
) -> NodeSpec:
    spec = NodeSpec(node_id, ms=draw(MS), optional=draw(st.booleans()))
    spec.value = draw(_expression(earlier, prevs))
    guard = draw(st.sampled_from(["none", "none", "none", "node", "prev", "cycle"]))
    if guard == "node" and earlier:
        spec.when = f"{read(draw(st.sampled_from(earlier)))} % 3 != {draw(st.integers(0, 2))}"
    elif guard == "prev" and prevs:
        spec.when = f"{read_prev(draw(st.sampled_from(prevs)))} % 2 == {draw(st.integers(0, 1))}"
    elif guard == "cycle" and in_loop:
        spec.when = f"cycle % 2 == {draw(st.integers(0, 1))}"
    strategy = draw(st.sampled_from(["no", "no", "no", "yes", "late", "cycle"]))
    if strategy == "yes":
        spec.speculative = "true"
    elif strategy == "late" and earlier:
        spec.speculative = f"{read(draw(st.sampled_from(earlier)))} % 2 == 0"
    elif strategy == "cycle" and in_loop:
        spec.speculative = "cycle % 2 == 1"
    failure = draw(st.integers(0, 11))
    if failure == 0:
        spec.fail = "error"
    elif failure == 1 and in_loop:
        spec.fail = f"{{{{ 'error' if cycle == {draw(st.integers(1, 3))} else none }}}}"
    return spec


@st.composite
def _loop(draw: st.DrawFn, loop_id: str, outer: list[str], depth: int) -> NodeSpec:
    """A loop reading `outer` names, its body ids from `BODY_NAMES` (a nested loop while
    `depth` allows)."""
    ids = draw(st.lists(st.sampled_from(BODY_NAMES), min_size=1, max_size=3, unique=True))
    nested = depth > 0 and draw(st.integers(0, 3)) == 0
    if nested:
        ids.append(f"{loop_id}_in")
    body: list[NodeSpec] = []
    for i, node_id in enumerate(ids):
        # what a body node's expressions can read: the outer names its body does not
        # hide, and the body nodes before it
        earlier = [n for n in outer if n not in ids] + ids[:i]
        if node_id.endswith("_in"):
            body.append(draw(_loop(node_id, earlier, depth - 1)))
        else:
            body.append(draw(_work(node_id, earlier, ids, True)))
    spec = NodeSpec(loop_id, body=body, max_cycles=draw(st.integers(1, 4)))
    spec.speculative = draw(st.sampled_from([None, None, "true"]))
    spec.optional = draw(st.integers(0, 3)) == 0
    if draw(st.booleans()):
        spec.until = f"{draw(_expression(ids, ids))} % 3 == 0"
    spec.output = draw(_expression(ids, ids))
    if draw(st.integers(0, 5)) == 0:
        spec.timeout_ms = draw(st.sampled_from([15, 40]))
    return spec


@st.composite
def graphs(draw: st.DrawFn) -> str:
    """A graph's YAML: a few top-level nodes and two or three loops (see module docstring)."""
    top: list[NodeSpec] = []
    names: list[str] = []
    plain = draw(st.lists(st.sampled_from(["n0", "n1", "step"]), max_size=2, unique=True))
    for node_id in plain:
        top.append(draw(_work(node_id, list(names), [], False)))
        names.append(node_id)
    loops = ["la", "lb", "lc"][: draw(st.integers(2, 3))]
    sequence = draw(st.booleans())  # a later loop reads the earlier ones
    for loop_id in loops:
        outer = names if sequence else [n for n in names if n not in loops]
        top.append(draw(_loop(loop_id, outer, 1)))
        names.append(loop_id)
    demanded = loops[-1:] if sequence and draw(st.booleans()) else loops
    outputs = [draw(_expression(demanded, [])) for _ in range(draw(st.integers(1, 2)))]
    outputs.append(" + ".join(read(n) for n in demanded))  # demanded together
    return graph_yaml("several-loops", top, outputs)
