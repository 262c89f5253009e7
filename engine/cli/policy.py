"""The `moat policy` commands: list, show, apply, rollback, diff and history."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from engine.cli import file_path, graph_file, policy_file, store_file
from engine.errors import MoatError, PolicyError, StoreError, printable
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.policy.manager import (
    apply_policy,
    diff_policies,
    load_policy_file,
    rollback_policy,
    validate_policy,
)
from engine.policy.validate import PolicyFile
from engine.report.columns import columns
from engine.store.policy_ops import (
    Active,
    graph_paths,
    guard_decisions,
    poll_active,
    version_numbers,
)
from engine.store.policy_tables import listed
from engine.store.store import Row, Store

__all__ = ["add_commands"]

_GRAPHS_DIR = Path("graphs")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:@[A-Za-z0-9][A-Za-z0-9_.-]*)*")
"""A policy name, with the `@ORIGIN` (`@ORIGIN.2`) a sync may have added."""
_VERSION = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1
"""The largest version SQLite can hold; anything above cannot exist."""
_HISTORY = 20
"""Activations `moat policy history` shows unless told (`moat runs` shows as many runs): a
policy hot-swapped by a script can have thousands."""
_SHOWN = 60
"""Longest name echoed back in full; longer ones are cut (a message stays readable)."""


def add_commands(sub: Any) -> None:
    """Register `moat policy ...` on the `moat` subparsers."""
    policy = sub.add_parser("policy", help="versioned policy snapshots: list, apply, rollback")
    cmds = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    cmds.required = True

    p = _command(cmds, "list", "every policy with its active and latest version", cmd_list)
    p = _command(cmds, "show", "one version's settings (default: the active one)", cmd_show)
    p.add_argument("name", nargs="?", metavar="NAME[@VERSION]")
    p.add_argument("--version", type=_version_arg, metavar="N")

    p = _command(cmds, "apply", "validate a policy file and make it active", cmd_apply)
    p.add_argument("file", type=policy_file, metavar="FILE")
    p.add_argument(
        "--allow-new-keys", action="store_true", help="accept keys the active version lacks"
    )
    p.add_argument(
        "--graph",
        action="append",
        default=[],
        type=graph_file,
        metavar="GRAPH",
        help="also check against this graph (repeatable); always checked: the graphs in "
        "graphs/ and those of the store's runs that read this policy",
    )
    p.add_argument("--reason", default="apply", help="recorded with the activation")

    p = _command(
        cmds, "rollback", "undo the latest activation (see README: Policies)", cmd_rollback
    )
    p.add_argument("name", nargs="?", metavar="NAME[@VERSION]")
    p.add_argument("--to", type=_version_arg, metavar="VERSION", help="the version to reactivate")

    p = _command(cmds, "diff", "key-by-key differences (NAME, NAME@VERSION or FILE)", cmd_diff)
    p.add_argument("a", type=policy_file, metavar="A")
    p.add_argument("b", type=policy_file, metavar="B")

    p = _command(cmds, "history", "the latest activations, oldest first", cmd_history)
    p.add_argument("name", nargs="?", metavar="NAME[@VERSION]")
    p.add_argument(
        "--limit",
        type=_limit,
        default=_HISTORY,
        metavar="N",
        help=f"show the newest N activations (default {_HISTORY})",
    )


def _command(cmds: Any, name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = cmds.add_parser(name, help=help_text)
    p.add_argument(
        "--db", type=file_path, metavar="PATH", help="the store (default: $MOAT_DB or moat.db)"
    )
    p.set_defaults(handler=handler)
    return p


def _open(args: argparse.Namespace, *, write: bool = False, create: bool = False) -> Store:
    path = store_file(args.db)
    if write and not create and not os.path.lexists(path):  # a mistyped --db: leave no file
        raise StoreError(
            f"{path}: no such store; name the store the policy was applied to with --db PATH "
            "(or $MOAT_DB)"
        )
    try:
        return Store.open(path, readonly=not write)
    except (OSError, ValueError) as exc:  # a name the file system refuses (too long, ...)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreError(f"{_shown(path)}: cannot open the store: {reason}") from None


def _shown(text: str) -> str:
    """`text` quoted for a message, cut when it is long."""
    cut = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    return repr(cut)


def _version_arg(text: str) -> int:
    """An argparse type: a version number (1 or more)."""
    try:
        return _version(text, text)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version(text: str, spec: str) -> int:
    if not _VERSION.fullmatch(text) or not 1 <= int(text) <= _MAX_VERSION:
        raise PolicyError(
            f"{_shown(spec)}: a version is a whole number from 1 (e.g. 2), got {_shown(text)}"
        )
    return int(text)


def _limit(text: str) -> int:
    """An argparse type: how many activations to show (1 or more)."""
    digits = text.strip()
    if not _VERSION.fullmatch(digits) or int(digits[:20]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of activations (1 or more)")
    return min(int(digits[:20]), _MAX_VERSION - 1)  # more than any store holds


def _parse_ref(spec: str, names: Collection[str]) -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION`, as every policy command takes it.

    A name may itself hold `@`: a policy synced from another store whose name the central
    store already had arrives as `NAME@ORIGIN`. So the text splits at its last `@` only
    when digits follow (`NAME@ORIGIN@2` is version 2 of `NAME@ORIGIN`), and a name the
    store holds is always taken whole.

    Raises:
        PolicyError: an empty or malformed name, or a version that is not a number >= 1
            (`NAME@abc` where the store holds NAME but not NAME@abc).
    """
    if spec in names:
        return spec, None
    name, at, tail = spec.rpartition("@")
    if at and _VERSION.fullmatch(tail):
        return _checked_name(name, spec), _version(tail, spec)
    if at and _NAME.fullmatch(name) and (name in names or not _NAME.fullmatch(spec)):
        _version(tail, spec)  # raises: NAME@abc meant a version of NAME
    return _checked_name(spec, spec), None


