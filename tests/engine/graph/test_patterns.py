"""Regexes users write into schemas never stall the process: a pattern whose backtracking
can grow faster than the text is refused at `moat check` and at load, located, with the fix.

Timings follow tests/engine/test_regex_linear.py: CPU time, the best of several rounds, and
bounds far from what a linear pattern takes, so a busy machine does not make them flaky.
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import SpecError
from engine.api import Pipeline
from engine.graph.loader import check_text, load_graph_text
from engine.graph.patterns import pattern_problem, schema_patterns

NESTED = [r"^(a+)+$", r"(a*)*", r"^(\w+\s?)*$", r"^(\d{1,3}\.?)*$", r"^(ab?|b)*$", r"^(\w+\s?){2}$"]
ALTERNATIVES = [r"^(a|a)*$", r"^(a|ab)*$", r"^(a|b|ab)*$", r"^(\w|\d\d)+$", r"^(\w+|\d+)*$"]
EMPTY = [r"^(a?)*$", r"^(a?b?)*$", r"^(a|a?)+$", r"^(a?){30}$", r"^(a*?)*$"]
ADJACENT = [r"^\d+\d+$", r"^.*.*x$", r"^\d+\d\d+$", r"^\d+,?\d+$", r"^(ab)*(ab)*$", r"^\d+(?>\d+)x"]
UNANCHORED = [
    r"\d+x",
    r".*.*x",
    r"[a-z]+@",
    r"\d++x",
    r"(?=.*\d)",
    r"([a-z]+)\s\1",
    r"(?:a|\s++){2}",
]

SAFE = [
    r"^[A-Z]{3}-\d{4}$",
    r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$",
    r"^\d+(\.\d+)?$",
    r"^(yes|no)$",
    r"^[a-z]+(-[a-z]+)*$",  # the `-` forces the split between iterations
    r"^([a-z]+-)*[a-z]+$",
    r"^\w+( \w+)*$",
    r"^[a-z0-9]{1,63}(\.[a-z0-9]{1,63})*$",
    r"^(\d{1,3}\.){3}\d{1,3}$",
    r"^(?=.*\d)(?=.*[a-z]).{8,}$",
    r"^(ab|ac)*$",
    r"^\+?\d{7,15}$",
    r"^\S+$",
    r"[a-z]+",  # matches at once wherever it starts: nothing after it can fail
    r"\b\w+\b",
    r"(?<!\d)\d+x",  # starts inside a run of digits fail at once
    r"^(?>a+)+$",  # atomic and possessive repeats are never backtracked into
    r"^(a++)+$",
    r"^\d++\d+x",
    r"^(\w|\d)+$",  # re turns alternatives of single characters into one class, [\w\d]
]


@pytest.mark.parametrize("pattern", NESTED)
def test_a_repeat_inside_a_repeat_that_can_split_the_same_text_is_refused(pattern: str) -> None:
    assert re.match(r"can take exponential time: a repeat inside a repeat", _problem(pattern))
    assert "possessive ('a++', 'a*+') or atomic ('(?>a+)')" in _problem(pattern)


@pytest.mark.parametrize("pattern", ALTERNATIVES)
def test_a_repeated_alternation_whose_branches_match_the_same_text_is_refused(
    pattern: str,
) -> None:
    assert re.match(r"can take exponential time: (alternatives|a repeat inside)", _problem(pattern))


@pytest.mark.parametrize("pattern", EMPTY)
def test_a_repeated_group_that_can_match_nothing_is_refused(pattern: str) -> None:
    # (or, where a part of the group is optional, as a repeat inside a repeat)
    assert _problem(pattern).startswith("can take exponential time: a repeat")


@pytest.mark.parametrize("pattern", ADJACENT)
def test_adjacent_unbounded_repeats_over_the_same_characters_are_refused(pattern: str) -> None:
    assert _problem(pattern).startswith("can take quadratic time or worse: two unbounded")


@pytest.mark.parametrize("pattern", UNANCHORED)
def test_an_unanchored_pattern_re_reading_a_run_from_every_start_is_refused(pattern: str) -> None:
    assert "it is not anchored, so it is tried at every position" in _problem(pattern)
    assert "anchor it with '^'" in _problem(pattern)


@pytest.mark.parametrize("pattern", SAFE)
def test_common_safe_patterns_are_accepted(pattern: str) -> None:
    assert pattern_problem(pattern) is None


def test_a_pattern_that_does_not_compile_says_why() -> None:
    assert pattern_problem("(a") == (
        "is not a valid regular expression: missing ), unterminated subpattern at position 0"
    )


def test_only_schema_positions_hold_patterns() -> None:
    schema = {
        "properties": {
            "pattern": {"type": "string", "pattern": "^a$"},
            "tags": {"items": {"pattern": "^b$"}, "default": {"pattern": "(a+)+"}},
        },
        "patternProperties": {"^x-": {"pattern": "^c$"}},
        "anyOf": [{"pattern": "^d$"}],
        "enum": [{"pattern": "(a+)+"}],
    }
    assert sorted(schema_patterns(schema, ("input",))) == [
        (("input", "anyOf", 0, "pattern"), "^d$", False),
        (("input", "patternProperties", "^x-"), "^x-", True),
        (("input", "patternProperties", "^x-", "pattern"), "^c$", False),
        (("input", "properties", "pattern", "pattern"), "^a$", False),
        (("input", "properties", "tags", "items", "pattern"), "^b$", False),
    ]


# -- located errors -------------------------------------------------------------------------

HEADER = """\
moat: 1
name: t
models:
  small: {provider: sim, profile: small}
