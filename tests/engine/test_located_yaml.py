"""YAML with positions: what a careless or hostile file reads as, and how it is refused."""

from __future__ import annotations

import pytest

from engine.errors import SpecError
from engine.located_yaml import load_yaml


@pytest.mark.parametrize("key", ["on", "off", "yes", "no", "true", "False", "null", "~", "1"])
def test_a_key_reads_as_the_text_written(key: str) -> None:
    located = load_yaml(f"{key}: 1\nnested: {{{key}: 2}}\n", "k.yaml")
    assert located.data == {key: 1, "nested": {key: 2}}
    assert located.keys[(key,)].line == 1


def test_keys_that_differ_in_text_are_not_duplicates() -> None:
    assert load_yaml("true: 1\nTrue: 2\n", "k.yaml").data == {"true": 1, "True": 2}
    with pytest.raises(SpecError, match=r"k\.yaml:2:1: duplicate key 'on'"):
        load_yaml("on: 1\non: 2\n", "k.yaml")
