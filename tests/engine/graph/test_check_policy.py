"""`moat check` and `moat run` judge a graph's own policy file exactly as `policy apply` does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.cli import main
from engine.graph.loader import check_file
from engine.store.store import Store

ROOT = Path(__file__).parents[3]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def baseline(tmp_path: Path, refuse_at: str) -> Path:
    """The shipped baseline graph with its policy's `risk.refuse_at` set to `refuse_at`."""
    (tmp_path / "graphs").mkdir()
    (tmp_path / "policies").mkdir()
    shutil.copy(ROOT / "graphs" / "baseline.yaml", tmp_path / "graphs" / "baseline.yaml")
    text = (ROOT / "policies" / "baseline.yaml").read_text()
    assert "refuse_at: 0.8" in text
    (tmp_path / "policies" / "baseline.yaml").write_text(
        text.replace("refuse_at: 0.8", f"refuse_at: {refuse_at}")
    )
    return tmp_path / "graphs" / "baseline.yaml"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '"high"',
            "'high' does not fit graph 'baseline' node 'risk' (critic) field "
            "'refuse_at': Input should be a number",
        ),
        (
            "7",
            "7 does not fit graph 'baseline' node 'risk' (critic) field 'refuse_at': "
            "Input should be less than or equal to 1",
        ),
    ],
)
def test_check_refuses_a_policy_value_its_graph_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, expected: str
) -> None:
    graph = baseline(tmp_path, value)
    policy = graph.parent.parent / "policies" / "baseline.yaml"
    assert main(["check", str(graph)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # Located in the policy file, at the value, naming the key and what the field expects.
    assert f"error: {policy}:4:14: policy.risk.refuse_at = {expected}" in err
    assert "internal error" not in err


def test_check_and_apply_give_the_same_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = baseline(tmp_path, '"high"')
    monkeypatch.chdir(tmp_path)
    report = check_file(graph)
    assert [e.reason for e in report.errors] and report.graph is None
    db = str(tmp_path / "moat.db")
    code = main(["policy", "apply", "policies/baseline.yaml", "--graph", str(graph), "--db", db])
    _, err = capsys.readouterr()
    assert code == 2
    # apply refuses because the graph does not load, with the same located reason.
    assert report.errors[0].reason in err


def test_run_refuses_the_graph_before_creating_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = baseline(tmp_path, '"high"')
    db = tmp_path / "moat.db"
    code = main(["run", str(graph), "--prompt", "hello", "--db", str(db), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "policy.risk.refuse_at = 'high' does not fit" in err
    if db.exists():
        with Store.open(db, readonly=True) as store:
            assert store.list_runs() == []
            assert store.list_policies() == []


def test_a_policy_that_fits_still_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = baseline(tmp_path, "0.6")
    assert main(["check", str(graph)]) == 0
    assert "ok (baseline" in capsys.readouterr().out


POLICY_GATED = """\
moat: 1
name: gated
models:
  small: {provider: sim, profile: small}
policy: policy.yaml
nodes:
  answer:
    type: model
    when: policy.gate.min_len > 3
    with: {model: small, prompt: "{{ input.prompt }}"}
output:
  text: answer.text
"""


def test_an_expression_reading_only_the_policy_is_tried_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "gated.yaml"
    graph.write_text(POLICY_GATED)
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: gated\ngate:\n  min_len: many\n")
    assert main(["check", str(graph)]) == 2
    err = capsys.readouterr().err
    assert f"error: {policy}:3:12: graph 'gated' (node 'answer') reads policy.gate.min_len" in err
    assert "'>' not supported between instances of string and number" in err
    policy.write_text("name: gated\ngate:\n  min_len: 5\n")
    assert main(["check", str(graph)]) == 0


def test_an_input_schema_that_is_not_json_schema_is_a_located_check_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "s.yaml"
    graph.write_text(
        "moat: 1\nname: s\nmodels:\n  small: {provider: sim, profile: small}\n"
        "input:\n  type: object\n  properties:\n    prompt: {type: strin}\n"
        "nodes:\n  a: {type: model, with: {model: small, prompt: '{{ input.prompt }}'}}\n"
        "output:\n  t: a.text\n"
    )
    assert main(["check", str(graph)]) == 2
    err = capsys.readouterr().err
    assert f"error: {graph}:8:20: input.properties.prompt.type: 'strin' is not valid" in err
    db = tmp_path / "moat.db"
    assert main(["run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet"]) == 2
    assert "internal error" not in capsys.readouterr().err


SHARES = "name: gated\ngate:\n  total: 10\n  parts: 0\n  used: 4\n  spare: 4\n"


def dividing(tmp_path: Path, when: str, prompt: str = "{{ input.prompt }}") -> tuple[Path, Path]:
    """The gated graph guarded by `when`, and a policy whose `gate.parts` is 0."""
    graph = tmp_path / "gated.yaml"
    graph.write_text(
        POLICY_GATED.replace("policy.gate.min_len > 3", when).replace("{{ input.prompt }}", prompt)
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(SHARES)
    return graph, policy


@pytest.mark.parametrize(
    ("when", "at", "message"),
    [
        (
            "policy.gate.total / policy.gate.parts > 3",
            "4:10",
            "divides by 'policy.gate.parts' in expression 'policy.gate.total / "
            "policy.gate.parts > 3', which is 0: division by zero for every request; give "
            "policy.gate.parts a value other than 0",
        ),
        (
            "policy.gate.total // (policy.gate.used - policy.gate.spare) > 3",
            "5:9",
            "divides by 'policy.gate.used - policy.gate.spare' in expression "
            "'policy.gate.total // (policy.gate.used - policy.gate.spare) > 3', which is 0 "
            "with policy.gate.used = 4, policy.gate.spare = 4: division by zero for every "
            "request; change these values so that it is not 0",
        ),
        (
            "policy.gate.total % 0 > 3",
            "3:10",
            "divides by '0' in expression 'policy.gate.total % 0 > 3', which is always 0; "
            "change the expression in {graph}",
        ),
    ],
)
def test_a_division_by_zero_is_located_at_the_key_that_made_the_divisor_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], when: str, at: str, message: str
) -> None:
    graph, policy = dividing(tmp_path, when)
    expected = f"{policy}:{at}: graph 'gated' (node 'answer') {message.format(graph=graph)}\n"

    assert main(["check", str(graph)]) == 2
    assert capsys.readouterr().err == f"error: {expected}"

    db = tmp_path / "moat.db"
    assert main(["policy", "apply", str(policy), "--graph", str(graph), "--db", str(db)]) == 2
    assert capsys.readouterr().err == f"moat: {expected}"
    assert not db.exists()


def test_a_zero_divisor_in_a_with_template_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, policy = dividing(
        tmp_path,
        "policy.gate.total > 3",
        "{{ policy.gate.total }} of {{ 60 // policy.gate.parts }}",
    )

    assert main(["check", str(graph)]) == 2

    assert capsys.readouterr().err == (
        f"error: {policy}:4:10: graph 'gated' (node 'answer') divides by 'policy.gate.parts' in "
        "expression '60 // policy.gate.parts', which is 0: division by zero for every request; "
        "give policy.gate.parts a value other than 0\n"
    )
    policy.write_text(SHARES.replace("parts: 0", "parts: 6"))
    assert main(["check", str(graph)]) == 0
