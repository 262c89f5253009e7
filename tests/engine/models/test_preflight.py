"""A graph whose `openai` models could not be called is refused when its `Pipeline` is made:
a missing API key or an endpoint that is no http(s) URL, for the models a run can call."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Pipeline
from engine.cli import main
from engine.errors import SpecError
from engine.graph.spec import endpoint_problem

MODEL_NODE = 'answer: {type: model, with: {model: big, prompt: "{{ input.q }}"}}'


def _graph(tmp_path: Path, models: str, nodes: str = MODEL_NODE, extra: str = "") -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(
        "moat: 1\nname: k\n"
        f"models:\n{models}\n"
        f"{extra}"
        f"nodes:\n  {nodes}\n"
        "output: {text: answer.text}\n"
    )
    return path


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEAM_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_a_model_without_its_key_is_refused_naming_the_graph_model_variable_and_fix(
    tmp_path: Path,
) -> None:
    graph = _graph(tmp_path, "  big: {provider: openai, model: gpt-4o}")
    with pytest.raises(SpecError) as caught:
        Pipeline(graph, db=None)
    message = str(caught.value)
    assert message.startswith(f"{graph}: model 'big' (openai:gpt-4o) needs an API key")
    assert "the environment variable OPENAI_API_KEY is not set" in message
    assert "export OPENAI_API_KEY=" in message and "`api_key_env:` under `models.big`" in message
    assert "--model big=sim:large" in message


def test_the_variable_named_by_api_key_env_is_the_one_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    graph = _graph(tmp_path, "  big: {provider: openai, model: gpt-4o, api_key_env: TEAM_KEY}")
    with pytest.raises(SpecError, match="the environment variable TEAM_KEY is not set"):
        Pipeline(graph, db=None)
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    Pipeline(graph, db=None)


def test_models_on_one_variable_are_named_in_one_message(tmp_path: Path) -> None:
    models = "  big: {provider: openai, model: gpt-4o}\n  judge: {provider: openai, model: o3}"
    check = 'check: {type: model, with: {model: judge, prompt: "{{ answer.text }}"}}'
    nodes = f"{MODEL_NODE}\n  {check}"
    graph = _graph(tmp_path, models, nodes)
    with pytest.raises(
        SpecError,
        match=r"model 'big' \(openai:gpt-4o\), model 'judge' \(openai:o3\) need an API key",
    ):
        Pipeline(graph, db=None)


def test_a_self_hosted_endpoint_needs_no_key(tmp_path: Path) -> None:
    graph = _graph(
        tmp_path, "  big: {provider: openai, model: llama3, base_url: 'http://127.0.0.1:9/v1'}"
    )
    Pipeline(graph, db=None)  # not refused: nothing is called until a request comes


def test_a_declared_model_no_node_calls_is_not_checked(tmp_path: Path) -> None:
    models = "  big: {provider: sim, profile: small}\n  spare: {provider: openai, model: gpt-4o}"
    Pipeline(_graph(tmp_path, models), db=None)


def test_a_model_rebound_to_sim_needs_no_key_and_one_rebound_to_openai_does(
    tmp_path: Path,
) -> None:
    Pipeline(
        _graph(tmp_path, "  big: {provider: openai, model: gpt-4o}"),
        db=None,
        models={"big": "sim:small"},
    )
    graph = _graph(tmp_path, "  big: {provider: sim, profile: small}")
    with pytest.raises(
        SpecError,
        match=r"model 'big' \(openai:gpt-4o-mini, bound by --model big=openai:gpt-4o-mini\) "
        "needs an API key",
    ):
        Pipeline(graph, db=None, models={"big": "openai:gpt-4o-mini"})


def test_a_fallback_the_run_can_reach_is_checked(tmp_path: Path) -> None:
    models = (
        "  big: {provider: sim, profile: small, fallback: far}\n"
        "  far: {provider: openai, model: gpt-4o}"
    )
    with pytest.raises(SpecError, match=r"model 'far' \(openai:gpt-4o\) needs an API key"):
        Pipeline(_graph(tmp_path, models), db=None)


def test_a_model_in_a_loop_body_is_checked(tmp_path: Path) -> None:
    body = (
        "answer:\n    type: loop\n    max_cycles: 2\n    nodes:\n"
        "      ask: {type: model, with: {model: big, prompt: hi}}\n"
        "    output: {text: ask.text}"
    )
    graph = _graph(tmp_path, "  big: {provider: openai, model: gpt-4o}", body)
    with pytest.raises(SpecError, match="model 'big'"):
        Pipeline(graph, db=None)


def test_a_model_a_node_picks_at_run_time_is_left_to_the_call(tmp_path: Path) -> None:
    """The policy picks the model per request (and may be switched while a run goes on):
    which it will be is not known up front, so the graph is not refused for it."""
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nanswer_model: small\n")
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    node = 'answer: {type: model, with: {model: "{{ policy.answer_model }}", prompt: hi}}'
    Pipeline(_graph(tmp_path, models, node, extra=f"policy: {policy}\n"), db=None)


@pytest.mark.parametrize(
    "picks",
    [
        "{{ 'big' if input.hard else 'small' }}",
        "{{ 'small' if input.n < 3 else 'big' if input.n < 9 else 'small' }}",
        "{{ {'easy': 'small', 'hard': 'big'}[input.level] }}",
        "{{ ['small', 'big'][input.n] }}",
        "{{ input.hard and 'big' or 'small' }}",
        "{{ input.easy and 'small' or input.cheap and 'small' or 'big' }}",
    ],
)
def test_a_model_an_expression_can_pick_among_literals_is_checked_like_a_literal_one(
    tmp_path: Path, picks: str
) -> None:
    """Every value the expression can give is written in the graph: each is a model a run
    can call, so a key missing for one is known before any request, as for `model: big`."""
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    node = f'answer: {{type: model, with: {{model: "{picks}", prompt: hi}}}}'
    graph = _graph(tmp_path, models, node)
    with pytest.raises(SpecError) as caught:
        Pipeline(graph, db=None)
    message = str(caught.value)
    assert message.startswith(f"{graph}: model 'big' (openai:gpt-4o) needs an API key")
    assert "export OPENAI_API_KEY=" in message and "--model big=sim:large" in message


def test_an_endpoint_an_expression_can_pick_is_checked_like_a_literal_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "notaurl")
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    node = "answer: {type: model, with: {model: \"{{ 'big' if input.hard else 'small' }}\"}}"
    with pytest.raises(SpecError, match=r"model 'big' \(openai:gpt-4o\): its endpoint 'notaurl'"):
        Pipeline(_graph(tmp_path, models, node), db=None)


def test_a_model_in_a_loop_body_picked_by_an_expression_is_checked(tmp_path: Path) -> None:
    body = (
        "answer:\n    type: loop\n    max_cycles: 2\n    nodes:\n"
        "      ask: {type: model, with: {model: \"{{ 'big' if cycle > 1 else 'small' }}\", "
        "prompt: hi}}\n"
        "    output: {text: ask.text}"
    )
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    with pytest.raises(SpecError, match="model 'big' \\(openai:gpt-4o\\) needs an API key"):
        Pipeline(_graph(tmp_path, models, body), db=None)


def test_an_expression_that_can_also_give_a_run_time_value_is_left_to_the_call(
    tmp_path: Path,
) -> None:
    """`input.model or 'big'` may name any model the request asks for: which models the
    run calls is not known up front, so none of them is checked before it."""
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    node = "answer: {type: model, with: {model: \"{{ input.model or 'big' }}\", prompt: hi}}"
    Pipeline(_graph(tmp_path, models, node), db=None)


def test_an_expression_picking_only_models_that_can_be_called_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    models = "  small: {provider: sim, profile: small}\n  big: {provider: openai, model: gpt-4o}"
    node = "answer: {type: model, with: {model: \"{{ 'big' if input.hard else 'small' }}\"}}"
    Pipeline(_graph(tmp_path, models, node), db=None)


def test_an_endpoint_that_is_no_url_in_the_graph_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    graph = _graph(tmp_path, "  big: {provider: openai, model: gpt-4o, base_url: notaurl}")
    with pytest.raises(SpecError) as caught:
        Pipeline(graph, db=None)
    # (refused when the graph is read, at its line, as `moat check` refuses it)
    assert str(caught.value) == (
        f"{graph}:4:52: models.big.base_url: base_url 'notaurl' is not an absolute http:// "
        "or https:// URL: write the endpoint's whole URL, such as http://localhost:8000/v1"
    )
    assert main(["check", str(graph)]) == 2


def test_an_endpoint_that_is_no_url_in_the_environment_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "notaurl")
    graph = _graph(tmp_path, "  big: {provider: openai, model: gpt-4o}")
    with pytest.raises(
        SpecError,
        match=r"its endpoint 'notaurl' \(from the environment variable OPENAI_BASE_URL\) is "
        r"not an absolute http:// or https:// URL.*set OPENAI_BASE_URL to the endpoint's full URL",
    ):
        Pipeline(graph, db=None)
    # a rebinding to `openai` takes its endpoint from the variable too, and says so
    graph = _graph(tmp_path, "  big: {provider: sim, profile: small}")
    with pytest.raises(SpecError, match="from the environment variable OPENAI_BASE_URL"):
        Pipeline(graph, db=None, models={"big": "openai:gpt-4o"})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.openai.com/v1", None),
        ("http://127.0.0.1:8000/v1", None),
        ("HTTP://[::1]:8000/v1", None),
        (None, None),  # the client's default endpoint
        ("notaurl", "is not an absolute http:// or https:// URL"),
        ("127.0.0.1:8000/v1", "is not an absolute http:// or https:// URL"),
        ("ftp://host/v1", "is not an absolute http:// or https:// URL"),
        ("http:///v1", "names no host"),
        ("", "is empty"),
        ("http://host:port/v1", "is not a URL (Port could not be cast to integer value as 'port')"),
    ],
)
def test_endpoint_problems(url: str | None, problem: str | None) -> None:
    assert endpoint_problem(url) == problem
