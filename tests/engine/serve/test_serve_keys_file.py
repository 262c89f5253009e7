"""A `--keys` file that is not `TENANT sha256:HEX` lines is refused at startup, naming the
line and what is wrong on it, and never repeating a key in clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import SpecError
from engine.serve import hash_key, load_keys

SECRET = "sk-live-0123456789"
HEX = hash_key(SECRET)


@pytest.mark.parametrize(
    ("content", "where", "words"),
    [
        (f"acme sha256:{HEX}\n{SECRET}\n".encode(), ":2: ", "this line has no `sha256:HEX`"),
        (f"acme {SECRET}\n".encode(), ":1: ", "this line has no `sha256:HEX`"),
        (f"acme md5:{SECRET}\n".encode(), ":1: ", "this line has no `sha256:HEX`"),
        (f"acme corp sha256:{HEX}\n".encode(), ":1: ", "tenant 'acme corp' is not a tenant"),
        (f"ac/me sha256:{HEX}\n".encode(), ":1: ", "tenant 'ac/me' is not a tenant name"),
        (f"sha256:{HEX}\n".encode(), ":1: ", "no TENANT before its `sha256:HEX`"),
        (f"acme sha256:{HEX} {SECRET}\n".encode(), ":1: ", "more after its `sha256:HEX`"),
        (f"acme sha256:{HEX[:60]}\n".encode(), ":1: ", "tenant 'acme' is 60 characters"),
        (f"acme sha256:{HEX[:63]}g\n".encode(), ":1: ", "characters that are not hex digits"),
        (b"# keys\n\nacme sha256:" + HEX.encode() + b"\n\xff\xfe\n", ":4:1: ", "byte 0xff is"),
        (b"", ": ", "the keys file has no keys"),
        (b"# only a comment\n\n", ": ", "the keys file has no keys"),
    ],
    ids=[
        "plain-key",
        "tenant-and-plain-key",
        "other-hash",
        "space-in-tenant",
        "slash-in-tenant",
        "no-tenant",
        "text-after-hash",
        "short-hash",
        "not-hex",
        "not-utf8",
        "empty",
        "comments-only",
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_line_and_what_is_wrong(
    tmp_path: Path, content: bytes, where: str, words: str
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        load_keys(keys)
    assert str(caught.value).startswith(f"{keys}{where}")
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_keys_file_saved_with_a_byte_order_mark_or_crlf_lines_is_read(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    other = hash_key("sk-2")
    keys.write_bytes(f"\ufeffacme sha256:{HEX}\r\nbeta sha256:{other.upper()}\r\n".encode())
    assert load_keys(keys).keys == {HEX: "acme", other: "beta"}


def test_moat_serve_refuses_a_bad_keys_file_before_it_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_bytes(f"acme sha256:{HEX}\nbeta {SECRET}\n".encode())
    code = main(["serve", "graphs/baseline.yaml", "--port", "8999", "--keys", str(keys)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{keys}:2: this line has no `sha256:HEX`" in err
    assert SECRET not in err and "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_as_a_keys_file_are_read_or_refused_with_a_spec_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_bytes(content)
    try:
        ring = load_keys(keys)
    except SpecError as exc:
        assert str(exc).startswith(str(keys))
        return
    assert ring.keys
