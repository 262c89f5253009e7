"""YAML with positions: what a careless or hostile file reads as, and how it is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import SpecError
from engine.located_yaml import load_yaml, read_file


@pytest.mark.parametrize("key", ["on", "off", "yes", "no", "true", "False", "null", "~", "1"])
def test_a_key_reads_as_the_text_written(key: str) -> None:
    located = load_yaml(f"{key}: 1\nnested: {{{key}: 2}}\n", "k.yaml")
    assert located.data == {key: 1, "nested": {key: 2}}
    assert located.keys[(key,)].line == 1


def test_keys_that_differ_in_text_are_not_duplicates() -> None:
    assert load_yaml("true: 1\nTrue: 2\n", "k.yaml").data == {"true": 1, "True": 2}
    with pytest.raises(SpecError, match=r"k\.yaml:2:1: duplicate key 'on'"):
        load_yaml("on: 1\non: 2\n", "k.yaml")


@pytest.mark.parametrize(
    "number",
    ["0x" + "f" * 5000, "0" + "7" * 5000, "0b" + "1" * 20_000, "9" * 5000],
    ids=["hexadecimal", "octal", "binary", "decimal"],
)
def test_a_whole_number_too_wide_to_print_is_refused_where_it_stands(number: str) -> None:
    with pytest.raises(
        SpecError, match=r"^n\.yaml:2:8: invalid value: a whole number wider than 10,000 bits"
    ):
        load_yaml(f"a: 1\nwide: [{number}]\n", "n.yaml")


@given(st.integers(min_value=-(2**14_000), max_value=2**14_000), st.sampled_from("xobd"))
def test_a_whole_number_in_any_base_loads_within_bounds_or_is_refused(
    number: int, base: str
) -> None:
    digits = {"x": f"{abs(number):#x}", "o": f"0{abs(number):o}", "b": f"{abs(number):#b}"}
    written = ("-" if number < 0 else "") + digits.get(base, str(abs(number)))
    try:
        value = load_yaml(f"n: {written}\n", "n.yaml").data["n"]
    except SpecError as exc:
        assert str(exc).startswith("n.yaml:1:4: invalid value")
        return
    assert value == number
    assert value.bit_length() <= 10_000  # as wide as expressions compute: always printable


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LAUGHS, r"^l\.yaml:\d+:\d+: the document holds more than 200,000 values once its "),
        ("a: " + "[" * 300 + "]" * 300, r"^l\.yaml:1:\d+: values are nested more than 200 levels"),
    ],
    ids=["aliases", "nesting"],
)
def test_a_document_too_large_or_too_deep_says_which(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_yaml(text, "l.yaml")


def test_a_key_too_long_for_yaml_says_so() -> None:
    with pytest.raises(SpecError, match=r"^k\.yaml:2:2003: invalid YAML: .* \(a key of more than"):
        load_yaml("nodes:\n  " + "a" * 2000 + ": {type: x}\n", "k.yaml")


def test_an_empty_path_is_named_as_empty() -> None:
    with pytest.raises(SpecError, match=r"^'': file not found"):
        read_file("")


def test_a_bad_merge_key_is_one_located_line() -> None:
    with pytest.raises(SpecError) as caught:
        load_yaml("base: 1\nnode: {<<: [1, 2]}\n", "m.yaml")
    message = str(caught.value)
    assert "\n" not in message and "<unicode string>" not in message
    assert message.startswith("m.yaml:2:13: invalid merge key (`<<`): expected a mapping")


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_nobody_writes_to_reads_as_empty_rather_than_waiting(
    tmp_path: Path,
) -> None:
    pipe = tmp_path / "graph.yaml"
    os.mkfifo(pipe)
    assert read_file(str(pipe)) == b""


def test_a_file_that_is_not_utf8_is_refused_at_the_line_and_column_of_the_byte() -> None:
    text = "moat: 1\nname: caf\u00e9 \u00e9t\u00e9\n".encode() + b"nodes: {a: \xe9}\n"
    with pytest.raises(SpecError) as caught:
        load_yaml(text, "latin.yaml")
    assert str(caught.value) == (
        "latin.yaml:3:12: the file is not UTF-8 text (byte 38); save it as UTF-8"
    )
