"""`moat run`: answer a batch (or one request) with a graph, record it, write results.

Crash safety: a result line is appended to `--out` only after the request's rows are
committed to the store, each batch of lines in one `write`, so a `kill -9` leaves no torn
or duplicated line and nothing in `--out` the store does not know. `--resume RUN_ID` then
re-writes any line the store has but the file lost, and answers only what the store lacks.

The `Pipeline` starts (or claims), counts and finishes the run; this module parses the
arguments, wires the out file, the progress bar and the terminal UI to it, and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from engine.api import BatchSummary, Pipeline
from engine.cli import (
    file_path,
    graph_file,
    identifier,
    not_stdin,
    on_terminal,
    store_file,
    telemetry,
)
from engine.cli.outfile import OutFailed, OutWriter, reconcile_out
from engine.cli.stopping import stoppable
from engine.collector import settled_heap
from engine.errors import MoatError, SpecError, StoreError, printable
from engine.events import RequestRecord
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.requests import BatchItem, RequestLimits, count_requests, decode_request, read_jsonl
from engine.stats import FAILED_STATUSES, percentile
from engine.store.schema import STORE_COMPANIONS
from engine.store.store import Store, run_state

__all__ = ["add_commands", "cmd_run"]

_MAX_BYTES = 1 << 30


def add_commands(sub: Any) -> None:
    """Register `moat run` on the `moat` subparsers."""
    p = sub.add_parser("run", help="answer requests with a graph and record everything")
    p.add_argument(
        "graph",
        type=graph_file,
        metavar="GRAPH",
        nargs="?",
        help="the graph file (optional with --resume)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--input", type=file_path, metavar="FILE.jsonl", help="one JSON request per line"
    )
    src.add_argument("--json", metavar="JSON", help="one request as a JSON object")
    src.add_argument("--prompt", metavar="TEXT", help='one request: {"prompt": TEXT}')
    p.add_argument(
        "--out",
        type=file_path,
        metavar="FILE.jsonl",
        help="append result lines here (else, or with -, stdout)",
    )
    p.add_argument(
        "--db", type=file_path, metavar="PATH", help="the store (default: $MOAT_DB or moat.db)"
    )
    p.add_argument(
        "--policy", type=file_path, metavar="FILE", help="apply this policy snapshot first"
    )
    p.add_argument("--concurrency", type=int, default=16, metavar="N")
    p.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="N",
        help="largest request (bytes of JSON) to read; default: the graph's limits (1 MiB)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PROVIDER:MODEL",
        help="rebind a logical model, e.g. large=openai:gpt-4o-mini",
    )
    p.add_argument(
        "--resume", metavar="RUN_ID", type=identifier, help="answer only what that run has not"
    )
    p.add_argument(
        "--seed", type=int, help="seed of the simulated models (default 0; a resume: the run's)"
    )
    p.add_argument("--tui", action="store_true", help="watch the run in the terminal UI")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary")
    p.add_argument(
        "--allow-unpriced",
        action="store_true",
        help="run a graph with a cost budget even if a model has no price (it costs $0)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="answer the batch on Ray workers: a local instance, `auto`, or a cluster address",
    )
    p.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: one per CPU)")
    telemetry.add_arguments(p, batch=True)
    p.set_defaults(handler=cmd_run)


@dataclass(slots=True)
class _Plan:
    graph: Graph
    input_path: str | None
    single: str | None
    """The one request's JSON text (`--json`, `--prompt`)."""
    single_source: str
    out: str | None
    limits: RequestLimits
    run_id: str | None = None
    """The run to resume."""
    total: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    """The `--model` rebindings (a resume: the run's)."""
    seed: int = 0
    """The simulated models' seed (a resume: the run's)."""
    started: str | None = None
    """The run, once it exists: from then on requests have run, so a failure exits 1."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run the batch; exit 0 all ok/partial, 1 some failed, 2 unusable, 130 interrupted."""
    models = _check_arguments(args)
    db = store_file(args.db)
    plan = _resume_plan(args, db, models) if args.resume else _new_plan(args, models)
    if plan.total == 0:
        what = f"run {plan.run_id}" if plan.run_id else plan.input_path
        print(f"moat: {what} has no requests (no non-blank line); nothing to run", file=sys.stderr)
        return 0
    try:
        return anyio.run(_run, plan, args, db)
    except (StoreError, OutFailed) as exc:
        if plan.started is None:
            raise  # nothing ran: exit 2
        print(f"moat: {exc}", file=sys.stderr)
        what = "the store failed; " if isinstance(exc, StoreError) else "--out failed; "
        return _stopped(plan.started, args, what, 1)
    except BrokenPipeError:  # the reader of the result lines went away (`| head -1`)
        if plan.started is None:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (nothing more)
        what = "the output was closed (broken pipe) before the batch ended; "
        return _stopped(plan.started, args, what, 130)