"""


def _errors(body: str) -> list[str]:
    report = check_text(HEADER + textwrap.dedent(body), "case.yaml")
    return [str(e) for e in report.errors]


def test_an_input_pattern_is_refused_at_its_line_with_the_fix() -> None:
    errors = _errors(
        """\
        input:
          type: object
          properties:
            prompt: {type: string, pattern: "^(a+)+$"}
        nodes: {}
        output: {p: input.prompt}
        """
    )
    assert errors == [
        "case.yaml:8:37: input.properties.prompt.pattern: pattern '^(a+)+$' can take "
        "exponential time: a repeat inside a repeat can split a run of 'a' between its "
        "iterations in exponentially many ways; make the inner repeat possessive ('a++', "
        "'a*+') or atomic ('(?>a+)'), or start each iteration with a character the inner "
        "repeat cannot match (like the '-' of '^[a-z]+(-[a-z]+)*$')"
    ]


def test_a_pattern_properties_key_is_located_at_the_key() -> None:
    errors = _errors(
        """\
        input:
          type: object
          patternProperties:
            "\\\\d+\\\\d+$": {type: string}
        nodes: {}
        output: {p: input}
        """
    )
    assert len(errors) == 1
    assert errors[0].startswith(
        "case.yaml:8:5: input.patternProperties.\\d+\\d+$: pattern '\\\\d+\\\\d+$' can take "
        "quadratic time"
    )


def test_a_pattern_that_does_not_compile_is_a_located_error() -> None:
    errors = _errors(
        """\
        input:
          type: object
          properties: {code: {type: string, pattern: "^[A-Z"}}
        nodes: {}
        output: {c: input.code}
        """
    )
    assert errors == [
        "case.yaml:7:46: input.properties.code.pattern: pattern '^[A-Z' is not a valid "
        "regular expression: unterminated character set at position 1"
    ]


def test_a_validate_nodes_schema_pattern_is_refused_at_the_node() -> None:
    errors = _errors(
        """\
        nodes:
          check:
            type: validate
            with:
              text: '{"id": "x"}'
              schema:
                type: object
                properties:
                  id: {type: string, pattern: "^(a|ab)*$"}
        output: {ok: check.valid}
        """
    )
    assert len(errors) == 1
    assert errors[0].startswith(
        "case.yaml:13:39: node 'check': with.schema.properties.id.pattern: pattern "
        "'^(a|ab)*$' can take exponential time: alternatives of a repeated group"
    )


def test_loading_refuses_what_check_refuses() -> None:
    text = HEADER + "input: {type: string, pattern: '^(\\w+\\s?)*$'}\nnodes: {}\noutput: {}\n"
    with pytest.raises(SpecError, match=r"^<string>:5:32: input.pattern: pattern .* exponential"):
        load_graph_text(text)


def test_moat_check_exits_2_on_a_refused_pattern(tmp_path: Path) -> None:
    from engine.cli import main

    graph = tmp_path / "g.yaml"
    graph.write_text(HEADER + "input: {type: string, pattern: '.*.*x'}\nnodes: {}\noutput: {}\n")
    assert main(["check", str(graph)]) == 2


@pytest.mark.anyio
async def test_a_validate_schema_known_only_at_run_time_is_checked_when_used() -> None:
    from nodes.validate import ValidateNode

    config = ValidateNode.Config.model_validate(
        {"text": '"a"', "schema": {"type": "string", "pattern": "^(a+)+$"}}
    )
    with pytest.raises(Exception, match=r"with\.schema\.pattern: pattern '\^\(a\+\)\+\$' can take"):
        await ValidateNode().run(config, None)  # type: ignore[arg-type]


# -- end to end, and the property ------------------------------------------------------------

GRAPH = """\
moat: 1
name: guarded
input:
  type: object
  required: [prompt]
  properties:
    prompt: {type: string, pattern: "^[a-z]+(-[a-z]+)*$"}
    code: {type: string, pattern: "^[A-Z]{3}-\\\\d{4}$"}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""


