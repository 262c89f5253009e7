"""Every regular expression applied to request or model text runs in linear time.

A backtracking regex can take seconds on a crafted 60 KB prompt and stall every request of
the process. These tests collect every compiled pattern of the modules that read request or
model text, and every function that applies them, and feed them pathological shapes (long
runs of digits, spaces, separators, letters, half-finished PII) and hypothesis-generated
repetitions. Linear time shows as scaling: work on 60 KB is about 4x the work on 15 KB,
never the 16x of a quadratic pattern. Timings take the best of several runs and the bounds
are generous, so a busy machine does not make them flaky.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.models import _sim_tasks
from engine.pii import _IBAN, Span, _ibans, detect
from nodes._support.features import features
from nodes._support.jsonfix import JsonFixError, parse_lenient
from nodes._support.semcache import template
from nodes.redact import PiiVault

MODULES = [
    "engine.pii",
    "engine.models._egress",
    "engine.models._sim_tasks",
    "nodes._support.semcache",
    "nodes._support.features",
    "nodes._support.jsonfix",
    "nodes._support.embed",
    "nodes.redact",
]
"""Modules whose patterns read request or model text."""

UNITS = [
    "a", "1", "1 ", "1-", "1:", "1.", "1,", " ", "\n", "\n ", "ab:", "AB12 ", "DE12 ",
    "DE12AAAA", "a.", "+1 ", "'a", '"a', "a@", "a@b.", "a-1", "a-a", "(1) ", "0 ", "01 ", "0-",
    "1::", "%", "token=", "a_", "-----BEGIN RSA PRIVATE KEY-----", "020 7946 0958 ", "4111 ",
    "123-45-", "1.1.1.", "ssn 1", "0a", "(020) ", "+44 20 ", "call 1 ", "Ab ", "{ ", "<draft>",
    "```", "http://", "#1", "x()", "- ", "1. ", "[EMAIL_1", "fe80::", "::ffff:1.", "XY12 ",
    "XY12 or ",
]  # fmt: skip
"""Repeated units that make backtracking regexes blow up (or would, if one crept back)."""


def _patterns() -> Iterator[tuple[str, re.Pattern[str]]]:
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            for i, pattern in enumerate(_flatten(value)):
                yield f"{name}.{attr}[{i}]", pattern


def _flatten(value: Any) -> Iterator[re.Pattern[str]]:
    if isinstance(value, re.Pattern):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)


PATTERNS = dict(_patterns())


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _cpu(fn: Callable[[str], object], text: str) -> float:
    """CPU seconds of one call (CPU, not wall time: other processes on the machine do not count)."""
    t0 = time.process_time()
    fn(text)
    return time.process_time() - t0


def _best(fn: Callable[[str], object], text: str, runs: int = 3) -> float:
    """CPU seconds per call: the best of `runs` rounds, each repeated for at least 10 ms."""
    best = float("inf")
    for _ in range(runs):
        calls, t0 = 0, time.process_time()
        while (elapsed := time.process_time() - t0) < 0.01 or not calls:
            fn(text)
            calls += 1
        best = min(best, elapsed / calls)
    return best


def _scan(pattern: re.Pattern[str]) -> Callable[[str], object]:
    return lambda text: len(pattern.findall(text))


def _parse(text: str) -> object:
    try:
        return parse_lenient(text)
    except JsonFixError:
        return None


TEXT_FUNCTIONS: dict[str, Callable[[str], object]] = {
    "engine.pii.detect": detect,
    "nodes._support.semcache.template": template,
    "nodes._support.features.features": features,
    "nodes._support.jsonfix.parse_lenient": _parse,
    "PiiVault.restore": lambda text: PiiVault().restore(text),
    "sim text fields": _sim_tasks._text_fields,
    "sim lenient_json": _sim_tasks.lenient_json,
}


FAST_UNITS = ["1 ", "1-", "01 ", "0-", "'a", "a", "\n", "a@", "a-1", "DE12 ", "<draft>", "(1) "]
"""The units that cost the most before the fix (the full list runs with `-m slow`)."""


def _slowest(fn: Callable[[str], object], units: list[str]) -> str:
    return max(units, key=lambda unit: _cpu(fn, _text(unit, 15_000)))


def test_the_collector_finds_the_request_text_patterns() -> None:
    names = set(PATTERNS)
    assert len(PATTERNS) >= 40
    assert any(n.startswith("engine.pii._IBAN") for n in names)
    assert any(n.startswith("nodes._support.semcache._SLOT_PATTERNS") for n in names)
    assert any(n.startswith("engine.models._sim_tasks._DRAFT_OPEN") for n in names)


def _slow_patterns(units: list[str]) -> list[tuple[str, str, float]]:
    # A quadratic pattern takes seconds on 60 KB; a linear one milliseconds (0.2 s at most,
    # for the bounded look-ahead of the id slot). The bound sits between the two.
    slow = []
    for unit in units:
        text = _text(unit, 60_000)
        for name, pattern in PATTERNS.items():
            if (cpu := _cpu(_scan(pattern), text)) > 0.5:
                slow.append((name, unit, round(cpu, 3)))
    return slow


def test_every_pattern_scans_60kb_of_pathological_text_quickly() -> None:
    assert _slow_patterns(FAST_UNITS) == []


@pytest.mark.slow
def test_every_pattern_scans_60kb_of_every_pathological_unit_quickly() -> None:
    assert _slow_patterns(UNITS) == []


@pytest.mark.parametrize("name", sorted(TEXT_FUNCTIONS))
def test_request_text_functions_scale_linearly(name: str) -> None:
    # on each function's costliest input: 4x the text, about 4x the work (quadratic: 16x)
    fn = TEXT_FUNCTIONS[name]
    unit = _slowest(fn, FAST_UNITS)
    t_small = _best(fn, _text(unit, 15_000), runs=2)
    t_big = _best(fn, _text(unit, 60_000), runs=2)
    assert t_big / t_small < 9, f"{name} on {unit!r}: 15 KB {t_small:.4f}s, 60 KB {t_big:.4f}s"


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_request_text_functions_handle_every_unit_quickly(unit: str) -> None:
    text = _text(unit, 60_000)
    for name, fn in TEXT_FUNCTIONS.items():
        assert _cpu(fn, text) < 1.0, (name, unit)


IBAN_MISSES = ["XY12 ", "XY12 or ", "DE12 ", "gb82 west ", "LH45 DE89 ", "de12ab34cd56 "]
"""Runs of words that open like an IBAN and are none."""


def _iban_attempts(text: str) -> list[str]:
    """The candidates the IBAN finder validates in `text`, one per start it tries."""
    return [m.group(1) for m in _IBAN.finditer(text)]


@pytest.mark.parametrize("unit", IBAN_MISSES)
def test_the_iban_scan_tries_each_word_once_on_long_runs_of_near_misses(unit: str) -> None:
    # After a near miss the scan resumes at the next word that can start an IBAN: at most
    # one attempt per word, each reading at most 44 characters (an IBAN printed in groups
    # is 38 at most), so the work grows with the text, never with its square. Counted, not
    # timed.
    text = _text(unit, 60_000) + " DE89370400440532013000"
    attempts = _iban_attempts(text)
    assert 0 < len(attempts) <= len(text.split())
    assert max(map(len, attempts)) <= 44
    # and the IBAN after the whole run is still found
    assert list(_ibans(text)) == [Span(60_001, 60_023, "IBAN", "DE89370400440532013000")]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=" \n0123456789aAZ:.-+@()'\"#%_,/[]{}<>`=", min_size=1, max_size=9))
def test_generated_repetitions_of_60kb_are_processed_quickly(unit: str) -> None:
    # a former 13-18 s stall; the bound is far above the tenths of a second this takes
    text = _text(unit, 60_000)
    for name, fn in TEXT_FUNCTIONS.items():
        assert _cpu(fn, text) < 2.0, (name, unit)
