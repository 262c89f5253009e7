"""Deterministic, lenient JSON parsing of model output, before any model is asked to repair it.

Models wrap JSON in code fences, put prose around it, leave trailing commas, write Python
(`True`, `None`, single-quoted strings) or stop mid-object. `parse_lenient` undoes those
habits with a single string-aware pass and reports which fixes it applied, so the
`validate` node can say "repaired by the parser" and a repair call is only spent on output
that is really wrong. It never guesses content: a single-quoted string is only converted
when its end is unambiguous, and anything it cannot read raises `JsonFixError`.

A text cut off mid-object is closed where it stopped (`closed_string`, `closed_brackets`:
the last value may be incomplete and later ones lost) when that reads as JSON. Told that the
text may stop anywhere (`cut_off=True`, for a reader that keeps what was written before a
token limit), the parser also drops what the cut left without a value (a key, a word or
number stopped mid-way, `tru` or `1e`) and a string's half-written escape (`\\`,
`\\u00`, half a surrogate pair), so any prefix of a JSON object reads as one.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JsonFixError", "Parsed", "parse_lenient"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js|python)?[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_JSON_WORDS = frozenset({"true", "false", "null", "NaN", "Infinity"})
_CLOSERS = {"{": "}", "[": "]"}
_MARKS = frozenset({",", ":", "{", "[", "}", "]"})
"""The pieces of the normalised output that end one value or key and begin the next."""
_HEX = frozenset("0123456789abcdefABCDEF")


class JsonFixError(ValueError):
    """The text holds no JSON value the deterministic parser can recover.

    Args:
        reason: what was wrong.
        prose: the text holds no JSON at all (no `{` or `[`): words only, or nothing.
    """

    def __init__(self, reason: str, *, prose: bool = False) -> None:
        self.reason = reason
        self.prose = prose
        super().__init__(f"no parseable JSON: {reason}")


@dataclass(frozen=True, slots=True)
class Parsed:
    """A recovered JSON value and the fixes it took."""

    value: Any
    fixes: tuple[str, ...] = field(default=())
    """Names of the applied fixes, e.g. `code_fence`, `trailing_comma`, `python_literals`."""


def parse_lenient(text: str, *, cut_off: bool = False) -> Parsed:
    """Parse `text` as JSON, undoing common model formatting mistakes.

    Args:
        text: what the model wrote.
        cut_off: read `text` as stopped anywhere (at a token limit): close it where it
            stopped, without the key, word, number or escape the cut left half-written.

    Raises:
        JsonFixError: when no JSON value can be recovered without guessing.
    """
    stripped = text.strip()
    if not stripped:
        raise JsonFixError("the text is empty", prose=True)
    try:
        return Parsed(_loads(stripped))
    except ValueError:
        pass
    fixes: list[str] = []
    fenced = _FENCE.search(stripped)
    if fenced and fenced.group(1).strip():
        stripped = fenced.group(1).strip()
        fixes.append("code_fence")
        try:
            return Parsed(_loads(stripped), tuple(fixes))
        except ValueError:
            pass
    start = min((i for i in (stripped.find("{"), stripped.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise JsonFixError("no '{' or '[' found", prose=True)
    if start > 0:
        fixes.append("leading_prose")
    normalised, end, more = _normalise(stripped, start, cut_off=cut_off)
    fixes.extend(more)
    if stripped[end:].strip():
        fixes.append("trailing_prose")
    try:
        return Parsed(_loads(normalised), tuple(dict.fromkeys(fixes)))
    except ValueError:
        pass
    return _python_literal(stripped[start:end], fixes)


def _loads(text: str) -> Any:
    """`json.loads`, with nesting deeper than the decoder's recursion can follow (hostile
    `[[[[...` output) raised as unreadable rather than as a `RecursionError`."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise JsonFixError("nested too deeply") from exc


def _python_literal(candidate: str, fixes: list[str]) -> Parsed:
    """Last resort: a Python literal (`{'a': (1, 2)}`) whose value is JSON-compatible."""
    try:
        value = ast.literal_eval(candidate)
        text = json.dumps(value, allow_nan=False)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise JsonFixError(f"{type(exc).__name__} after fixes {fixes or ['none']}") from exc
    return Parsed(json.loads(text), (*dict.fromkeys(fixes), "python_literal"))


def _normalise(s: str, start: int, *, cut_off: bool) -> tuple[str, int, list[str]]:
    """Rewrite the value starting at `start` into JSON; return it, its end and the fixes."""
    return _Normaliser(s, cut_off=cut_off).run(start)