def _checked_name(name: str, spec: str) -> str:
    if not _NAME.fullmatch(name):
        raise PolicyError(
            f"{_shown(spec)} is not a policy name: write NAME or NAME@VERSION, where NAME is "
            "letters, digits, '_', '.' or '-', and @ORIGIN after a synced one (e.g. triage@2, "
            "triage@08bbdfd63212da06@2)"
        )
    return name


def _target(store: Store, spec: str | None, version: int | None) -> tuple[str, int | None]:
    """The policy and version a command names, from `NAME[@VERSION]` and a version option."""
    names = [str(row["name"]) for row in store.list_policies()]
    name, at = _parse_ref(spec, names) if spec is not None else (None, None)
    if at is not None and version is not None and at != version:
        raise PolicyError(
            f"{_shown(spec or '')} and the version option name two versions ({at} and "
            f"{version}); give one"
        )
    return _resolve_name(store, name, names), at if at is not None else version


def _resolve_name(store: Store, name: str | None, names: list[str]) -> str:
    if name is not None:
        if name not in names:
            listed = ", ".join(names) or "none yet"
            raise PolicyError(
                f"no policy named {_shown(name)} in {store.path} (policies: {listed}); "
                "add one with `moat policy apply FILE`"
            )
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise PolicyError(f"{store.path} has no policies yet; add one with `moat policy apply`")
    raise PolicyError(f"{store.path} holds several policies; name one of: {', '.join(names)}")


def _versions(store: Store, name: str, *, status: str | None = None) -> str:
    """The policy's stored versions (or those with `status`) for a message, as ranges."""
    return listed(version_numbers(store, name, status=status))


def _no_version(store: Store, name: str, version: int | None) -> PolicyError:
    return PolicyError(
        f"policy '{name}' has no version {version}; stored versions: {_versions(store, name)}"
    )


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def cmd_list(args: argparse.Namespace) -> int:
    """Print one line per policy."""
    with _open(args) as store:
        policies = store.list_policies()
        if not policies:
            print(f"no policies in {store.path}; add one with `moat policy apply FILE`")
            return 0
        rows = [["NAME", "ACTIVE", "LATEST", "VERSIONS", "BAD"]]
        for row in policies:
            active = row["active"] if row["active"] is not None else "-"
            bad = _versions(store, row["name"], status="bad") or "-"
            name = printable(row["name"])  # a synced store's names came from elsewhere
            rows.append([name, str(active), str(row["latest"]), str(row["versions"]), bad])
    print(columns(rows, right={1, 2, 3}), end="")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one version's metadata and settings (YAML)."""
    with _open(args) as store:
        name, version = _target(store, args.name, args.version)
        row = store.active_policy(name) if version is None else store.get_policy(name, version)
        if row is None:
            raise _no_version(store, name, version)
        print(f"# policy {name} version {row['version']} ({row['status']})")
        print(f"# parent: {row['parent_version'] or '-'}  created: {_when(row['created_at'])}")
        print(f"# sha256: {row['content_hash']}")
        print(yaml.safe_dump(row["body"], sort_keys=False, allow_unicode=True), end="")
    return 0


