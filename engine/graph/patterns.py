"""Regular expressions in JSON Schemas: found, and refused when their backtracking can stall.

A graph's `input:` schema and the schemas nodes apply to text (the `validate` node's
`schema:`) may carry `pattern` and `patternProperties`. jsonschema applies them with
Python's backtracking `re.search`, on the event loop, to request and model text: one pattern
whose work grows faster than the text stalls every request of the process. `pattern_problem`
reads the tree `re` parses a pattern into (what it runs) and refuses five shapes:

- a repeat inside a repeat that can split the same text between its iterations (`(a+)+`,
  `(\\w+\\s?)*`): exponential;
- a repeated group whose alternatives can match the same text (`(a|ab)*`), or that can match
  empty text (`(a?)*`): exponential;
- two unbounded repeats in a row that can match the same characters (`\\d+\\d+$`, `.*.*x`):
  quadratic or worse;
- an unanchored pattern that opens with an unbounded repeat (`\\d+x`): `re.search` tries
  every start, and each re-reads the same run: quadratic.

A split is forced, and the shape safe, when a character one side cannot match must come
between (the `-` of `^[a-z]+(-[a-z]+)*$`). The exponential shapes are refused wherever they
stand; the others only when something after them can fail (`[a-z]+` alone matches at once,
so `re.search` never retries it). Possessive repeats (`a++`) and atomic groups
(`(?>...)`) are never backtracked into. The analysis errs towards refusing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

__all__ = ["pattern_problem", "schema_patterns", "schema_problem", "schema_problems"]

Path = tuple[str | int, ...]
Chars = frozenset[str]

LONG = 100
"""A counted repeat that may run more times than this is treated as unbounded."""
MANY = 10
"""A group repeated more times than this multiplies a small ambiguity past any bound."""

_SEARCH = -1
_SAMPLES = frozenset(map(chr, range(128))) | frozenset(
    "\x85\xa0éßΣж٣中\u2028\u3000\u0301€\U0001f600"
)
"""Characters that stand for the rest: ASCII and one of each kind beyond (the pattern's own
literals and range ends are added per pattern, so every overlap of two sets shows in them)."""
_LEAVES = (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN)
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT)

_FIXES = {
    "nested": (
        "can take exponential time: a repeat inside a repeat can split a run of {sample} "
        "between its iterations in exponentially many ways; make the inner repeat "
        "possessive ('a++', 'a*+') or atomic ('(?>a+)'), or start each iteration with a "
        "character the inner repeat cannot match (like the '-' of '^[a-z]+(-[a-z]+)*$')"
    ),
    "alternatives": (
        "can take exponential time: alternatives of a repeated group can match the same "
        "text, so a failing match tries every way of choosing between them; make the "
        "alternatives start differently ('(ab?)*' for '(a|ab)*') or the group atomic "
        "('(?>a|ab)*')"
    ),
    "empty": (
        "can take exponential time: a repeated group can match empty text, so a failing "
        "match tries every way of spreading the text over its iterations; make the group "
        "match at least one character ('(a)*' for '(a?)*')"
    ),
    "adjacent": (
        "can take quadratic time or worse: two unbounded repeats in a row can both match a "
        "run of {sample}, so a failing match tries every split of the run between them; "
        "merge them ('\\d+' for '\\d+\\d+'), make the first possessive ('\\d++') or put a "
        "character only one of them matches between them"
    ),
    "search": (
        "can take quadratic time: it is not anchored, so it is tried at every position of "
        "the text and its unbounded repeat re-reads the same run of {sample} from each; "
        "anchor it with '^', or open it with a look-behind the repeat cannot cross "
        "('(?<!\\d)\\d+' for '\\d+')"
    ),
}


@functools.lru_cache(maxsize=512)
def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` must not be applied to request or model text, or None when it may.

    The reason reads after the pattern (`'^(a+)+$' can take exponential time: ...`) and
    says how to fix it; a pattern that does not compile gets `re`'s own reason.
    """
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression: {exc.msg} at position {exc.pos}"
    except (OverflowError, RecursionError):
        return "is not a valid regular expression: it is too large or nested too deep"
    tree = P.parse(pattern)
    try:
        _Walk(tree).run()
    except _Found as found:
        return _FIXES[found.kind].format(sample=repr(_sample(found.chars)))
    return None


