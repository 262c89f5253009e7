"""Values of the wrong kind in a policy file: refused at their line, with the fix that
keeps what the operator meant (a number YAML read as text, a yes read as true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import PolicyError
from engine.policy.manager import apply_policy
from engine.store.store import Store

BASE = {
    "name": "triage",
    "router": {"threshold": 0.4, "model": "small"},
    "cache": {"enabled": True, "ttl_s": 60},
}

BASE_LINES = ["router: {threshold: 0.4, model: small}", "cache: {enabled: true, ttl_s: 60}"]
"""BASE as written in a file, one line a section."""


@pytest.mark.parametrize(
    ("line", "fix"),
    [
        # an exponent without a point and a sign is text to YAML, though no quote is seen
        (
            "router: {threshold: 1e-3, model: small}",
            r"write the number as 0\.001 \(YAML reads "
            r"'1e-3' as text: an exponent needs a point and a signed power, as in 1\.0e-3\)$",
        ),
        ("router: {threshold: '0.5', model: small}", r"write the number as 0\.5, without quotes$"),
        ('cache: {enabled: true, ttl_s: "90"}', r"write the number as 90, without quotes$"),
        ("cache: {enabled: 'yes', ttl_s: 60}", r"write true, without quotes$"),
        ("cache: {enabled: 'off', ttl_s: 60}", r"write false, without quotes$"),
        ("router: {threshold: true, model: small}", r"write a number: true/false is not one"),
        # `no` is Norway's code, or a model name: YAML 1.1 reads it as false
        (
            "router: {threshold: 0.4, model: no}",
            r"quote the value to keep it text \(YAML reads "
            r"unquoted yes, no, on, off, true and false as true/false, and digits as a number\)$",
        ),
        ("router: {threshold: 0.4, model: 1.10}", r"quote the value to keep it text"),
        ("router: {threshold: high, model: small}", r"keep the type or use a new key$"),
    ],
)
def test_a_value_of_another_kind_is_refused_with_the_fix_that_keeps_its_kind(
    tmp_path: Path, line: str, fix: str
) -> None:
    section = line.split(":")[0]
    lines = [line if row.startswith(section) else row for row in BASE_LINES]
    path = tmp_path / "next.yaml"
    path.write_text("\n".join(["name: triage", *lines]) + "\n")
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, BASE)
        with pytest.raises(
            PolicyError,
            match=rf"^{re.escape(str(path))}:\d:\d+: '{section}\.\w+' changed type from "
            rf".*; graphs and nodes read it as a .*, so {fix}",
        ):
            apply_policy(store, path)
        assert store.active_policy("triage")["version"] == 1


@pytest.mark.parametrize(
    ("items", "refused"),
    [
        (
            "[0.2, '0.5']",
            r"'steps\.1' is a string \('0\.5'\), but the items of 'steps' in "
            r"version 1 are each a number \(\[0\.2, 0\.5\]\); graphs and nodes read them as a "
            r"number, so write the number as 0\.5, without quotes$",
        ),
        ("[0.2, 1e-3]", r"'steps\.1' is a string \('1e-3'\), .* write the number as 0\.001"),
        ("[true, 0.5]", r"'steps\.0' is a true/false \(true\), .* write a number"),
        ("[0.3, 0.6, 0.9]", None),  # more items of the same kind
        ("[]", None),
        ("[0.3, null]", None),  # null stands for "unset" in any kind
    ],
)
def test_an_item_of_another_kind_in_a_list_of_one_kind_is_refused_at_its_line(
    tmp_path: Path, items: str, refused: str | None
) -> None:
    path = tmp_path / "next.yaml"
    path.write_text(f"name: triage\nsteps: {items}\nlabels: [a, b]\n")
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, {"name": "triage", "steps": [0.2, 0.5], "labels": ["a", "b"]})
        if refused is None:
            assert apply_policy(store, path).pin.version == 2
            return
        with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}:2:\d+: {refused}"):
            apply_policy(store, path)
        assert store.active_policy("triage")["version"] == 1


def test_a_list_of_mixed_kinds_takes_items_of_any_kind(tmp_path: Path) -> None:
    path = tmp_path / "next.yaml"
    path.write_text("name: triage\nmixed: [x, 2, true]\nlabels: [a, 'no']\n")
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, {"name": "triage", "mixed": [1, "a"], "labels": ["a", "b"]})
        assert apply_policy(store, path).pin.version == 2
        path.write_text("name: triage\nmixed: [x]\nlabels: [a, no]\n")  # no: false to YAML
        with pytest.raises(
            PolicyError,
            match=r"next\.yaml:3:13: 'labels\.1' is a true/false \(false\), .* quote the value",
        ):
            apply_policy(store, path)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        (
            "2024",
            r"got 2024; quote it, `name: '2024'` \(YAML reads it as a number\), or leave "
            r"it out to use the file name$",
        ),
        (
            "on",
            r"got true; quote it \(YAML reads unquoted yes, no, on, off, true and false as "
            r"true/false\), or leave it out to use the file name$",
        ),
        ("'two words'", r"got 'two words'; leave it out to use the file name$"),
    ],
)
def test_a_name_yaml_reads_as_a_number_or_true_is_told_to_be_quoted(
    tmp_path: Path, name: str, fix: str
) -> None:
    path = tmp_path / "next.yaml"
    path.write_text(f"name: {name}\nrouter: {{threshold: 0.4}}\n")
    with Store.open(tmp_path / "moat.db") as store:
        with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}:1:7: `name:` .*, {fix}"):
            apply_policy(store, path)
        assert store.list_policies() == []