def _check_arguments(args: argparse.Namespace) -> dict[str, str]:
    """Every argument checked before anything is created: a bad one exits 2, nothing ran.

    Returns:
        The `--model` rebindings.
    """
    args.telemetry = telemetry.options(args)  # first: `--otel GRAPH` takes the graph
    if args.concurrency < 1:
        raise SpecError(f"--concurrency {args.concurrency}: must be at least 1")
    if args.max_request_bytes is not None and not 1 <= args.max_request_bytes <= _MAX_BYTES:
        raise SpecError(
            f"--max-request-bytes {args.max_request_bytes}: give 1 to {_MAX_BYTES} (1 GiB)"
        )
    _check_files(args)
    workers = getattr(args, "workers", None)
    if workers is not None and args.ray is None:
        raise SpecError(
            f"--workers {workers}: workers are Ray actors; add --ray (a local cluster) or "
            "--ray ADDRESS, or leave --workers out (--concurrency sets the requests in flight)"
        )
    if workers is not None and workers < 1:
        raise SpecError(f"--workers {workers}: give at least 1")
    if args.tui and not on_terminal():
        raise SpecError(
            "--tui: the terminal UI needs a terminal, and this run's input, output or error "
            "output is not one (a pipe, a file, a cron job); leave --tui out, and watch the "
            "run from a terminal with `moat tui`"
        )
    if getattr(args, "ray", None) is not None:
        from engine.cluster import parse_address  # does not import Ray itself

        parse_address(args.ray)
    if args.resume is None and not args.graph:
        raise SpecError("give a GRAPH file to run (or --resume RUN_ID to finish a run)")
    if args.resume is None and args.input is None and args.json is None and args.prompt is None:
        raise SpecError("moat run: give requests with --input FILE.jsonl, --json or --prompt")
    return _parse_models(args.model)


def _check_files(args: argparse.Namespace) -> None:
    """The files given: each usable as what it is for, and none another's."""
    for flag in ("input", "out", "db", "policy"):
        if getattr(args, flag) == "":
            raise SpecError(
                f"--{flag} '': an empty path (a shell variable that is not set?); give a file"
            )
    if args.input is not None:
        _check_readable("--input", args.input)
    if args.out not in (None, "-"):  # `-`: stdout (on a resume too, not the run's --out)
        _check_writable("--out", args.out)
    _check_writable("--db" if args.db is not None else "$MOAT_DB", store_file(args.db))
    if args.policy is not None:
        _check_readable("--policy", args.policy)
    _check_distinct(args)


def _check_resume_requests(args: argparse.Namespace, config: Mapping[str, Any]) -> str | None:
    """`--resume` answers the requests the run recorded. The same requests given again (the
    first command with `--resume` added, or the run's input file moved elsewhere) are
    accepted; other ones would be ignored, so they are refused.

    Returns:
        The file to read the run's requests from (None for a single request).
    """
    recorded: str | None = config.get("input")
    if args.input is not None:
        same = recorded is not None and os.path.abspath(args.input) == recorded
        digest = config.get("input_sha256")
        if not same and recorded is not None and digest is not None:
            # (readable: `_check_files` saw to it)
            same = _digest(args.input) == digest  # the run's file, moved or copied
            if same:
                return os.path.abspath(str(args.input))
        if not same:
            was = f"the run read {recorded}" if recorded else "the run had no --input"
            raise SpecError(
                f"--input {args.input} with --resume {args.resume}: {was}, and a resumed run "
                "answers its own recorded requests; drop --input to finish the run, or drop "
                "--resume to start a new run with this file"
            )
    single, source = _single(args.json, args.prompt)
    if single is not None and single != config.get("single"):
        raise SpecError(
            f"{source} with --resume {args.resume}: the run recorded other requests, and a "
            f"resumed run answers its own; drop {source} to finish the run, or drop --resume "
            "to start a new run with it"
        )
    return recorded