def schema_patterns(schema: Any, at: Path = ()) -> Iterator[tuple[Path, str, bool]]:
    """Every regular expression of a JSON Schema: where it stands (a key of
    `patternProperties`, or the value of a `pattern`), the pattern, and whether it is a key.
    Only schema positions count: a `pattern` inside `default` or `enum` is data."""
    if not isinstance(schema, Mapping):
        return
    if isinstance(schema.get("pattern"), str):
        yield (*at, "pattern"), schema["pattern"], False
    for keyword, value in schema.items():
        where = (*at, keyword)
        if keyword in _ONE and isinstance(value, Mapping):
            yield from schema_patterns(value, where)
        elif keyword in _LIST and isinstance(value, list):
            for i, item in enumerate(value):
                yield from schema_patterns(item, (*where, i))
        elif keyword in _NAMED and isinstance(value, Mapping):
            for name, item in value.items():
                if keyword == "patternProperties" and isinstance(name, str):
                    yield (*where, name), name, True
                yield from schema_patterns(item, (*where, name))


def schema_problems(schema: Any, at: Path = ()) -> Iterator[tuple[Path, bool, str]]:
    """Each pattern of `schema` that `pattern_problem` refuses: where, whether at a key, and
    the message (`properties.code.pattern: pattern '(a+)+' can take exponential time...`)."""
    for where, pattern, key in schema_patterns(schema, at):
        problem = pattern_problem(pattern)
        if problem is not None:
            dotted = ".".join(str(part) for part in where)
            yield where, key, f"{dotted}: pattern {pattern!r} {problem}"


def schema_problem(schema: Any, at: Path = ()) -> str | None:
    """The first of `schema_problems`, for schemas only known at run time."""
    return next((message for _, _, message in schema_problems(schema, at)), None)


_ONE = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
"""Keywords whose value is one schema."""
_LIST = frozenset({"allOf", "anyOf", "items", "oneOf", "prefixItems"})
"""Keywords whose value is a list of schemas."""
_NAMED = frozenset(
    {"$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties", "properties"}
)
"""Keywords whose value maps names to schemas."""


class _Found(Exception):
    """A shape that can stall: exponential ones wherever they stand, the others once
    something after them can fail."""

    def __init__(self, kind: str, chars: Chars) -> None:
        self.kind = kind
        self.chars = chars


@dataclass(frozen=True, slots=True)
class _Piece:
    """A part of the pattern that can give back text to what follows it."""

    key: int
    """The repeat's identity in the tree (the same in every pass over its group)."""
    chars: Chars
    """The characters of the text it could give back and something later could take."""
    unbounded: bool
    body: Any = None
    """The repeated group of a repeat that is not a single character."""
    boundary: bool = False
    """A `\\b` stands between it and what follows."""


@dataclass(frozen=True, slots=True)
class _Conflict:
    kind: str
    chars: Chars


Pending = dict[int, _Piece]


