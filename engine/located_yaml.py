"""YAML parsing that keeps the line and column of every key and value and rejects duplicates."""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import SpecError

__all__ = ["MAX_BYTES", "Located", "Position", "load_yaml", "node_of", "read_file"]

Path = tuple[str | int, ...]

_MAX_NODES = 200_000
"""Bound on values built from one document (alias bombs expand to millions)."""
_MAX_DEPTH = 200
_MAX_INT_BITS = 10_000
"""Widest whole number read, as wide as expressions may compute (hexadecimal and octal
numbers escape Python's limit on decimal digits, and a number past it cannot be printed)."""
MAX_BYTES = 1 << 20
"""Largest graph or policy file read (1 MiB: real ones are a few KB; data such as corpora
and principles live in files the nodes read). Parsing is bounded by it too."""


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
"""Opening a named pipe with it returns at once, writer or not (0 where there is none)."""

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (about 10x faster), else pure Python."""


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in a file; `quoted` marks a quoted scalar's opening quote."""

    line: int
    column: int
    quoted: bool = False


@dataclass(slots=True)
class Located:
    """A parsed YAML document and where each of its keys and values stands."""

    data: Any
    path: str
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)

    def where(self, at: Path, *, key: bool = False) -> Position:
        """The position of the value (or key) at `at`, or of its closest located ancestor."""
        table = self.keys if key else self.values
        probe = tuple(at)
        while probe:
            if probe in table:
                return table[probe]
            if not key and probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return self.values.get((), Position(1, 1))

    def error(
        self,
        message: str,
        at: Path,
        *,
        key: bool = False,
        node_id: str | None = None,
        offset: int = 0,
    ) -> SpecError:
        """A `SpecError` located at `at` (plus `offset` columns into a scalar)."""
        pos = self.where(at, key=key)
        column = pos.column + offset + (1 if pos.quoted and offset else 0)
        return SpecError(message, path=self.path, line=pos.line, column=column, node_id=node_id)


def node_of(at: Path) -> str | None:
    """The innermost node id a path into a graph file points into (`nodes.ID...`), if any."""
    node = None
    for i, part in enumerate(at[:-1]):
        if part == "nodes" and isinstance(at[i + 1], str):
            node = str(at[i + 1])
    return node


def read_file(path: str) -> bytes:
    """The bytes of a graph or policy file, reading at most `MAX_BYTES` (so a device such as
    /dev/zero or a huge file cannot exhaust memory).

    Raises:
        SpecError: missing, unreadable, or too large; `path` is the file as named.
    """
    try:
        # Non-blocking open: a named pipe nobody writes to reads as empty instead of waiting
        # for a writer forever; reads block again, so a pipe that is written (stdin) works.
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
        with open(fd, "rb") as file:
            if _NONBLOCK:
                os.set_blocking(fd, True)
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("file not found; check the path", path=path or "''") from None
    except IsADirectoryError:
        raise SpecError("this is a folder, not a file; name the YAML file", path=path) from None
    except OSError as exc:
        raise SpecError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    except ValueError:  # a NUL in the name
        raise SpecError("not a usable file name", path=repr(path)) from None
    if len(data) > MAX_BYTES:
        raise SpecError(_too_large(), path=path)
    return data


def _too_large() -> str:
    return (
        f"the file is larger than {MAX_BYTES >> 20} MiB, the limit for graph and policy "
        "files; move bulk data (corpora, principles, examples) into files the nodes read"
    )


def _too_wide() -> str:
    return (
        f"invalid value: a whole number wider than {_MAX_INT_BITS:,} bits; write a smaller "
        "number, or quote it if it is text"
    )


