"""The `validate` node and the lenient JSON parser: deterministic fixes first, then a bounded
repair loop that escalates from the small model to the large one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BudgetExceeded, TransientError
from nodes._support.jsonfix import JsonFixError, parse_lenient
from nodes.validate import ValidateNode
from tests.support.nodes_fakes import FakeModel, FakeRuntime, run_node

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}
GOOD = {"name": "Ann", "age": 41}


@pytest.mark.parametrize(
    ("text", "value", "fixes"),
    [
        ('{"a": 1}', {"a": 1}, ()),
        ('```json\n{"a": 1}\n```', {"a": 1}, ("code_fence",)),
        (
            'Sure! Here it is: {"a": 1} Hope it helps.',
            {"a": 1},
            ("leading_prose", "trailing_prose"),
        ),
        ('{"a": [1, 2,], }', {"a": [1, 2]}, ("trailing_comma",)),
        ("{'a': 'unterminated}", None, None),
        ("{'a': 'it's'}", {"a": "it's"}, ("single_quotes",)),
        ("{'a': 'x', 'b': \"y\"}", {"a": "x", "b": "y"}, ("single_quotes",)),
        (
            '{"ok": True, "n": None, "f": False}',
            {"ok": True, "n": None, "f": False},
            ("python_literals",),
        ),
        ('{name: "x"}', {"name": "x"}, ("unquoted_keys",)),
        ('{"a": 1, // one\n "b": 2}', {"a": 1, "b": 2}, ("comments",)),
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}, ("closed_brackets",)),
        ("[{'q': \"it's\"}]", [{"q": "it's"}], ("single_quotes",)),
    ],
)
def test_lenient_parser_fixes(text: str, value: Any, fixes: tuple[str, ...] | None) -> None:
    if fixes is None:
        with pytest.raises(JsonFixError):
            parse_lenient(text)
        return
    parsed = parse_lenient(text)
    assert parsed.value == value
    assert parsed.fixes == fixes


def test_lenient_parser_refuses_text_without_json() -> None:
    with pytest.raises(JsonFixError, match="no '\\{' or '\\['"):
        parse_lenient("I cannot answer that.")
    with pytest.raises(JsonFixError, match="empty"):
        parse_lenient("   ")


@pytest.mark.parametrize(
    "text", ["[" * 60_000, '{"a": ' * 60_000, "```json\n" + "[" * 60_000 + "\n```"]
)
def test_lenient_parser_refuses_nesting_too_deep_to_decode(text: str) -> None:
    # deeper than the decoder's recursion: unreadable, never a RecursionError
    with pytest.raises(JsonFixError):
        parse_lenient(text)


async def test_valid_text_passes_without_model_calls() -> None:
    rt = FakeRuntime()
    out = await run_node(ValidateNode(), {"schema": SCHEMA, "text": json.dumps(GOOD)}, rt)
    assert (out.valid, out.value, out.attempts, out.repaired_by) == (True, GOOD, 0, None)
    assert rt.types() == ["VALIDATION_PASSED"]
    assert rt.last("VALIDATION_PASSED").reason_codes == ["VALID_AS_IS"]


async def test_parser_fixes_count_as_repaired_by_parser() -> None:
    rt = FakeRuntime()
    text = "```json\n{'name': 'Ann', 'age': 41,}\n```"
    out = await run_node(ValidateNode(), {"schema": SCHEMA, "text": text}, rt)
    assert out.valid and out.repaired_by == "parser" and out.value == GOOD
    assert out.text == json.dumps(GOOD)
    assert rt.last("VALIDATION_PASSED").reason_codes == ["PARSER_FIXES"]


@pytest.mark.parametrize(
    "text",
    ['{"name": "Ann", "age": 4', '{"name": "Ann", "age": 41, "note": "see the att'],
    ids=["a number cut short", "a string cut short"],
)
async def test_a_cut_off_answer_is_repaired_even_when_what_is_left_fits_the_schema(
    text: str,
) -> None:
    """The parser closes what was left open, but the last value may be incomplete (`4`
    of `41`): the answer goes to repair, which asks for it in full."""
    small = FakeModel("small", {"repair": [GOOD]})
    rt = FakeRuntime(models={"small": small})
    cfg = {"schema": SCHEMA, "text": text, "repair_model": "small", "max_repairs": 1}
    out = await run_node(ValidateNode(), cfg, rt)
    assert out.valid and out.value == GOOD and out.repaired_by == "small"
    assert rt.last("REPAIR_ATTEMPTED").reason_codes == ["ANSWER_TRUNCATED"]
    (call,) = small.calls
    assert "the text stops before its end" in (call.prompt or "")


async def test_a_cut_off_answer_without_a_repair_model_is_invalid() -> None:
    rt = FakeRuntime()
    out = await run_node(ValidateNode(), {"schema": SCHEMA, "text": '{"name": "Ann", "age": 4'}, rt)
    assert not out.valid and out.value == {"name": "Ann", "age": 4}
    assert any("cut off" in e for e in out.errors)
    assert rt.types() == ["VALIDATION_FAILED"]


async def test_repair_then_escalate_sends_only_errors_and_last_text() -> None:
    small = FakeModel("small", {"repair": ['{"name": "Ann"}', '{"name": "Ann", "age": -1}']})
    large = FakeModel("large", {"repair": [GOOD]})
    rt = FakeRuntime(models={"small": small, "large": large})
    cfg = {
        "schema": SCHEMA,
        "text": '{"name": 5}',
        "repair_model": "small",
        "escalate_model": "large",
        "max_repairs": 2,
        "max_escalations": 1,
    }
    out = await run_node(ValidateNode(), cfg, rt)
    assert out.valid and out.repaired_by == "large" and out.attempts == 3
    assert rt.types() == [
        "REPAIR_ATTEMPTED",
        "REPAIR_ATTEMPTED",
        "REPAIR_ESCALATED",
        "REPAIR_ATTEMPTED",
        "VALIDATION_PASSED",
    ]
    first, second = small.calls
    assert "$.name: 5 is not of type 'string'" in (first.prompt or "")
    assert '{"name": 5}' in (first.prompt or "")
    # the second attempt sees the first attempt's output and errors, not the original text
    assert "'age' is a required property" in (second.prompt or "")
    assert '{"name": 5}' not in (second.prompt or "")
    assert "-1 is less than the minimum of 0" in (large.calls[0].prompt or "")
    assert all(c.task == "repair" and c.schema == SCHEMA for c in [*small.calls, *large.calls])
    assert out.cost_usd == pytest.approx(0.003)


async def test_failure_after_budgeted_attempts_reports_errors() -> None:
    rt = FakeRuntime(models={"small": FakeModel("small", {"repair": ["nope"]})})
    cfg = {"schema": SCHEMA, "text": "nope", "repair_model": "small", "max_repairs": 2}
    out = await run_node(ValidateNode(), cfg, rt)
    assert not out.valid and out.attempts == 2 and out.repaired_by is None
    assert out.errors and "no parseable JSON" in out.errors[0]
    assert rt.types()[-1] == "VALIDATION_FAILED"
    assert rt.last("VALIDATION_FAILED").reason_codes == ["EXHAUSTED"]


async def test_budget_and_transient_errors_stop_or_skip_attempts() -> None:
    flaky = FakeModel("small", {"repair": [TransientError("503"), GOOD]})
    rt = FakeRuntime(models={"small": flaky})
    cfg = {"schema": SCHEMA, "text": "{}", "repair_model": "small", "max_repairs": 2}
    out = await run_node(ValidateNode(), cfg, rt)
    assert out.valid and out.attempts == 2
    broke = FakeRuntime(models={"small": FakeModel("small", {"repair": [BudgetExceeded("$")]})})
    out = await run_node(ValidateNode(), cfg, broke)
    assert not out.valid and broke.last("VALIDATION_FAILED").reason_codes == ["BUDGET_EXCEEDED"]


async def test_degraded_request_skips_repairs() -> None:
    rt = FakeRuntime(degraded_value=True)
    cfg = {"schema": SCHEMA, "text": "{}", "repair_model": "small"}
    out = await run_node(ValidateNode(), cfg, rt)
    assert not out.valid and out.attempts == 0
    assert rt.last("VALIDATION_FAILED").reason_codes == ["DEGRADED"]


async def test_value_input_is_checked_before_text() -> None:
    out = await run_node(ValidateNode(), {"schema": SCHEMA, "value": GOOD, "text": "junk"})
    assert out.valid and out.value == GOOD


_REPLIES = st.lists(
    st.sampled_from(["junk", "{}", '{"name": "x"}', json.dumps(GOOD), "{'name': 'x', 'age': 1}"]),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    replies=_REPLIES,
    max_repairs=st.integers(0, 4),
    max_escalations=st.integers(0, 3),
    start=st.sampled_from(["junk", '{"age": "x"}', json.dumps(GOOD)]),
)
def test_never_more_calls_than_repairs_plus_escalations(
    replies: list[str], max_repairs: int, max_escalations: int, start: str
) -> None:
    import anyio

    small = FakeModel("small", {"repair": list(replies)})
    large = FakeModel("large", {"repair": list(reversed(replies))})
    rt = FakeRuntime(models={"small": small, "large": large})
    cfg = {
        "schema": SCHEMA,
        "text": start,
        "repair_model": "small",
        "escalate_model": "large",
        "max_repairs": max_repairs,
        "max_escalations": max_escalations,
    }

    async def go() -> Any:
        return await run_node(ValidateNode(), cfg, rt)

    out = anyio.run(go)
    assert len(small.calls) <= max_repairs
    assert len(large.calls) <= max_escalations
    assert out.attempts == len(small.calls) + len(large.calls)
    assert rt.types().count("REPAIR_ATTEMPTED") == out.attempts
    assert rt.types()[-1] in ("VALIDATION_PASSED", "VALIDATION_FAILED")
    if out.valid:
        assert out.value == GOOD or out.value == {"name": "x", "age": 1}


SCORE = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}}}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"score": NaN}', "$.score: nan is not a JSON number"),
        ('{"score": Infinity}', "$.score: inf is not a JSON number"),
        ('{"list": [1, -Infinity]}', "$.list[1]: -inf is not a JSON number"),
    ],
)
async def test_nan_and_infinities_are_errors_and_get_repaired(text: str, error: str) -> None:
    # NaN passes `minimum` and `maximum`, and is no JSON: it would leave the node as null
    small = FakeModel("small", {"repair": '{"score": 0.5}'})
    rt = FakeRuntime(models={"small": small})
    out = await run_node(
        ValidateNode(), {"schema": SCORE, "text": text, "repair_model": "small"}, rt
    )
    assert (out.valid, out.value, out.text, out.repaired_by) == (
        True, {"score": 0.5}, '{"score": 0.5}', "small",
    )  # fmt: skip
    assert error in (small.calls[0].prompt or "")
    # without a repair model it stays invalid, saying where
    out = await run_node(ValidateNode(), {"schema": SCORE, "text": text}, FakeRuntime())
    assert not out.valid and out.errors[-1].startswith(error)


async def test_a_handed_in_value_holding_nan_is_invalid() -> None:
    out = await run_node(ValidateNode(), {"schema": SCORE, "value": {"score": float("nan")}})
    assert not out.valid
    assert out.errors == ["$.score: nan is not a JSON number; use a finite number or null"]


async def test_words_like_infinity_inside_strings_are_fine() -> None:
    schema = {"type": "object", "properties": {"film": {"type": "string"}}}
    out = await run_node(ValidateNode(), {"schema": schema, "text": '{"film": "Infinity NaN"}'})
    assert out.valid and out.value == {"film": "Infinity NaN"}