class _Walk:
    """Walks a parsed pattern left to right with the pieces that could still give back
    text; each shape found waits for something after it that can fail."""

    def __init__(self, tree: Any) -> None:
        flags = tree.state.flags | _scoped_flags(tree)
        self.dotall = bool(flags & C.SRE_FLAG_DOTALL)
        self.multiline = bool(flags & C.SRE_FLAG_MULTILINE)
        self.icase = bool(flags & C.SRE_FLAG_IGNORECASE)
        self.ascii = bool(flags & C.SRE_FLAG_ASCII)
        self.tree = tree
        self.universe = _SAMPLES | _literals(tree)
        self.word = frozenset(c for c in self.universe if self._category(C.CATEGORY_WORD, c))

    def run(self) -> None:
        search = _Piece(_SEARCH, self.universe, True)
        self.sequence(self.tree, {_SEARCH: search}, wrap=True)

    # -- the walk ------------------------------------------------------------------------

    def sequence(self, items: Any, pending: Pending, wrap: bool) -> tuple[Pending, list[_Conflict]]:
        waiting: list[_Conflict] = []
        for op, av in items:
            pending, found = self.item(op, av, pending, wrap)
            if waiting and self.can_fail(op, av):
                raise _Found(waiting[0].kind, waiting[0].chars)
            waiting.extend(found)
        return pending, waiting

    def item(
        self, op: Any, av: Any, pending: Pending, wrap: bool
    ) -> tuple[Pending, list[_Conflict]]:
        if op in _LEAVES:
            return self.narrow(pending, self.charset(op, av)), []
        if op is C.AT:
            return self.anchor(av, pending), []
        if op is C.SUBPATTERN:
            return self.sequence(av[3], pending, wrap)
        if op is C.BRANCH or op is C.GROUPREF_EXISTS:
            branches = av[1] if op is C.BRANCH else [av[1], av[2] or []]
            merged: Pending = {}
            waiting: list[_Conflict] = []
            for branch in branches:
                after, found = self.sequence(branch, pending, wrap)
                _merge(merged, after)
                waiting.extend(found)
            return merged, waiting
        if op in _REPEATS:
            return self.repeat(av, pending, wrap)
        if op is C.POSSESSIVE_REPEAT or op is C.ATOMIC_GROUP:
            return self.atomic(op, av, pending)
        if op is C.ASSERT or op is C.ASSERT_NOT:
            return self.lookaround(op, av, pending), []
        # a back-reference re-reads what its group matched: as long as any repeat
        return pending, self.meet(pending, _Piece(id(av), self.universe, True))

    def repeat(self, av: Any, pending: Pending, wrap: bool) -> tuple[Pending, list[_Conflict]]:
        lo, hi, body = av
        unbounded = hi is C.MAXREPEAT or hi > LONG
        key = id(av)
        if len(body) == 1 and body[0][0] in _LEAVES:
            chars = self.charset(*body[0])
            found = self.meet(pending, _Piece(key, chars, True)) if unbounded else []
            after = self.narrow(pending, chars) if lo else dict(pending)
            if hi > lo:
                _merge(after, {key: _Piece(key, chars, unbounded)})
            return after, found
        piece = _Piece(key, self.chars(body), unbounded, body)
        found = self.meet(pending, piece) if unbounded else []
        after, inner = self.sequence(body, pending, wrap)
        if lo >= 2 and inner and self._seq_can_fail(body):
            # the next iteration must match, and it can fail after the run: `(?:a|\s++){2}`
            raise _Found(inner[0].kind, inner[0].chars)
        found += inner
        if hi >= 2 and wrap:
            found += self.wrap(body, {k: p for k, p in after.items() if k not in pending}, hi)
        if hi >= 2 and self.nullable(body) and self.chars(body):
            raise _Found("empty", self.chars(body))
        if (unbounded or hi > MANY) and self.alternatives_overlap(body):
            raise _Found("alternatives", self.chars(body))
        if not lo:
            _merge(after, pending)
        if hi > lo:
            _merge(after, {key: piece})
        return after, found

    def wrap(self, body: Any, inside: Pending, hi: int) -> list[_Conflict]:
        """What one iteration could give back that the next could take: a repeat that can
        split text between its iterations is refused wherever it stands; a conflict of one
        iteration's repeat with a repeat of the next waits like any other."""
        for piece in inside.values():
            if (piece.unbounded or hi > MANY) and self.feasible(body, piece.chars):
                raise _Found("nested", piece.chars)
        _, later = self.sequence(body, inside, wrap=False)
        return later

    def atomic(self, op: Any, av: Any, pending: Pending) -> tuple[Pending, list[_Conflict]]:
        """An atomic group or possessive repeat: checked on its own (its end is a success:
        nothing outside backtracks into it); outside it holds back no text."""
        if op is C.ATOMIC_GROUP:
            lo, hi, body = 1, 1, av
            self.sequence(body, {}, wrap=True)
        else:
            lo, hi, body = av
            self.repeat((lo, hi, body), {}, wrap=True)
        chars = self.chars(body)
        long = hi is C.MAXREPEAT or hi > LONG or self.unbounded(body)
        found = self.meet(pending, _Piece(id(av), chars, True, body)) if long else []
        if lo == 0 or self.nullable(body):
            return dict(pending), found
        return self.narrow(pending, chars), found

    def lookaround(self, op: Any, av: Any, pending: Pending) -> Pending:
        direction, body = av
        if direction == 1:  # a look-ahead backtracks inside, tried where it stands
            self.sequence(body, pending, wrap=True)
        if len(body) != 1 or body[0][0] not in _LEAVES:
            return pending
        chars = self.charset(*body[0])
        if op is C.ASSERT_NOT:
            chars = self.universe - chars
        return self.narrow(pending, chars)

    def anchor(self, at: Any, pending: Pending) -> Pending:
        if at is C.AT_BEGINNING_STRING or (at is C.AT_BEGINNING and not self.multiline):
            return {}
        if at is C.AT_BEGINNING:
            return self.narrow(pending, frozenset("\n"))
        if at is C.AT_BOUNDARY:
            return {k: replace(p, boundary=True) for k, p in pending.items() if self.mixed(p.chars)}
        return pending

    def meet(self, pending: Pending, piece: _Piece) -> list[_Conflict]:
        """Conflicts of an unbounded `piece` with the unbounded pieces before it: both can
        take the same run, and nothing decides where one ends."""
        found = []
        for before in pending.values():
            shared = before.chars & piece.chars
            if not before.unbounded or not shared:
                continue
            if before.boundary and not self.mixed(shared):
                continue  # no `\b` inside a run of word (or of other) characters
            if before.body is not None and not self.feasible(before.body, shared):
                continue
            if piece.body is not None and not self.feasible(piece.body, shared):
                continue
            if before.key == piece.key:
                raise _Found("nested", shared)
            found.append(_Conflict("search" if before.key == _SEARCH else "adjacent", shared))
        return found

    def narrow(self, pending: Pending, chars: Chars) -> Pending:
        """The pieces that still share text after a character of `chars` must be matched."""
        after = {}
        for key, piece in pending.items():
            shared = piece.chars & chars
            if shared:
                after[key] = replace(piece, chars=shared)
        return after

    # -- what a part of the tree can match ------------------------------------------------

    def can_fail(self, op: Any, av: Any) -> bool:
        if op is C.SUBPATTERN:
            return self._seq_can_fail(av[3])
        if op is C.ATOMIC_GROUP:
            return self._seq_can_fail(av)
        if op is C.BRANCH:
            return all(self._seq_can_fail(branch) for branch in av[1])
        if op in _REPEATS or op is C.POSSESSIVE_REPEAT:
            return bool(av[0]) and self._seq_can_fail(av[2])
        return True  # characters, anchors, look-arounds, back-references

    def _seq_can_fail(self, items: Any) -> bool:
        return any(self.can_fail(op, av) for op, av in items)

    def nullable(self, items: Any) -> bool:
        return all(self._item_nullable(op, av) for op, av in items)

    def _item_nullable(self, op: Any, av: Any) -> bool:
        if op in _LEAVES:
            return False
        if op is C.SUBPATTERN:
            return self.nullable(av[3])
        if op is C.ATOMIC_GROUP:
            return self.nullable(av)
        if op is C.BRANCH:
            return any(self.nullable(branch) for branch in av[1])
        if op in _REPEATS or op is C.POSSESSIVE_REPEAT:
            return av[0] == 0 or self.nullable(av[2])
        return True

    def chars(self, items: Any) -> Chars:
        """Every character `items` can match."""
        found: set[str] = set()
        for op, av in items:
            if op in _LEAVES:
                found |= self.charset(op, av)
            elif op in (C.SUBPATTERN, C.ATOMIC_GROUP, C.BRANCH, C.GROUPREF_EXISTS, *_REPEATS):
                found |= self.chars_of(_children(op, av))
            elif op is C.POSSESSIVE_REPEAT:
                found |= self.chars(av[2])
            elif op is C.GROUPREF:
                found |= self.universe
        return frozenset(found)

    def chars_of(self, groups: list[Any]) -> Chars:
        return frozenset().union(*(self.chars(group) for group in groups))

    def unbounded(self, items: Any) -> bool:
        for op, av in items:
            if op in _REPEATS or op is C.POSSESSIVE_REPEAT:
                if av[1] is C.MAXREPEAT or av[1] > LONG or self.unbounded(av[2]):
                    return True
            elif op is C.GROUPREF or any(self.unbounded(g) for g in _children(op, av)):
                return True
        return False

    def feasible(self, items: Any, allowed: Chars) -> bool:
        """Whether `items` can match some non-empty text made only of `allowed`."""
        some = False
        for op, av in items:
            if op in _LEAVES:
                ok = bool(self.charset(op, av) & allowed)
            elif op in _REPEATS or op is C.POSSESSIVE_REPEAT:
                ok = self.feasible(av[2], allowed)
            elif op in (C.SUBPATTERN, C.ATOMIC_GROUP, C.BRANCH, C.GROUPREF_EXISTS):
                ok = any(self.feasible(group, allowed) for group in _children(op, av))
            else:
                ok = op is C.GROUPREF
            if ok:
                some = True
            elif not self._item_nullable(op, av):
                return False
        return some

    def alternatives_overlap(self, items: Any) -> bool:
        """Whether two alternatives of an alternation in `items` can match the same text (or
        one a beginning of the other): they share their first characters, position by
        position, as far as both are single characters."""
        for op, av in items:
            if op is C.BRANCH:
                runs = [self._leading(branch) for branch in av[1]]
                if any(_overlap(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]):
                    return True
            inside = op is not C.ATOMIC_GROUP and op is not C.POSSESSIVE_REPEAT
            if inside and any(self.alternatives_overlap(g) for g in _children(op, av)):
                return True
        return False

    def _leading(self, branch: Any) -> tuple[list[Chars], Chars | None]:
        """The character sets a branch opens with, one per position while they are single
        characters, then the characters that may follow (None: the branch may end there)."""
        sets: list[Chars] = []
        for i, (op, av) in enumerate(branch):
            if op not in _LEAVES:
                rest = branch[i:]
                return sets, None if self.nullable(rest) else self.chars(rest)
            sets.append(self.charset(op, av))
        return sets, None

    def mixed(self, chars: Chars) -> bool:
        """Whether `chars` holds word characters and others (`\\b` can hold inside a run)."""
        return bool(chars & self.word) and bool(chars - self.word)

    # -- character sets -------------------------------------------------------------------

    def charset(self, op: Any, av: Any) -> Chars:
        return frozenset(c for c in self.universe if self._matches(op, av, c))

    def _matches(self, op: Any, av: Any, c: str) -> bool:
        variants = {c, c.lower(), c.upper(), c.swapcase()} if self.icase else {c}
        return any(self._matches_exactly(op, av, v) for v in variants if len(v) == 1)

    def _matches_exactly(self, op: Any, av: Any, c: str) -> bool:
        if op is C.LITERAL:
            return ord(c) == int(av)
        if op is C.NOT_LITERAL:
            return ord(c) != int(av)
        if op is C.ANY:
            return self.dotall or c != "\n"
        negate = bool(av) and av[0][0] is C.NEGATE
        hit = any(self._in(kind, value, c) for kind, value in av[negate:])
        return hit != negate

    def _in(self, kind: Any, value: Any, c: str) -> bool:
        if kind is C.LITERAL:
            return ord(c) == int(value)
        if kind is C.RANGE:
            return bool(value[0] <= ord(c) <= value[1])
        return self._category(value, c)

    def _category(self, category: Any, c: str) -> bool:
        if category in (C.CATEGORY_DIGIT, C.CATEGORY_NOT_DIGIT):
            hit = c in "0123456789" if self.ascii else c.isdecimal()
        elif category in (C.CATEGORY_SPACE, C.CATEGORY_NOT_SPACE):
            hit = c in " \t\n\r\f\v" if self.ascii else c.isspace()
        else:  # word
            hit = (c.isalnum() or c == "_") and (c.isascii() or not self.ascii)
        negated = category in (C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_SPACE, C.CATEGORY_NOT_WORD)
        return hit != negated


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-sequences of one item of a parsed pattern."""
    if op is C.SUBPATTERN:
        return [av[3]]
    if op is C.ATOMIC_GROUP:
        return [av]
    if op is C.BRANCH:
        return list(av[1])
    if op is C.GROUPREF_EXISTS:
        return [av[1], av[2] or []]
    if op in _REPEATS or op is C.POSSESSIVE_REPEAT:
        return [av[2]]
    if op is C.ASSERT or op is C.ASSERT_NOT:
        return [av[1]]
    return []


def _overlap(a: tuple[list[Chars], Chars | None], b: tuple[list[Chars], Chars | None]) -> bool:
    """Whether two `_leading` openings can match the same text, or one a beginning of the
    other's."""
    (sets_a, rest_a), (sets_b, rest_b) = sorted((a, b), key=lambda run: len(run[0]))
    if any(not x & y for x, y in zip(sets_a, sets_b, strict=False)):
        return False
    if rest_a is None:
        return True  # the shorter may end where the longer goes on
    following = sets_b[len(sets_a)] if len(sets_b) > len(sets_a) else rest_b
    return following is None or bool(rest_a & following)


