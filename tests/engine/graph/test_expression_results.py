"""The values an expression can give, known before the run (`every_result`): the model
preflight and `moat check` read them to check the models an expression can pick."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.graph._config import every_result, literal_results

NAMES = ("a", "b", "c")
LITERALS = ("'small'", "'large'", "''", "None")


def _expressions() -> st.SearchStrategy[str]:
    leaf = st.sampled_from(NAMES + LITERALS)

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            st.tuples(inner, leaf, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            st.tuples(inner, inner, leaf).map(lambda t: f"[{t[0]}, {t[1]}][{t[2]} and 1 or 0]"),
        )

    return st.recursive(leaf, grow, max_leaves=8)


@given(_expressions(), st.fixed_dictionaries({n: st.sampled_from([0, 1, "x", ""]) for n in NAMES}))
def test_every_value_an_expression_gives_is_among_its_results_unless_falsy(
    source: str, scope: dict[str, object]
) -> None:
    """Whatever the names hold, a truthy result is one `every_result` lists; when it lists
    them, a name can be the result only where its value is falsy."""
    results = every_result(source)
    value = eval(source, {}, dict(scope))  # the test's own expressions: literals and names
    if results is None:
        return
    assert not value or value in results, (source, scope, value, results)


@given(_expressions(), st.fixed_dictionaries({n: st.sampled_from([0, 1, "x", ""]) for n in NAMES}))
def test_a_literal_result_is_one_literal_results_reports(
    source: str, scope: dict[str, object]
) -> None:
    """A literal that can be the result is reported (with its column), so a typo in it is."""
    value = eval(source, {}, dict(scope))
    if value in ("small", "large"):  # written in the expression, not held by a name
        reported = [v for v, column in literal_results(source)]
        assert value in reported, (source, scope, value, reported)


def test_and_or_picks_are_known_before_the_run() -> None:
    assert every_result("input.fast and 'small' or 'large'") == ["small", "large"]
    assert every_result("input.a and 'small' or input.b and 'medium' or 'large'") == [
        "small",
        "medium",
        "large",
    ]


def test_a_name_that_can_be_the_result_when_truthy_leaves_it_to_the_run() -> None:
    assert every_result("input.model or 'large'") is None
    assert every_result("'small' if x else input.model") is None


def test_a_literal_that_can_never_be_the_result_is_not_reported() -> None:
    """`'lrage'` is the first operand of `and`: the result only if falsy, which it is not."""
    assert [v for v, _ in literal_results("'lrage' and x.model or 'small'")] == ["small"]
    assert every_result("'' or 'small'") == ["small"]
