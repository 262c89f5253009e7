"""The checker finds every mistake before anything runs, located and with a fix."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import SpecError
from engine.graph.check import MAX_CHAIN
from engine.graph.loader import check_text, load_graph_text
from tests.support.graph_nodes import registry
from tests.support.sched_nodes import run

DATA = Path(__file__).parents[2] / "data"
HEADER = """\
moat: 1
name: t
models:
  small: {provider: sim, profile: small}
policy: policy.yaml
"""
# Node definitions start at line 7 ("nodes:" is line 6).


def check(body: str, header: str = HEADER) -> list[str]:
    text = header + textwrap.dedent(body)
    report = check_text(text, "case.yaml", registry=registry(), base_dir=DATA)
    return [str(e) for e in report.errors]


BROKEN = [
    (
        "a soft deadline at or after the hard one",
        """\
budget: {soft_deadline_ms: 5000, deadline_ms: 5000}
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:6:9: budget: soft_deadline_ms \(5000\) must come before deadline_ms "
        r"\(5000\): .*; make it smaller$",
    ),
    (
        "unknown type",
        """\
nodes:
  check:
    type: reveiw
output:
  a: check.action
""",
        r"^case\.yaml:8:11: node 'check': unknown node type 'reveiw' \(did you mean 'review'\?\)"
        r"\. Registered types: count, echo, loop, review",
    ),
    (
        "unknown node in output",
        """\
nodes:
  check: {type: review}
output:
  a: chek.action
""",
        r"^case\.yaml:9:6: unknown name 'chek' \(did you mean 'check'\?\)",
    ),
    (
        "unknown output field",
        """\
nodes:
  check: {type: review}
output:
  a: check.actoin
""",
        r"^case\.yaml:9:6: 'check\.actoin' is not an output of node 'check' \(review\) "
        r"\(did you mean 'action'\?\)\. Outputs: action, hard, rationale, score, violations",
    ),
    (
        "unknown policy key",
        """\
nodes:
  check:
    type: review
    when: policy.router.treshold > 0.1
output:
  a: check.action
""",
        r"^case\.yaml:9:11: node 'check': 'policy\.router\.treshold' is not in the policy "
        r"policy\.yaml \(did you mean 'threshold'\?\)",
    ),
    (
        "cycle between nodes",
        """\
nodes:
  a: {type: echo, with: {text: "{{ b.text }}"}}
  b: {type: echo, with: {text: "{{ a.text }}"}}
output:
  x: a.text
""",
        r"^case\.yaml:7:3: node 'a': dependency cycle: a -> b -> a",
    ),
    (
        "node guarding on itself",
        """\
nodes:
  a:
    type: review
    when: a.score > 0.5
output:
  x: a.action
""",
        r"^case\.yaml:7:3: node 'a': dependency cycle: a -> a",
    ),
    (
        "loop without max_cycles",
        """\
nodes:
  deliberate:
    type: loop
    nodes:
      c: {type: review}
    output: {action: c.action}
output:
  x: deliberate.action
""",
        r"^case\.yaml:7:3: node 'deliberate': missing required key 'max_cycles'",
    ),
    (
        "invalid node id",
        """\
nodes:
  Check: {type: review}
output:
  a: Check.action
""",
        r"^case\.yaml:7:3: node 'Check': invalid node id 'Check'.*e\.g\. 'check'",
    ),
    (
        "unknown top-level key",
        """\
nodes:
  check: {type: review}
ouput:
  a: check.action
""",
        r"^case\.yaml:8:1: unknown key 'ouput' at the top level \(did you mean 'output'\?\)",
    ),
    (
        "config out of range",
        """\
nodes:
  check:
    type: review
    with: {threshold: 2}
output:
  a: check.action
""",
        r"^case\.yaml:9:23: node 'check': with\.threshold: Input should be less than or equal "
        r"to 1, got a number \(2\) \(type 'review'; see `moat nodes review`\)",
    ),
    (
        "unknown config key",
        """\
nodes:
  check:
    type: review
    with: {treshold: 0.3}
output:
  a: check.action
""",
        r"^case\.yaml:9:12: node 'check': unknown config key 'treshold' for type 'review' "
        r"\(did you mean 'threshold'\?\)",
    ),
    (
        "missing config key",
        """\
nodes:
  n: {type: count}
output:
  a: n.n
""",
        r"^case\.yaml:7:6: node 'n': with\.n: Field required",
    ),
    (
        "unknown model",
        """\
nodes:
  check:
    type: review
    with: {model: large}
output:
  a: check.action
""",
        r"^case\.yaml:9:19: node 'check': model 'large' is not defined under `models:`\. "
        r"Defined: small",
    ),
    (
        "unknown model by default",
        """\
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"node 'check': model 'small' \(the default of `model`\) is not defined",
    ),
    (
        "unimportable plugin",
        """\
plugins: [no_such_module_xyz]
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:6:11: plugin module 'no_such_module_xyz' could not be imported",
    ),
    (
        "plugin node with a config that is not fully defined",
        """\
plugins: [tests.support.broken_nodes]
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:6:11: tests\.support\.broken_nodes\.Unfinished\.Config "
        r"is not fully defined \(name "
        r"'Settings' is not defined\); define or import what it names before the node class",
    ),
    (
        "duplicate node id",
        """\
nodes:
  check: {type: review}
  check: {type: echo}
output:
  a: check.action
""",
        r"^case\.yaml:8:3: duplicate key 'check' \(first defined at line 7\)",
    ),
    (
        "unset environment variable",
        """\
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"environment variable MOAT_TEST_UNSET_VAR is not set; set it or write "
        r"\$\{MOAT_TEST_UNSET_VAR:-default\}",
    ),
    (
        "expression syntax error",
        """\
nodes:
  check:
    type: review
    when: "check2.score >"
  check2: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:9:\d+: node 'check': in expression 'check2\.score >'",
    ),
    (
        "call outside the whitelist",
        """\
nodes:
  check: {type: review}
output:
  a: open('x')
""",
        r"^case\.yaml:9:\d+: in expression \"open\('x'\)\"",
    ),
    (
        "dunder attribute",
        """\
nodes:
  check: {type: review}
output:
  a: check.__class__
""",
        r"^case\.yaml:9:\d+: in expression 'check\.__class__'",
    ),
    (
        "lambda",
        """\
nodes:
  check: {type: review}
output:
  a: "(lambda: 1)()"
""",
        r"^case\.yaml:9:\d+: in expression '\(lambda: 1\)\(\)'",
    ),
    (
        "unknown request field",
        """\
nodes:
  check:
    type: review
    when: request.tenatn == 'a'
output:
  a: check.action
""",
        r"^case\.yaml:9:11: node 'check': 'request\.tenatn' is not a request field "
        r"\(did you mean 'tenant'\?\)",
    ),
    (
        "prev outside a loop",
        """\
nodes:
  check:
    type: review
    when: prev.check.hard
output:
  a: check.action
""",
        r"^case\.yaml:9:11: node 'check': `prev` is only defined inside a loop body",
    ),
    (
        "prev of an unknown body node",
        """\
nodes:
  deliberate:
    type: loop
    max_cycles: 3
    until: prev.critc.hard
    nodes:
      critic: {type: review}
    output: {action: critic.action}
output:
  x: deliberate.action
""",
        r"^case\.yaml:10:12: node 'deliberate': 'prev\.critc': 'critc' is not a node of this "
        r"loop body \(did you mean 'critic'\?\)",
    ),
    (
        "prev of a body node's unknown output",
        """\
nodes:
  deliberate:
    type: loop
    max_cycles: 3
    until: prev.critic.hrad
    nodes:
      critic: {type: review}
    output: {action: critic.action}
output:
  x: deliberate.action
""",
        r"^case\.yaml:10:12: node 'deliberate': 'prev\.critic\.hrad' is not an output of "
        r"node 'critic' \(review\) \(did you mean 'hard'\?\)",
    ),
    (
        "cycle outside a loop",
        """\
nodes:
  check: {type: review, when: cycle > 1}
output:
  a: check.action
""",
        r"^case\.yaml:7:31: node 'check': unknown name 'cycle'",
    ),
    (
        "wrong format version",
        """\
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:1:7: moat: Input should be 1",
    ),
    (
        "nodes is a list",
        """\
nodes: [a, b]
output:
  a: a.text
""",
        r"^case\.yaml:6:8: nodes: Input should be a mapping, got a list \(\['a', 'b'\]\)",
    ),
    (
        "reserved node id",
        """\
nodes:
  input: {type: echo}
output:
  a: input.text
""",
        r"^case\.yaml:7:3: node 'input': node id 'input' is a reserved name",
    ),
    (
        "node id that expressions read as none",
        """\
nodes:
  none: {type: echo}
output:
  a: none.text
""",
        r"^case\.yaml:7:3: node 'none': node id 'none' is a reserved name in expressions",
    ),
    (
        "node id that is a Python keyword",
        """\
nodes:
  class: {type: echo}
output:
  a: class.text
""",
        r"^case\.yaml:7:3: node 'class': node id 'class' is a Python keyword, which expressions "
        r"cannot read; rename the node \(e\.g\. 'class_'\)",
    ),
    (
        "output without an expression",
        """\
nodes:
  check: {type: review}
output:
  action: check.action
  answer:
""",
        r"^case\.yaml:10:3: output 'answer' has no expression; write one such as 'node\.text', "
        r"or 'none' for an output that is always none",
    ),
    (
        "unknown name deep in with",
        """\
nodes:
  a:
    type: echo
    with:
      value:
        note: "Q: {{ chek.text }}"
  check: {type: echo}
output:
  x: a.value
""",
        r"^case\.yaml:11:22: node 'a': unknown name 'chek' \(did you mean 'check'\?\)",
    ),
    (
        "with value that cannot evaluate",
        """\
nodes:
  a: {type: echo, with: {value: {n: "{{ 1 / 0 }}"}}}
output:
  x: a.value
""",
        r"^case\.yaml:7:33: node 'a': with\.value: template value 'n': expression '1 / 0': "
        r"division by zero; it reads nothing, so every run of the node would fail",
    ),
    (
        "output that reads nothing and cannot evaluate",
        """\
nodes:
  check: {type: review}
output:
  a: check.action
  b: "'score: ' + 1"
""",
        r"^case\.yaml:10:6: expression \"'score: ' \+ 1\": cannot add a number to a string; "
        r"it reads nothing, so it fails the same way on every request; fix the expression$",
    ),
    (
        "guard that reads nothing and cannot evaluate",
        """\
nodes:
  check: {type: review, when: "len(5) > 0"}
output:
  a: check.action
""",
        r"^case\.yaml:7:31: node 'check': expression 'len\(5\) > 0': object of type number has "
        r"no len\(\); it reads nothing, so it fails the same way on every request",
    ),
    (
        "until that reads nothing and cannot evaluate",
        """\
nodes:
  again:
    type: loop
    max_cycles: 2
    until: "min([]) > 1"
    nodes:
      check: {type: review}
    output: {a: check.action}
output:
  a: again.a
""",
        r"^case\.yaml:10:12: node 'again': expression 'min\(\[\]\) > 1': min\(\) arg is an "
        r"empty sequence; it reads nothing, so it fails the same way on every request",
    ),
    (
        "missing policy file",
        """\
nodes:
  check: {type: review}
output:
  a: check.action
""",
        r"^case\.yaml:5:9: policy file 'nope\.yaml' not found",
    ),
    (
        "bad template in with",
        """\
nodes:
  a: {type: echo, with: {text: "hello {{ b. }}"}}
  b: {type: echo}
output:
  x: a.text
""",
        r"^case\.yaml:7:\d+: node 'a': in 'hello \{\{ b\. \}\}'",
    ),
    (
        "unknown loop output",
        """\
nodes:
  deliberate:
    type: loop
    max_cycles: 2
    nodes:
      critic: {type: review}
    output: {action: critic.action}
output:
  x: deliberate.verdict
""",
        r"^case\.yaml:14:6: 'deliberate\.verdict' is not an output of node 'deliberate' \(loop\)"
        r"\. Outputs: action",
    ),
    (
        "negative timeout",
        """\
nodes:
  check: {type: review, timeout_ms: -5}
output:
  a: check.action
""",
        r"^case\.yaml:7:37: node 'check': nodes\.check\.timeout_ms: Input should be greater than 0",
    ),
    (
        "missing type",
        """\
nodes:
  check: {with: {text: hi}}
output:
  a: check.action
""",
        r"^case\.yaml:7:3: node 'check': missing required key 'type'",
    ),
    (
        "speculative expression with unknown name",
        """\
nodes:
  check: {type: review, speculative: "risky and policy.router.threshold > 0"}
output:
  a: check.action
""",
        r"^case\.yaml:7:\d+: node 'check': unknown name 'risky'",
    ),
]