def _check_readable(flag: str, value: str) -> None:
    path = Path(value)
    if value == "-":  # (--input, the run's --input of a resume, or --policy)
        twice = " (it reads the file twice: to count its requests, then to answer them)"
        why = not_stdin("them", twice) if flag.endswith("--input") else not_stdin("the policy")
        raise SpecError(f"{flag} -: {why}")
    if path.is_dir():
        raise SpecError(f"{flag} {value}: is a folder; give a file")
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        if path.exists():  # a pipe or a device: read once, it could not be counted first
            what += " (a pipe or a device); save its content to a file and pass that"
        raise SpecError(f"{flag} {value}: {what}")
    if not os.access(path, os.R_OK):
        raise SpecError(f"{flag} {value}: cannot read the file; check its permissions")


def _check_writable(flag: str, value: str) -> None:
    path = Path(value)
    if path.is_dir():
        raise SpecError(f"{flag} {value}: is a folder; give a file path, such as {path / 'x'}")
    folder = path.parent
    if not folder.is_dir():
        raise SpecError(f"{flag} {value}: folder {folder} does not exist; create it first")
    if path.exists() and not os.access(path, os.W_OK):
        raise SpecError(f"{flag} {value}: cannot write the file; check its permissions")
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{flag} {value}: cannot create files in {folder}; check permissions")


def _check_distinct(args: argparse.Namespace) -> None:
    """Results appended to the input (or the store) would be read back or corrupt it."""
    db = store_file(args.db)
    files = {"--input": args.input, "--out": _out(args), "--db": db}
    if args.graph:
        files["GRAPH"] = args.graph
    seen: dict[object, str] = {}
    for flag, value in files.items():
        if value is None:
            continue
        key = _identity(value)
        if key in seen:
            raise SpecError(f"{flag} {value}: is also {seen[key]}; give each its own file")
        seen[key] = flag
    for suffix in STORE_COMPANIONS:  # SQLite's journal files and the writers' lock file
        companion = _identity(db + suffix)
        for flag in ("--input", "--out", "GRAPH"):
            value = files.get(flag)
            if value is not None and _identity(value) == companion:
                raise SpecError(
                    f"{flag} {value}: is a file of the store {db} (SQLite and moat keep "
                    f"`{suffix}` beside it); give a file of its own"
                )


def _out(args: argparse.Namespace) -> str | None:
    """The `--out` file; None for standard output (`-`, or no `--out`)."""
    return None if args.out == "-" else args.out


def _identity(path: str) -> object:
    """What a path names: an existing file by its inode, so a hard link (or a symlink) to
    the input is seen to be the input; a file still to be created by its real path."""
    try:
        stat = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (stat.st_dev, stat.st_ino)