def _recorded(args: argparse.Namespace, name: str) -> tuple[list[str], Active | None]:
    """The graph files the store's runs of policy `name` recorded, and its active version
    (neither on a store not made yet: `apply` makes it)."""
    path = store_file(args.db)
    if not os.path.lexists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0):
        return [], None
    with _open(args) as store:
        return graph_paths(store, name), poll_active(store, name)


def _reader(path: str, name: str) -> Graph | None:
    """The graph at `path` if it loads and reads policy `name`; a warning if it does not load."""
    try:
        graph = load_graph(path)
    except MoatError as exc:
        print(f"warning: {path} does not load, not checked against it: {exc}", file=sys.stderr)
        return None
    return graph if graph.policy_name == name else None


def _graphs_for(loaded: PolicyFile, given: list[str], recorded: list[str]) -> list[Graph]:
    """The graphs a new version of the policy is checked against: the `--graph` ones,
    those in ./graphs/ that read it and those the store's runs of it recorded, each once.

    Raises:
        PolicyError: a `--graph` reads another policy (or none): checked against it, the
            policy would seem to serve a graph that never reads it.
    """
    name = loaded.name
    graphs = [load_graph(path) for path in given]
    for path, given_graph in zip(given, graphs, strict=True):
        if given_graph.policy_name != name:
            raise _not_its_graph(loaded, path, given_graph)
    seen = {os.path.realpath(path) for path in given}
    local = sorted([*_GRAPHS_DIR.glob("*.yaml"), *_GRAPHS_DIR.glob("*.yml")])
    for path in [*map(str, local), *recorded]:
        if os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        if path in recorded and not os.path.isfile(path):  # moved or deleted since
            print(
                f"note: {path}, the graph of earlier runs of policy '{name}', no longer "
                "exists; not checked against it",
                file=sys.stderr,
            )
            continue
        reader = _reader(path, name)
        if reader is not None:
            graphs.append(reader)
    return graphs