def _merge(into: Pending, more: Pending) -> None:
    for key, piece in more.items():
        old = into.get(key)
        into[key] = piece if old is None else replace(old, chars=old.chars | piece.chars)


def _scoped_flags(items: Any) -> int:
    """Flags set by `(?i:...)` groups anywhere in the pattern (taken as the whole's: it only
    widens the sets compared)."""
    flags = 0
    for op, av in items:
        if op is C.SUBPATTERN:
            flags |= av[1]
        for group in _children(op, av):
            flags |= _scoped_flags(group)
    return flags


def _literals(items: Any) -> Chars:
    """The characters a pattern names, with the neighbours of its range ends."""
    found: set[str] = set()
    for op, av in items:
        if op is C.LITERAL or op is C.NOT_LITERAL:
            found.add(chr(av))
        elif op is C.IN:
            for kind, value in av:
                if kind is C.LITERAL:
                    found.add(chr(value))
                elif kind is C.RANGE:
                    lo, hi = value
                    found.update(chr(n) for n in (lo, hi, max(lo - 1, 0), min(hi + 1, 0x10FFFF)))
        for group in _children(op, av):
            found |= _literals(group)
    return frozenset(found)


def _sample(chars: Chars) -> str:
    """A character of `chars` to show in a message, a plain one when there is."""
    for preferred in ("a", "1", " ", "x"):
        if preferred in chars:
            return preferred
    plain = sorted(c for c in chars if c.isprintable() and c.isascii())
    return plain[0] if plain else min(chars)