@pytest.mark.anyio
async def test_an_accepted_pattern_answers_a_hostile_50kb_prompt_quickly() -> None:
    hostile = "a-" * 25_000 + "!"  # fails the pattern at its very last character
    async with Pipeline(load_graph_text(GRAPH), db=None) as pipe:
        t0 = time.process_time()
        refused = await pipe.run({"prompt": hostile, "code": "AAA-" + "1" * 50_000})
        cpu = time.process_time() - t0
        ok = await pipe.run({"prompt": "safe-words-only"})
    assert refused.status == "invalid_input"
    assert ok.status == "ok"
    assert cpu < 2.0  # a backtracking pattern takes minutes here; this one milliseconds


def _problem(pattern: str) -> str:
    problem = pattern_problem(pattern)
    assert problem is not None, f"{pattern!r} was accepted"
    return problem


ATOMS = ["a", "b", "-", r"\d", r"\w", r"\s", ".", "[ab]", "[^a]"]


def _patterns() -> st.SearchStrategy[str]:
    leaf = st.sampled_from(ATOMS)

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        quantifier = st.sampled_from(["", "?", "*", "+", "{2}", "{1,3}", "*?", "++"])
        group = st.builds(lambda x, q: f"(?:{x}){q}", inner, quantifier)
        sequence = st.builds("".join, st.lists(inner, min_size=2, max_size=3))
        branch = st.builds(lambda a, b, q: f"(?:{a}|{b}){q}", inner, inner, quantifier)
        repeated = st.builds(lambda x, q: f"{x}{q}", leaf, quantifier)
        return group | sequence | branch | repeated

    body = st.recursive(leaf, extend, max_leaves=5)
    start, end = st.sampled_from(["^", ""]), st.sampled_from(["$", "!", ""])
    return st.builds(lambda a, b, c: f"{a}{b}{c}", start, body, end)


def _cpu(pattern: re.Pattern[str], text: str) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        pattern.search(text)
        best = min(best, time.process_time() - t0)
    return best


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # timed: the same patterns every run; explore with more examples by hand
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_patterns(), st.sampled_from(["a", "ab", "1", "a1 ", "a-", " ", "aab", "-a"]))
def test_every_accepted_pattern_scales_about_linearly(pattern: str, unit: str) -> None:
    if pattern_problem(pattern) is not None:
        return
    compiled = re.compile(pattern)
    small, big = (unit * (4_000 // len(unit)) + "!", unit * (16_000 // len(unit)) + "!")
    t_small, t_big = _cpu(compiled, small), _cpu(compiled, big)
    # 4x the text: about 4x the work; a quadratic pattern takes 16x, and seconds
    assert t_big < 0.05 or t_big / max(t_small, 1e-4) < 9, (pattern, unit, t_small, t_big)
