"""The price table, and the refusal to run a cost budget on a model that has no price."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Pipeline
from engine.api import rebind_models
from engine.cli import main
from engine.errors import SpecError
from engine.graph.spec import ModelSpec, Price
from engine.models import PRICES, PRICES_AS_OF, Gateway, is_priced, table_price
from tests.support.fake_openai import FakeOpenAI

GRAPH = """\
moat: 1
name: unpriced
models:
  large: {{provider: openai, model: {model}, base_url: "{base_url}"{extra}}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
{budget}
nodes:
  answer:
    type: model
    with: {{model: large, prompt: "{{{{ input.prompt }}}}", max_tokens: 20}}
output: {{answer: answer.text}}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _graph(
    tmp_path: Path,
    fake: FakeOpenAI,
    *,
    model: str = "my-local-llama",
    extra: str = "",
    budget: str = "budget: {cost_usd: 0.01}",
) -> Path:
    path = tmp_path / "unpriced.yaml"
    base_url = fake.base_url("exact")
    path.write_text(GRAPH.format(model=model, base_url=base_url, extra=extra, budget=budget))
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o-mini", (0.15, 0.60)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
        ("openai/gpt-4o-mini", (0.15, 0.60)),
        ("GPT-4o", (2.50, 10.00)),
        ("gpt-4o-2024-05-13", (5.00, 15.00)),  # a snapshot with a price of its own
        ("gpt-4.1-nano", (0.10, 0.40)),
        ("o4-mini", (1.10, 4.40)),
        ("claude-3-5-haiku-20241022", (0.80, 4.00)),
        ("anthropic/claude-sonnet-4", (3.00, 15.00)),
        ("claude-3-5-sonnet-latest", (3.00, 15.00)),
    ],
)
def test_common_hosted_models_are_priced_under_any_of_their_names(
    name: str, expected: tuple[float, float]
) -> None:
    price = table_price(name)
    assert price is not None and (price.input, price.output) == expected


@pytest.mark.parametrize("name", ["llama3", "gpt-4o-mini-realtime", "qwen2.5:7b", "", None])
def test_models_outside_the_table_have_no_price(name: str | None) -> None:
    assert table_price(name) is None


def test_the_table_is_dated_and_every_output_costs_at_least_its_input() -> None:
    assert PRICES_AS_OF.count("-") == 2 and PRICES
    assert all(p.output >= p.input > 0 for p in PRICES.values())


def test_the_gateway_prices_a_model_with_no_price_from_the_table() -> None:
    specs = {
        "table": ModelSpec(provider="openai", model="gpt-4o-mini", base_url="http://x"),
        "own": ModelSpec(
            provider="openai",
            model="gpt-4o-mini",
            base_url="http://x",
            price=Price(input=1, output=2),
        ),
        "none": ModelSpec(provider="openai", model="llama3", base_url="http://x"),
    }
    gateway = Gateway(specs)
    assert gateway.price("table") == Price(input=0.15, output=0.60)
    assert gateway.price("own") == Price(input=1, output=2)  # an explicit price wins
    assert gateway.price("none") == Price(input=0, output=0)
    assert [is_priced(s) for s in specs.values()] == [True, True, False]


def test_a_rebound_model_takes_the_new_models_price_not_the_old_one() -> None:
    old = {"large": ModelSpec(provider="openai", model="gpt-4o", price=Price(input=2.5, output=10))}
    new = rebind_models(old, {"large": "openai:gpt-4o-mini"})
    assert new["large"].price is None and is_priced(new["large"])
    same = rebind_models(old, {"large": "openai:gpt-4o"})
    assert same["large"].price == Price(input=2.5, output=10)


def test_a_cost_budget_on_an_unpriced_model_is_refused_naming_the_graph_model_and_fix(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    graph = _graph(tmp_path, fake)
    with pytest.raises(SpecError) as caught:
        Pipeline(graph, db=None)
    message = str(caught.value)
    assert str(graph) in message and "model 'large'" in message and "my-local-llama" in message
    assert "price: {input:" in message and "--allow-unpriced" in message


@pytest.mark.parametrize(
    "variant",
    [
        {"extra": ", price: {input: 0, output: 0}"},  # the graph says it is free
        {"model": "gpt-4.1-mini"},  # the table knows it
        {"budget": ""},  # no cost budget to bind
    ],
)
def test_a_priced_model_or_no_cost_budget_is_not_refused(
    tmp_path: Path, fake: FakeOpenAI, variant: dict[str, str]
) -> None:
    Pipeline(_graph(tmp_path, fake, **variant), db=None)


def test_moat_run_refuses_with_exit_2_before_anything_runs(
    tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _graph(tmp_path, fake)
    db = tmp_path / "t.db"
    seen = len(fake.bills)
    code = main(["run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "has no price" in err and "--allow-unpriced" in err
    assert len(fake.bills) == seen  # no request reached the endpoint
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone() == (0,)


def test_moat_run_allow_unpriced_runs_the_graph(
    tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _graph(tmp_path, fake)
    db = tmp_path / "t.db"
    args = ["run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet", "--allow-unpriced"]
    assert main(args) == 0
    assert '"status": "ok"' in capsys.readouterr().out


@pytest.mark.parametrize("name", ["gemini-2.5-pro", "openai/claude-sonnet-4-20250514"])
def test_long_prompts_are_priced_at_the_long_context_rate(name: str) -> None:
    short, long = table_price(name, 200_000), table_price(name, 200_001)
    assert short is not None and long is not None
    assert long.input > short.input and long.output > short.output
    assert table_price("gpt-4o-mini", 10**6) == table_price("gpt-4o-mini")


def test_the_gateway_reserves_and_charges_a_long_prompt_at_the_long_rate() -> None:
    gateway = Gateway(
        {
            "m": ModelSpec(
                provider="openai", model="gemini-2.5-pro", base_url="http://127.0.0.1:9/v1"
            )
        }
    )
    assert gateway.estimate_cost("m", 300_000, 0) == pytest.approx(300_000 * 2.50 / 1e6)
    assert gateway.estimate_cost("m", 100_000, 0) == pytest.approx(100_000 * 1.25 / 1e6)