def _parse_models(values: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        provider, colon, model = target.partition(":")
        if not sep or not name.strip() or not colon or not provider.strip() or not model.strip():
            raise SpecError(
                f"--model {value!r}: write NAME=PROVIDER:MODEL, each part given, e.g. "
                "large=openai:gpt-4o-mini or small=sim:small"
            )
        if name in models:
            raise SpecError(
                f"--model {value!r}: model {name!r} is already bound to {models[name]!r} by "
                "another --model; give each model once"
            )
        models[name] = target
    return models


def _limits(graph: Graph, max_request_bytes: int | None) -> RequestLimits:
    spec = graph.spec.limits
    return RequestLimits(max_request_bytes or spec.max_request_bytes, spec.max_depth)


def _new_plan(args: argparse.Namespace, models: dict[str, str]) -> _Plan:
    graph = load_graph(args.graph)
    limits = _limits(graph, args.max_request_bytes)
    single, source = _single(args.json, args.prompt)
    total = 1 if single is not None else count_requests(args.input, limits=limits)
    out = _out(args)
    config = {
        "input": os.path.abspath(args.input) if args.input else None,
        "input_sha256": _digest(args.input) if args.input else None,
        "out": os.path.abspath(out) if out else None,
        "graph_path": os.path.abspath(args.graph),
        "single": single,
        "single_source": source,
        "concurrency": args.concurrency,
        "max_request_bytes": args.max_request_bytes,
        "seed": args.seed or 0,
        "models": models,
    }
    return _Plan(
        graph,
        args.input,
        single,
        source,
        out,
        limits,
        total=total,
        config=config,
        models=models,
        seed=args.seed or 0,
    )


def _single(json_text: str | None, prompt: str | None) -> tuple[str | None, str]:
    """The one request as JSON text, read later by the same reader as a file line."""
    if json_text is not None:
        return _argument_text(json_text), "--json"
    if prompt is not None:
        text = _argument_text(prompt)
        # bytes that are not UTF-8 stay in the text (not escaped), so the reader says so
        return json.dumps({"prompt": text}, ensure_ascii=not _surrogates(text)), "--prompt"
    return None, "--json"


def _argument_text(value: str) -> str:
    """`value` as the text that was typed. Under a locale Python reads as ASCII, the bytes
    of a UTF-8 argument arrive as lone surrogates (`os.fsdecode`): they are decoded again
    as UTF-8, as they were meant. Bytes that are not UTF-8 stay surrogates, which the
    request's reader refuses (`invalid_input`, naming the flag)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        with contextlib.suppress(UnicodeError):
            return os.fsencode(value).decode("utf-8")
    return value


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _resume_plan(args: argparse.Namespace, db: str, models: dict[str, str]) -> _Plan:
    if not Path(db).is_file():
        raise SpecError(f"--resume {args.resume}: no store at {db}; pass the --db the run used")
    with Store.open(db) as store:
        run = store.require_run(args.resume)
        if run_state(run) == "running":
            owner = (run.get("config") or {}).get("owner") or {}
            raise SpecError(
                f"--resume {args.resume}: the run is still running (process "
                f"{owner.get('pid')} on {owner.get('host')}); wait for it to end, or stop it, "
                "then resume"
            )
        config = dict(run.get("config") or {})
        if not config.get("input") and config.get("single") is None:
            raise SpecError(
                f"--resume {args.resume}: the run's requests were given by the program that "
                "ran it (`Pipeline.run_batch`, `moat serve`), not read from a file or an "
                "argument, so `moat run` cannot read them again; resume it from that program "
                f"with `pipe.start_batch(total, resume={args.resume!r})` and its requests"
            )
        input_path = _check_resume_requests(args, config)
        models, seed = _recorded_bindings(args, config, models)
        graph = _resume_graph(args, run, config)
        out = _out(args) if args.out else config.get("out")  # (`-`: stdout, not the run's)
        if out:
            _check_writable("--out", out)
        if input_path and input_path == config.get("input"):  # (moved: checked already)
            if args.input is None and not Path(input_path).exists():
                raise SpecError(
                    f"the run's --input {input_path}: no such file; if it was moved, give its "
                    f"new place: moat run --resume {args.resume} --input NEW_PATH (the same "
                    "content)"
                )
            _check_readable("the run's --input", input_path)
            _check_unchanged(args.resume, input_path, config.get("input_sha256"))
        store.delete_orphans(args.resume)
        if out:
            reconcile_out(store, args.resume, Path(out))
    single = config.get("single")
    if isinstance(single, Mapping):  # recorded by an older moat as the decoded object
        single = json.dumps(single)
    return _Plan(
        graph,
        input_path,
        single,
        str(config.get("single_source") or "--json"),
        out,
        _limits(graph, args.max_request_bytes or config.get("max_request_bytes")),
        run_id=args.resume,
        total=int(run["requests_total"] or 0),
        config=config,
        models=models,
        seed=seed,
    )


def _recorded_bindings(
    args: argparse.Namespace, config: Mapping[str, Any], models: dict[str, str]
) -> tuple[dict[str, str], int]:
    """The `--model` rebindings and seed a resumed run answers with: the run's own, so its
    last requests meet the models and draws its first ones did. Others given are refused."""
    recorded = config.get("models")
    if recorded is None:  # (a run of an older moat: it did not record them)
        recorded = models
    elif models and models != recorded:
        given = " ".join(f"--model {k}={v}" for k, v in models.items())
        had = " ".join(f"--model {k}={v}" for k, v in recorded.items()) or "no --model"
        raise SpecError(
            f"{given} with --resume {args.resume}: the run answered with {had}, and a resumed "
            "run answers with the same models; drop --model to finish the run, or drop "
            "--resume to start a new run with these models"
        )
    seed = int(config.get("seed") or 0)
    if args.seed is not None and args.seed != seed:
        raise SpecError(
            f"--seed {args.seed} with --resume {args.resume}: the run answered with seed "
            f"{seed}, and a resumed run keeps it; drop --seed to finish the run"
        )
    return dict(recorded), seed


def _digest(path: str) -> str:
    """The SHA-256 of a request file: a resume answers the lines the run has no result for
    by their place in it, which is the same request only in the same file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check_unchanged(run_id: str, path: str, recorded: object) -> None:
    if recorded is not None and _digest(path) != recorded:  # (None: an older moat's run)
        raise SpecError(
            f"the run's --input {path}: changed since run {run_id} started, so its lines "
            "are no longer the requests the run numbered; restore the file the run read, "
            "or start a new run"
        )


def _resume_graph(args: argparse.Namespace, run: Mapping[str, Any], config: Any) -> Graph:
    graph_path = args.graph or config.get("graph_path")
    if not graph_path:
        raise SpecError(f"run {args.resume} did not record its graph; pass GRAPH")
    graph = load_graph(graph_path)
    if graph.hash != run["graph_hash"]:
        raise SpecError(
            f"{graph_path}: the graph changed since run {args.resume} (hash "
            f"{run['graph_hash']} -> {graph.hash}); resume with the same graph"
        )
    return graph


PROGRESS_LATENCIES = 4096
"""Latest latencies the progress bar's p95 is taken over: a batch of any size keeps this many."""


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        # sys.stderr as it is now: the one at import time may since have been swapped and closed.
        stream = sys.stderr if stream is None else stream
        self.total = total
        self.enabled = enabled and stream.isatty()
        self.stream = stream
        self.started = time.monotonic()
        self.latencies: deque[float] = deque(maxlen=PROGRESS_LATENCIES)
        """The latest requests' latencies (a window: the bar's p95 is a recent one)."""
        self.cost = 0.0
        self.done = 0

    def add(self, record: RequestRecord) -> None:
        self.done += 1
        self.cost += record.cost_usd
        if self.enabled:
            self.latencies.append(record.latency_ms)

    def draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        p95 = percentile(self.latencies, 95) or 0.0
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"\r[{bar}] {self.done}/{self.total}  {rate:.1f} req/s  p95 {p95:.0f} ms  "
            f"${self.cost:.4f}"
        )
        try:
            self.stream.write(line + ("\n" if final else ""))
            self.stream.flush()
        except OSError:  # the terminal went away (SIGHUP): the run goes on without a bar
            self.enabled = False