HEADERS = {
    "unknown model by default": HEADER.replace("small: {provider", "large: {provider"),
    "unset environment variable": HEADER.replace(
        "profile: small}", 'profile: small, base_url: "${MOAT_TEST_UNSET_VAR}"}'
    ),
    "wrong format version": HEADER.replace("moat: 1", "moat: 2"),
    "missing policy file": HEADER.replace("policy.yaml", "nope.yaml"),
}


def test_the_corpus_has_at_least_25_distinct_mistakes() -> None:
    assert len({name for name, _, _ in BROKEN}) >= 25


@pytest.mark.parametrize(("name", "body", "expected"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_graph_is_refused_with_a_located_message(
    name: str, body: str, expected: str
) -> None:
    errors = check(body, HEADERS.get(name, HEADER))
    assert errors, f"{name}: no error reported"
    assert any(re.search(expected, e) for e in errors), "\n".join(errors)


@pytest.mark.parametrize(
    ("section", "where", "allowed"),
    [
        ("models:\n  big: {provider: sim, api_key: k}\n", "models.big", "api_key_env, base_url"),
        ("models:\n  big: {provider: sim, price: {inp: 1, output: 1}}\n", "models.big.price",
         "input, output"),
        ("serve: {inptu: {}}\n", "serve", "input"),
        ("budget: {cost: 1}\n", "budget", "cost_usd, deadline_ms"),
    ],
    ids=["a model", "a model's price", "serve", "budget"],
)  # fmt: skip
def test_an_unknown_key_in_a_section_lists_that_sections_keys(
    section: str, where: str, allowed: str
) -> None:
    """Not the top level's: a section of a mapping of models, or one that may be left out,
    is read as what it is."""
    header = HEADER.replace("models:\n  small: {provider: sim, profile: small}\n", "")
    body = section + "nodes:\n  check: {type: review}\noutput:\n  a: check.action\n"
    (error,) = [e for e in check(body, header) if "unknown key" in e]
    assert f"at {where}" in error and f". Allowed: {allowed}" in error, error
    assert "nodes" not in error.split("Allowed:")[1]


def test_a_valid_graph_has_no_errors() -> None:
    errors = check("""\
nodes:
  check: {type: review, with: {threshold: "{{ policy.router.threshold }}"}}
  note: {type: echo, with: {text: "score {{ check.score }}"}, when: check.action != 'refuse'}
output:
  action: check.action
  note: note.text if note else none
""")
    assert errors == []


def test_a_graph_without_nodes_is_valid_and_answers_constants() -> None:
    assert (
        check("""\
nodes: {}
output:
  greeting: "'hello'"
""")
        == []
    )


def test_all_errors_of_a_file_are_reported_together() -> None:
    errors = check("""\
nodes:
  a: {type: reveiw}
  b: {type: echo, with: {txt: hi}}
output:
  x: c.text
""")
    assert len(errors) == 3


def test_undemanded_node_is_a_warning_not_an_error() -> None:
    report = check_text(
        HEADER
        + textwrap.dedent("""\
        nodes:
          used: {type: echo}
          idle: {type: echo}
        output:
          x: used.text
        """),
        "case.yaml",
        registry=registry(),
        base_dir=DATA,
    )
    assert report.ok
    assert len(report.warnings) == 1
    assert re.match(r"case\.yaml:8:3: node 'idle': nothing demands this node", report.warnings[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_a_located_error(data: bytes) -> None:
    report = check_text(data, "fuzz.yaml", registry=registry(), base_dir=DATA)
    for error in report.errors:
        assert isinstance(error, SpecError)
        assert str(error).startswith("fuzz.yaml")


_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "moat",
                    "name",
                    "nodes",
                    "output",
                    "type",
                    "with",
                    "when",
                    "a",
                    "b",
                    "loop",
                    "max_cycles",
                    "policy",
                    "models",
                    "budget",
                    "input",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_values)
def test_random_yaml_never_escapes_as_anything_but_a_located_error(value: object) -> None:
    import yaml

    text = yaml.safe_dump(value)
    report = check_text(text, "fuzz.yaml", registry=registry(), base_dir=DATA)
    for error in report.errors:
        assert isinstance(error, SpecError)
        assert str(error).startswith("fuzz.yaml")


INPUT = """\
input:
  type: object
  properties: {prompt: {type: string}, tenant: {type: string}}
"""


def test_reading_an_input_property_the_schema_does_not_list_is_a_warning() -> None:
    report = check_text(
        HEADER
        + INPUT
        + textwrap.dedent("""\
        nodes:
          a: {type: echo, with: {text: "{{ input.promt }}"}}
        output:
          x: a.text
          tenant: input.tenant
          history: input.history
        """),
        "case.yaml",
        registry=registry(),
        base_dir=DATA,
    )
    assert report.ok
    assert report.warnings == [
        "case.yaml:10:36: node 'a': 'input.promt' is not a property of `input:` (did you mean "
        "'prompt'?). Properties: prompt, tenant; a request without it reads none"
    ]


def test_reading_an_input_property_no_request_can_have_is_an_error() -> None:
    closed = INPUT.replace("  properties:", "  additionalProperties: false\n  properties:")
    assert check("nodes: {}\noutput:\n  x: input.history\n", HEADER + closed) == [
        "case.yaml:12:6: 'input.history' is not a property of `input:`. Properties: prompt, "
        "tenant; no request can have it"
    ]


@pytest.mark.parametrize(
    "schema",
    ["input: {type: object}", "input: {type: object, properties: {}, patternProperties: {}}"],
)
def test_a_schema_that_admits_any_property_warns_of_none(schema: str) -> None:
    report = check_text(
        HEADER + schema + "\nnodes: {}\noutput:\n  x: input.anything\n",
        "case.yaml",
        registry=registry(),
        base_dir=DATA,
    )
    assert report.ok and report.warnings == []


def test_a_broken_template_is_quoted_short_however_long_it_is() -> None:
    (error,) = check(f"""\
nodes:
  a: {{type: echo, with: {{text: "{"word " * 20_000}{{{{ b. }}}}"}}}}
  b: {{type: echo}}
output:
  x: a.text
""")
    assert len(error) < 500 and re.match(r"case\.yaml:7:\d+: node 'a': in 'word word", error)


def _chain(length: int) -> str:
    """Nodes each guarding on and reading the one before (the deepest way to run them)."""
    lines = ["nodes:", "  n0: {type: echo, with: {text: hi}}"]
    for i in range(1, length):
        lines.append(
            f"  n{i}: {{type: echo, when: n{i - 1}.text, timeout_ms: 5000, retries: 1, "
            f"with: {{text: '{{{{ n{i - 1}.text }}}}'}}}}"
        )
    return "\n".join([*lines, "output:", f"  x: n{length - 1}.text", ""])


def test_a_chain_too_long_to_run_is_refused_at_its_last_node() -> None:
    assert check(_chain(MAX_CHAIN + 1)) == [
        f"case.yaml:{7 + MAX_CHAIN}:3: node 'n{MAX_CHAIN}': a chain of {MAX_CHAIN + 1} nodes "
        f"each waiting for the one before (n0 -> n1 -> n2 -> ... -> n{MAX_CHAIN}) is longer "
        f"than the {MAX_CHAIN} moat runs; merge steps, or repeat one step with a loop"
    ]


@pytest.mark.anyio
async def test_the_longest_chain_allowed_runs() -> None:
    graph = load_graph_text(
        HEADER + _chain(MAX_CHAIN), "case.yaml", registry=registry(), base_dir=DATA
    )
    result, _ = await run(graph)
    assert (result.status.value, result.output) == ("ok", {"x": "hi"})


def test_moat_check_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("moat: 1\nname: x\nnodes:\n  a: {type: nosuchtype}\noutput: {x: a.text}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "check", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(r"bad\.yaml:4:13: node 'a': unknown node type 'nosuchtype'", proc.stderr)


def test_a_node_class_without_an_output_model_is_refused_when_registered() -> None:
    from pydantic import BaseModel

    from engine import Node, PluginError
    from engine.plugin.registry import Registry

    class NoOutput(Node):
        type_name = "no_output"

        class Config(BaseModel):
            pass

    with pytest.raises(PluginError, match=r"NoOutput needs a nested pydantic model `Output`"):
        Registry([NoOutput])


@pytest.mark.parametrize("key", ["output:\n  a", "output:\n  a: check.action\n  b"])
def test_braces_around_an_output_expression_say_to_drop_them(key: str) -> None:
    body = f"""\
nodes:
  check: {{type: review}}
{key}: "{{{{ check.action }}}}"
"""
    (error,) = check(body)
    assert "a template's `{{ }}` is not allowed" in error
    assert "take an expression, without braces: write 'check.action'" in error


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("check.__class__", "the attribute '__class__' (names starting with '_') is not allowed."
         " Such names reach Python's internals, never data; a key that starts with '_' is "
         "read by index: x['_key']."),
        ("_hidden", "the name '_hidden' (names starting with '_') is not allowed. Such names"),
        ("open(check.action)", "the function 'open' is not allowed. Functions: abs(x), "),
        ("check.action +", "cannot parse: invalid syntax. Allowed: "),
    ],
)  # fmt: skip
def test_an_expression_error_names_the_expression_once_and_says_what_to_do(
    expression: str, says: str
) -> None:
    body = f"nodes:\n  check: {{type: review}}\noutput:\n  a: {expression}\n"
    (error,) = check(body)
    assert error.count(f"expression '{expression}'") == 1, error
    assert f"in expression '{expression}': {says}" in error, error


def test_a_template_error_names_its_template_and_says_what_is_wrong_once() -> None:
    body = 'nodes:\n  check: {type: review, with: {threshold: "{{ x.__class__ }}"}}\n'
    (error,) = check(body + "output:\n  a: check.action\n")
    assert "in '{{ x.__class__ }}': the attribute '__class__' (names starting with '_') is " in (
        error
    )
    assert error.count("__class__") == 2, error  # the template, then the attribute
    assert "in template" not in error and "in expression" not in error, error


@pytest.mark.parametrize(
    ("section", "where", "got"),
    [
        ("output:\n  a: {x: 1}\n", "output.a", "a mapping ({x: 1})"),
        ("output:\n  a: [1, 2]\n", "output.a", "a list ([1, 2])"),
        (
            "  l:\n    type: loop\n    max_cycles: 2\n    nodes:\n      c: {type: review}\n"
            "    output: {t: [1]}\noutput:\n  a: l.t\n",
            "nodes.l.output.t",
            "a list ([1])",
        ),
    ],
    ids=["a mapping", "a list", "a loop's output"],
)
def test_an_output_no_kind_of_value_takes_is_one_error_saying_what_it_should_be(
    section: str, where: str, got: str
) -> None:
    """Not one error for each kind an output may be (pydantic tries every member)."""
    body = "nodes:\n  check: {type: review}\n" + section
    (error,) = check(body)
    assert f"got {got}; an output is an expression (such as `a.text`) or a constant" in error
    assert f"{where}: Input should be a string, true or false, a whole number or a number, " in (
        error
    )


def test_braces_around_a_when_expression_say_to_drop_them() -> None:
    body = """\
nodes:
  check: {type: review, when: "{{ input.prompt }}"}
output:
  a: check.action
"""
    (error,) = check(body)
    assert "node 'check'" in error and "write 'input.prompt'" in error


BOOLS = """\
moat: 1
name: t
models:
  small: {provider: sim, profile: small, max_concurrency: true, price: {input: false, output: 1}}
budget: {cost_usd: true, partial: true}
nodes:
  loop:
    type: loop
    max_cycles: true
    nodes:
      step: {type: echo, with: {value: true, delay_ms: false}, retries: true, optional: true}
    output: {v: step.value}
output:
  v: loop.v
"""


def test_true_and_false_are_no_numbers_in_any_number_field() -> None:
    # pydantic reads `max_cycles: true` as 1: each is refused where it stands, as a type error
    report = check_text(BOOLS, "case.yaml", registry=registry(), base_dir=DATA)
    assert [str(e) for e in report.errors] == [
        "case.yaml:4:80: models.small.price.input: Input should be a number, got false",
        "case.yaml:4:59: models.small.max_concurrency: Input should be a whole number, got true",
        "case.yaml:5:20: budget.cost_usd: Input should be a number, got true",
        "case.yaml:9:17: node 'loop': nodes.loop.max_cycles: Input should be a whole number, "
        "got true",
        "case.yaml:11:73: node 'step': nodes.loop.nodes.step.retries: Input should be a whole "
        "number, got true",
    ]
    fixed = re.sub(
        r"(max_concurrency|input|cost_usd|max_cycles|retries): (true|false)", r"\1: 1", BOOLS
    )
    assert check(fixed.split("nodes:\n", 1)[1], fixed.split("nodes:\n", 1)[0] + "nodes:\n") == [
        "case.yaml:11:56: node 'step': with.delay_ms: Input should be a number, got false "
        "(type 'echo'; see `moat nodes echo`)"
    ]
    with pytest.raises(SpecError, match=r"^case\.yaml:1:7: moat: Input should be a whole number"):
        load_graph_text(BOOLS.replace("moat: 1", "moat: true"), "case.yaml", registry=registry())


LAX = """\
moat: 1
name: t
models:
  small: {provider: sim, profile: small, max_concurrency: "4"}
budget: {cost_usd: "0.01", deadline_ms: "5000", partial: "on"}
nodes:
  step: {type: echo, optional: 1, retries: "2", timeout_ms: "100", with: {value: 1}}
output:
  v: step.value
"""


def test_quoted_numbers_and_yes_or_on_are_no_numbers_or_flags_in_the_graphs_own_keys() -> None:
    """What `moat schema` refuses, the checker refuses: a graph key that takes a number or
    true/false is not given one in quotes, nor `on`, `yes` or 1 for true."""
    report = check_text(LAX, "case.yaml", registry=registry(), base_dir=DATA)
    assert sorted(str(e) for e in report.errors) == [
        "case.yaml:4:59: models.small.max_concurrency: Input should be a whole number, got a "
        "string ('4')",
        "case.yaml:5:20: budget.cost_usd: Input should be a number, got a string ('0.01')",
        "case.yaml:5:41: budget.deadline_ms: Input should be a number, got a string ('5000')",
        "case.yaml:5:58: budget.partial: Input should be true or false, got a string ('on')",
        "case.yaml:7:32: node 'step': nodes.step.optional: Input should be true or false, got "
        "a number (1)",
        "case.yaml:7:44: node 'step': nodes.step.retries: Input should be a whole number, got "
        "a string ('2')",
        "case.yaml:7:61: node 'step': nodes.step.timeout_ms: Input should be a number, got a "
        "string ('100')",
    ]


def test_a_with_value_left_to_run_time_does_not_hide_a_bool_beside_it() -> None:
    errors = check("""\
        nodes:
          step: {type: review, with: {text: "{{ input.x }}", threshold: true}}
        output: {a: step.action}
        """)
    assert errors == [
        "case.yaml:7:65: node 'step': with.threshold: Input should be a number, got true "
        "(type 'review'; see `moat nodes review`)"
    ]


def test_an_environment_variable_fills_a_number_or_flag_of_a_model_typed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`${VAR}` in `models:` is the value the variable holds as if written there: a number
    where a number is taken; text that is no number is refused as written text would be."""
    header = HEADER.replace(
        "profile: small}",
        'profile: small, max_concurrency: "${MOAT_TEST_CONC}", '
        'remote: "${MOAT_TEST_REMOTE:-true}"}',
    )
    body = "nodes:\n  check: {type: review}\noutput:\n  a: check.action\n"
    monkeypatch.setenv("MOAT_TEST_CONC", "4")
    assert check(body, header) == []
    graph = load_graph_text(header + body, "case.yaml", registry=registry(), base_dir=DATA)
    assert (graph.models["small"].max_concurrency, graph.models["small"].remote) == (4, True)
    monkeypatch.setenv("MOAT_TEST_CONC", "four")
    (error,) = check(body, header)
    assert (
        "models.small.max_concurrency: Input should be a whole number, got a string ('four')"
        in error
    )