class _Normaliser:
    """One string-aware pass over a JSON-ish value, rewriting it into JSON as it goes."""

    def __init__(self, s: str, *, cut_off: bool) -> None:
        self.s = s
        self.cut_off = cut_off
        self.out: list[str] = []
        self.fixes: list[str] = []
        self.stack: list[str] = []

    def run(self, i: int) -> tuple[str, int, list[str]]:
        s, n = self.s, len(self.s)
        while i < n:
            c = s[i]
            if c == '"':
                i = self._double(i)
            elif c == "'":
                i = self._single(i)
            elif c in "{[":
                self.stack.append(c)
                self.out.append(c)
                i += 1
            elif c in "}]":
                i = self._close(i)
                if not self.stack:
                    return "".join(self.out), i, self.fixes
            elif c == "/" and s.startswith(("//", "/*"), i):
                i = _comment_end(s, i)
                self.fixes.append("comments")
            elif c.isalpha() or c == "_":
                j = i
                while j < n and (s[j].isalnum() or s[j] == "_"):
                    j += 1
                self.out.append(_word(s[i:j], s, j, self.stack, self.fixes))
                i = j
            else:
                self.out.append(c)
                i += 1
        if self.stack:
            if self.cut_off:
                _drop_cut_member(self.out, self.stack[-1])
            _drop_trailing_comma(self.out)
            self.out.extend(_CLOSERS[b] for b in reversed(self.stack))
            self.fixes.append("closed_brackets")
        return "".join(self.out), n, self.fixes

    def _double(self, i: int) -> int:
        j = _string_end(self.s, i, '"')
        if j >= len(self.s):
            body = self.s[i:]
            self.out.append((_without_cut_escape(body) if self.cut_off else body) + '"')
            self.fixes.append("closed_string")
        else:
            self.out.append(self.s[i : j + 1])
        return j + 1

    def _single(self, i: int) -> int:
        j = _single_quote_end(self.s, i)
        if j < 0:
            raise JsonFixError(f"ambiguous single quote at offset {i}")
        self.out.append(_requote(self.s[i + 1 : j]))
        self.fixes.append("single_quotes")
        return j + 1

    def _close(self, i: int) -> int:
        if _drop_trailing_comma(self.out):
            self.fixes.append("trailing_comma")
        self.out.append(self.s[i])
        if self.stack:
            self.stack.pop()
        return i + 1


def _word(word: str, s: str, end: int, stack: list[str], fixes: list[str]) -> str:
    """A bare word: a Python literal, a JSON literal, or an unquoted object key."""
    if word in _PY_LITERALS:
        fixes.append("python_literals")
        return _PY_LITERALS[word]
    if word in _JSON_WORDS:
        return word
    if stack and stack[-1] == "{" and _next_char(s, end) == ":":
        fixes.append("unquoted_keys")
        return json.dumps(word)
    return word


def _next_char(s: str, i: int) -> str:
    """The first non-blank character from `i` on ("" at the end), found without copying the
    rest of `s`: once per word or quote, a copy would make hostile text quadratic."""
    n = len(s)
    while i < n and s[i].isspace():
        i += 1
    return s[i : i + 1]


def _string_end(s: str, i: int, quote: str) -> int:
    """Index of the quote closing the string opened at `i` (len(s) when unterminated)."""
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == quote:
            return j
        j += 1
    return len(s)


def _single_quote_end(s: str, i: int) -> int:
    """The closing quote of a single-quoted string, or -1 when its end is ambiguous.

    A quote only closes the string when the next non-blank character ends a JSON token
    (`,` `:` `}` `]`) or the text; an apostrophe inside words (`it's`) never does.
    """
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == "'":
            after = _next_char(s, j + 1)
            if not after or after in ",:}]":
                return j
        elif s[j] == "\n":
            return -1
        j += 1
    return -1


def _requote(body: str) -> str:
    """A single-quoted string's body as a JSON double-quoted string."""
    return json.dumps(body.replace("\\'", "'").replace('\\"', '"'))


def _without_cut_escape(body: str) -> str:
    """An unterminated string without the escape its cut left half-written (`\\`, `\\u00`,
    or the first half of a surrogate pair, `\\ud83d`): closed as is, it would escape its
    closing quote, fail to parse, or read as a lone surrogate no UTF-8 text can hold."""
    i, digits = len(body), 0
    while digits < 3 and i > 0 and body[i - 1] in _HEX:
        i, digits = i - 1, digits + 1
    if i > 0 and body[i - 1] == "u" and _escapes(body, i - 1):
        body = body[: i - 2]
    elif _escapes(body, len(body)):
        body = body[:-1]
    code = body[-4:]
    if body[-6:-4] == "\\u" and _escapes(body, len(body) - 5) and set(code) <= _HEX:
        return body[:-6] if 0xD800 <= int(code, 16) <= 0xDBFF else body
    return body


def _escapes(s: str, end: int) -> bool:
    """Whether an odd run of backslashes ends at `end`: the next character is escaped."""
    j = end
    while j > 0 and s[j - 1] == "\\":
        j -= 1
    return (end - j) % 2 == 1


def _drop_cut_member(out: list[str], inside: str) -> None:
    """At a cut inside an object or array (`inside`), drop what has no value yet: a key
    without one, or a word or number stopped mid-way; a whole value stays."""
    k = len(out)
    while k > 0 and out[k - 1] not in _MARKS:
        k -= 1
    mark, tail = (out[k - 1] if k else ""), "".join(out[k:]).strip()
    if mark in "}]":  # the cut follows a whole object or array
        return
    if inside == "{" and mark == ":":  # a value, or the key whose value is missing
        if _whole(tail):
            return
        k -= 1
        while k > 0 and out[k - 1].isspace():
            k -= 1
        if k > 0 and out[k - 1].startswith('"'):
            k -= 1
    elif inside == "[" and _whole(tail):  # an element
        return
    del out[k:]  # a key without its value, or a word or number stopped mid-way


def _whole(tail: str) -> bool:
    """Whether `tail` (the text after the last `,` `:` `{` or `[`) is one whole scalar."""
    try:
        value = json.loads(tail)
    except ValueError:
        return False
    return not isinstance(value, dict | list)


def _drop_trailing_comma(out: list[str]) -> bool:
    """Remove a comma directly before a closing bracket (ignoring blanks)."""
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] == ",":
        del out[k]
        return True
    return False


def _comment_end(s: str, i: int) -> int:
    """Index just past a `//` or `/* */` comment starting at `i`."""
    if s.startswith("//", i):
        j = s.find("\n", i)
        return len(s) if j < 0 else j
    j = s.find("*/", i + 2)
    return len(s) if j < 0 else j + 2