def _pipeline(plan: _Plan, args: argparse.Namespace, db: str) -> Pipeline:
    """The local pipeline, or with `--ray` the cluster one (Ray is imported only then)."""
    options: dict[str, Any] = {
        "db": db,
        "policy_file": args.policy,
        "models": plan.models,
        "seed": plan.seed,
        "allow_unpriced": getattr(args, "allow_unpriced", False),
        "limits": plan.limits,
    }
    if getattr(args, "ray", None) is None:
        return Pipeline(plan.graph, **options)
    from engine.cluster import ClusterPipeline, parse_address

    address = parse_address(args.ray)
    return ClusterPipeline(
        plan.graph, address=address, workers=args.workers, concurrency=args.concurrency, **options
    )


async def _run(plan: _Plan, args: argparse.Namespace, db: str) -> int:
    async with (
        stoppable(lambda: _resume_hint(plan.started, args)) as stop,
        _pipeline(plan, args, db) as pipe,
        telemetry.attached(getattr(args, "telemetry", None), pipe),
    ):
        out = OutWriter(pipe, plan.out)  # opened before the run exists: a bad --out stores nothing
        batch = pipe.start_batch(plan.total, config=plan.config, resume=plan.run_id)
        plan.started = batch.run_id
        if plan.run_id is None and not args.quiet:
            print(
                f"moat: run {batch.run_id} ({printable(pipe.graph.name)}, {plan.total} requests)",
                file=sys.stderr,
            )
        progress = _Progress(plan.total, not args.quiet and not args.tui)
        progress.done = batch.done
        try:
            # what is alive now lives as long as the batch: out of the collector's sight
            with settled_heap(getattr(pipe, "model_specs", {}).values()), stop:
                await _drive(
                    pipe, batch, _items(plan, pipe), out, progress, args.concurrency, args.tui
                )
        except StoreError:
            out.store_failed()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await _close(out, progress)
        if not args.quiet:
            await anyio.to_thread.run_sync(pipe.flush)
            assert pipe.store is not None
            _print_summary(pipe.store, batch.run_id)
        if batch.interrupted:
            return _stopped(batch.run_id, args, "interrupted; ", 130)
        return 1 if any(batch.by_status.get(s) for s in FAILED_STATUSES) else 0