def _not_its_graph(loaded: PolicyFile, path: str, graph: Graph) -> PolicyError:
    name, located = loaded.name, loaded.located
    named = "name" in located.data
    if graph.policy_name is None:
        reads = "reads no policy (it has no `policy:`)"
        fix = f"add `policy: FILE` to {path}, or pass the graph that reads '{name}'"
    else:
        reads = f"reads policy '{graph.policy_name}' (its `policy:` file {graph.policy_path})"
        fix = (
            f"to change what that graph reads, {'write' if named else 'add'} "
            f"`name: {graph.policy_name}` {'in' if named else 'to'} the file; else pass the "
            f"graph that reads '{name}'"
        )
    pos = located.where(("name",)) if named and located.values else None
    how = "named" if named else "named after its file"
    return PolicyError(
        f"the policy is {how} '{name}', but --graph {path} {reads}: it would never read "
        f"this version; {fix}",
        path=located.path or None,
        line=pos.line if pos is not None else None,
        column=pos.column if pos is not None else None,
    )


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate FILE against the active version and the graphs that read it; activate it.

    A policy no graph can be found for is refused: a value its graph cannot take would
    only show as failed requests once it is live.
    """
    loaded = load_policy_file(args.file)  # read once: what is validated is what is stored
    name = loaded.name
    recorded, active = _recorded(args, name)
    graphs = _graphs_for(loaded, args.graph, recorded)
    if not graphs:
        _refuse_unchecked(loaded, active, args)
    with _open(args, write=True, create=True) as store:
        applied = apply_policy(
            store,
            loaded,
            graphs=graphs,
            allow_new_keys=args.allow_new_keys,
            reason=args.reason,
        )
    names = ", ".join(dict.fromkeys(g.name for g in graphs))
    print(f"{applied.message} (checked against {names})")
    return 0


def _refuse_unchecked(loaded: PolicyFile, active: Active | None, args: argparse.Namespace) -> None:
    """Refuse a policy no graph was found for, after what can be checked without one (a
    mistake located in the file says more than that no graph was found)."""
    validate_policy(
        loaded.body,
        loaded.located,
        previous=active.body if active else None,
        previous_version=active.version if active else None,
        allow_new_keys=args.allow_new_keys,
    )
    raise PolicyError(
        f"no graph to check policy '{loaded.name}' against: none in {_GRAPHS_DIR}/ reads it, "
        "and the store records no run of it whose graph is still there; pass --graph GRAPH "
        "(the graph that reads it), so a value it cannot take is refused before it goes live",
        path=args.file,
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    """Reactivate the previous good version, or `--to VERSION`."""
    with _open(args, write=True) as store:
        name, to = _target(store, args.name, args.to)
        rolled = rollback_policy(store, name, to=to)
        now = store.get_policy(name, rolled.pin.version or 0)
    print(rolled.message)
    if now is not None and now["status"] == "bad":
        print(
            f"note: version {rolled.pin.version} is marked bad and stays so; `moat policy "
            "apply` a fixed file to leave it",
            file=sys.stderr,
        )
    return 0


def _is_file(spec: str) -> bool:
    """Whether a diff side names a file (anything on disk, or a path-like name) rather than
    a stored `NAME[@VERSION]`."""
    if os.sep in spec or spec.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(spec).exists() and not Path(spec).is_dir()
    except (OSError, ValueError):  # a name the file system refuses is no file
        return False


def _body_of(spec: str, store: Store | None) -> tuple[str, dict[str, Any]]:
    if _is_file(spec):
        _, body, _ = load_policy_file(spec, stored=False)
        return spec, body
    if store is None:
        raise PolicyError(f"{_shown(spec)} is not a file and there is no store to look it up in")
    name, version = _target(store, spec, None)
    row = store.active_policy(name) if version is None else store.get_policy(name, version)
    if row is None:
        raise _no_version(store, name, version)
    return f"{name}@{row['version']}", dict(row["body"])


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def cmd_diff(args: argparse.Namespace) -> int:
    """Print added (+), removed (-) and changed (~) dotted keys from A to B."""
    needs_store = any(not _is_file(s) for s in (args.a, args.b))
    store = _open(args) if needs_store else None
    try:
        label_a, a = _body_of(args.a, store)
        label_b, b = _body_of(args.b, store)
    finally:
        if store is not None:
            store.close()
    changes = diff_policies(a, b)
    print(f"--- {label_a}\n+++ {label_b}")
    if not changes:
        print("(no differences)")
    for change in changes:
        # a key with a line break or escape (a file from elsewhere) is shown quoted, escaped
        key = change.key if change.key.isprintable() else _show(change.key)
        if change.kind == "added":
            print(f"+ {key}: {_show(change.new)}")
        elif change.kind == "removed":
            print(f"- {key}: {_show(change.old)}")
        else:
            print(f"~ {key}: {_show(change.old)} -> {_show(change.new)}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print the policy's newest `--limit` activations, oldest first."""
    with _open(args) as store:
        name, version = _target(store, args.name, None)
        if version is not None and store.get_policy(name, version) is None:
            raise _no_version(store, name, version)
        rows = store.policy_history(name, version=version, limit=args.limit + 1)
        current = poll_active(store, name)
        if len(rows) > args.limit:  # one more than shown: say that there are earlier ones
            rows = rows[1:]
            print(
                f"(earlier activations not shown; --limit {args.limit * 10} shows more)",
                file=sys.stderr,
            )
        now = current.activation_id if current is not None else None
        table = [["#", "ACTIVATED", "VERSION", "STATUS", "REASON"]]
        for row in rows:
            table.append(
                [
                    str(row["id"]),
                    _when(row["activated_at"]),
                    str(row["version"]),
                    _activation_status(row, now),
                    printable(row["reason"] or "-"),
                ]
            )
        versions = {int(row["version"]) for row in rows}
        guard = [
            [_when(d["started_at"]), printable(str(d["decision"])), _guard_reason(d)]
            for d in guard_decisions(store, name, version=version)
            if _judged(d) in versions
        ]
    print(columns(table, right={0, 2}), end="")
    if guard:  # why the regression guard kept or rolled back the versions shown
        print("\nguard decisions:")
        print(columns([["JUDGED", "DECISION", "WHY"], *guard]), end="")
    return 0


def _judged(decision: dict[str, Any]) -> int | None:
    """The version a guard decision judged (kept, or rolled back from)."""
    payload = decision.get("payload") or {}
    found = payload.get("version", payload.get("from_version"))
    return found if isinstance(found, int) else None


def _guard_reason(decision: dict[str, Any]) -> str:
    payload = decision.get("payload") or {}
    reason = payload.get("reason")
    return printable(str(reason)) if reason else "-"


def _activation_status(row: Row, current: int | None) -> str:
    """What became of an activation: `active` for the current one alone (an earlier one of
    the same version was superseded since), else its version's status (`bad` stays)."""
    status = str(row["status"] or "-")
    if row["id"] == current:
        return "active (bad)" if status == "bad" else "active"
    return "superseded" if status == "active" else status