def load_yaml(text: str | bytes, path: str) -> Located:
    """Parse one YAML document, keeping positions; every failure is a located `SpecError`."""
    if len(text) > MAX_BYTES * (1 if isinstance(text, bytes) else 4):
        raise SpecError(_too_large(), path=path)
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            start = raw.rfind(b"\n", 0, exc.start) + 1  # the line it is on
            raise SpecError(
                f"the file is not UTF-8 text (byte {exc.start + 1}); save it as UTF-8",
                path=path,
                line=raw.count(b"\n", 0, exc.start) + 1,
                column=len(raw[start : exc.start].decode("utf-8", "replace")) + 1,
            ) from exc
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        if mark is not None and mark.index < len(text) and text[mark.index] == "\t":
            reason += " (a tab: YAML indents with spaces only; replace the tab with spaces)"
        elif mark is not None and mark.column > 1024 and "mapping values" in reason:
            reason += " (a key of more than 1024 characters? YAML reads none; shorten it)"
        raise SpecError(
            f"invalid YAML: {reason}",
            path=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.reader.ReaderError as exc:
        raise SpecError(
            f"invalid YAML: character {exc.character!r} at position {exc.position} is not "
            "allowed; remove it",
            path=path,
        ) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", path=path) from exc
    except RecursionError as exc:
        raise SpecError("invalid YAML: nesting is too deep", path=path) from exc
    located = Located(data=None, path=path)
    if root is None:
        return located
    builder = _Builder(located, loader)
    located.data = builder.build(root, (), 0)
    return located


class _Builder:
    def __init__(self, located: Located, loader: yaml.SafeLoader) -> None:
        self.located = located
        self.loader = loader
        self.count = 0

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self._fail(
                node,
                f"the document holds more than {_MAX_NODES:,} values once its aliases are "
                "expanded; an alias (*name) repeating a large value many times?",
            )
        if depth > _MAX_DEPTH:
            raise self._fail(
                node,
                f"values are nested more than {_MAX_DEPTH} levels deep; flatten them (or an "
                "alias is used inside the value it names)",
            )
        self.located.values[path] = _position(node)
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: Node) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self._fail(node, f"invalid value: {exc.problem}") from exc
        except (ValueError, OverflowError) as exc:
            if "integer string conversion" in str(exc):  # more decimal digits than Python reads
                raise self._fail(node, _too_wide()) from exc
            raise self._fail(node, f"invalid value: {exc}") from exc
        if type(value) is int and value.bit_length() > _MAX_INT_BITS:
            raise self._fail(node, _too_wide())
        if not isinstance(value, str | int | float | bool) and value is not None:
            # dates, binary and the like: keep the text, moat's formats have no such types
            return node.value if isinstance(node, ScalarNode) else str(value)
        return value

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[Any, Any]:
        seen: dict[Hashable, Node] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._key(key_node)
            if key in seen:
                first = _position(seen[key])
                raise self._fail(
                    key_node,
                    f"duplicate key {key!r} (first defined at line {first.line}); YAML keeps "
                    "only the last one, so remove or rename one of them",
                )
            seen[key] = key_node
        try:
            self.loader.flatten_mapping(node)
        except yaml.YAMLError as exc:  # one located line, not PyYAML's multi-line report
            mark = getattr(exc, "problem_mark", None)
            at = Position(mark.line + 1, mark.column + 1) if mark else _position(node)
            problem = getattr(exc, "problem", None) or "not a mapping"
            raise SpecError(
                f"invalid merge key (`<<`): {problem}; merge a mapping (`<<: *name`) or a "
                "list of them",
                path=self.located.path,
                line=at.line,
                column=at.column,
            ) from exc
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            child = (*path, key)
            self.located.keys[child] = _position(key_node)
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def _key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            raise self._fail(node, "a mapping key must be a plain scalar, not a list or mapping")
        key = self._scalar(node)
        # Keys are names: `on:`, `no:` or `~:` mean the text written, not the YAML 1.1
        # boolean or null it resolves to (which would read back as 'True', 'None').
        return key if isinstance(key, str) else node.value

    def _fail(self, node: Node, message: str) -> SpecError:
        pos = _position(node)
        return SpecError(message, path=self.located.path, line=pos.line, column=pos.column)


def _position(node: Node) -> Position:
    mark = node.start_mark
    quoted = isinstance(node, ScalarNode) and node.style in ("'", '"')
    return Position(mark.line + 1, mark.column + 1, quoted)