def _stopped(run_id: str, args: argparse.Namespace, what: str, code: int) -> int:
    with contextlib.suppress(OSError):  # (a terminal that went away: the code still says it)
        print(f"moat: {what}{_resume_hint(run_id, args)}", file=sys.stderr)
    return code


def _resume_hint(run_id: str | None, args: argparse.Namespace) -> str:
    if run_id is None:
        return "no run was started, nothing is stored"
    db = f" --db {shlex.quote(args.db)}" if args.db else ""
    return f"finished requests are kept. Resume with: moat run --resume {run_id}{db}"


async def _close(out: OutWriter, progress: _Progress) -> None:
    """Write the last result lines (the pipeline has recorded how the run ended)."""
    await anyio.sleep(0)
    try:
        await out.drain()
    finally:
        out.close()
        progress.draw(final=True)


async def _drive(
    pipe: Pipeline,
    batch: BatchSummary,
    items: Iterator[BatchItem],
    out: OutWriter,
    progress: _Progress,
    concurrency: int,
    tui: bool,
) -> None:
    """Answer the batch while the out file, progress bar and UI follow it; a
    `--tui` stays open after the batch (which is finished then) until it is closed."""

    def on_record(record: RequestRecord) -> None:
        out.add(record)
        progress.add(record)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(out.loop)
            tg.start_soon(_tick, progress)
            if tui:
                tg.start_soon(_tui, pipe, batch.run_id, tg.cancel_scope)
            await pipe.run_batch(items, batch=batch, concurrency=concurrency, on_record=on_record)
            if not tui:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _sole_error(group)
        if error is None:
            raise
        raise error from group


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The error that alone ended the task group, for `cmd_run` and `main` to report:
    moat's (the store's, or with `--ray` the loss of every worker), or the output's
    reader going away (`moat run | head`: the result lines' loop met a broken pipe)."""
    for kind in (MoatError, BrokenPipeError):
        matched, rest = group.split(kind)
        if matched is not None and rest is None:
            error: BaseException = matched
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            return error
    return None


def _items(plan: _Plan, pipe: Pipeline) -> Iterator[BatchItem]:
    declared = pipe.validator.declared
    if plan.single is not None:
        yield decode_request(
            plan.single, seq=0, source=plan.single_source, declared=declared, limits=plan.limits
        )
        return
    assert plan.input_path is not None
    total = plan.total
    for item in read_jsonl(plan.input_path, declared=declared, limits=plan.limits):
        if item.seq >= total:  # lines added since the run counted its requests: not its own
            return
        yield item


async def _tick(progress: _Progress) -> None:
    while True:
        progress.draw()
        await anyio.sleep(0.25)


async def _tui(pipe: Pipeline, run_id: str, scope: anyio.CancelScope) -> None:
    from importlib.metadata import entry_points

    found = list(entry_points(group="moat.live", name="tui"))
    if not found:
        raise SpecError("--tui: the terminal UI is not installed; reinstall moat")
    await found[0].load()(str(pipe.db), run_id=run_id)
    scope.cancel()  # the operator closed the UI: stop the run (what finished is kept)


def _print_summary(store: Store, run_id: str) -> None:
    from engine.report.explain import render_stats, run_stats

    with contextlib.suppress(OSError):  # (a terminal that went away: `moat stats` has it)
        print(render_stats(run_stats(store, run_id)), file=sys.stderr)
