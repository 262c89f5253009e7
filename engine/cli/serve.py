"""`moat serve`: graphs behind an OpenAI-compatible HTTP endpoint.

Every argument is checked before anything listens (exit 2): the graphs, the keys file, the
address. Without `--keys` any key is accepted, so the server then refuses to listen on
anything but loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from engine.cli import file_path, graph_file, not_stdin, store_file, telemetry
from engine.cli._starting import StartupStop, noting_sigterm
from engine.cli.sim_server import host_address, non_negative, port_number
from engine.errors import SpecError
from engine.logs import announce

if TYPE_CHECKING:
    from engine.serve.auth import KeyRing

__all__ = ["add_commands", "cmd_serve"]

EXIT_USAGE = 2
_MISSING = (
    "moat serve needs Starlette, uvicorn and prometheus-client, which are not installed: "
    "pip install 'moat[serve]'"
)


_BURST = 10
"""`--burst` unless given."""
_GRACE_S = 30.0
"""`--grace` unless given."""
_WORKERS_PER_CPU = 16
"""Most `--workers` processes a CPU is asked to run (`moat run --ray` allows as many
actors a cluster CPU). `--workers 100000` once opened sockets until the process ran out of
file descriptors and ended in an internal error."""


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


_PERIOD = re.compile(r"(\d{1,9})([dhms])")
_PERIOD_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def _check_ray(args: argparse.Namespace) -> None:
    """Refuse the options that do not apply on Ray Serve: each would be ignored."""
    if getattr(args, "workers", 1) > 1:
        raise SpecError(
            f"--workers {args.workers} with --ray: Ray Serve runs replicas, not worker "
            "processes; use --replicas N (or --autoscale MIN:MAX) instead"
        )
    if getattr(args, "rotate_run", None):
        raise SpecError(
            "--rotate-run with --ray: the Ray Serve deployment keeps one run per graph for "
            "its life; drop --rotate-run (or serve without --ray) and prune after a restart"
        )
    _check_ray_telemetry(args)
    unused = {
        "--no-commit-wait": "an answer on Ray Serve always waits for the store-writer "
        "actor's commit",
        "--grace": "Ray Serve drains its replicas on its own terms at shutdown",
        "--metrics-tenant": "the replicas' /metrics carry no tenant label",
    }
    for flag, why in unused.items():
        if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False):
            raise SpecError(f"{flag} with --ray: {why}; drop {flag} (or serve without --ray)")


def _check_ray_telemetry(args: argparse.Namespace) -> None:
    """Traces are refused on Ray Serve rather than silently not exported: the replicas
    build no spans (README, "Telemetry")."""
    from engine.telemetry import otel_from_env

    fix = "serve without --ray to trace requests (moat serve GRAPH --otel)"
    if getattr(args, "otel", None) is not None:
        raise SpecError(
            "--otel with --ray: the Ray Serve replicas export no traces, so none would "
            f"reach the collector; drop --otel, or {fix}"
        )
    if otel_from_env():
        raise SpecError(
            f"OTEL_TRACES_EXPORTER={os.environ['OTEL_TRACES_EXPORTER']} with --ray: the Ray "
            "Serve replicas export no traces, so none would reach the collector; unset it "
            f"for this server, or {fix}"
        )


def _check_local(args: argparse.Namespace) -> None:
    """Refuse the Ray Serve options without `--ray`: each would be ignored."""
    for flag in ("--replicas", "--autoscale"):
        value = getattr(args, flag[2:], None)
        if value is not None:
            raise SpecError(
                f"{flag} {value}: replicas are Ray Serve's; add --ray (a local Ray instance) "
                "or --ray ADDRESS, or use --workers N for server processes on this machine"
            )


def _period(text: str) -> float:
    """`--rotate-run`: a period such as 1d, 12h, 30m or 90s, in seconds."""
    found = _PERIOD.fullmatch(text.strip())
    if found is None or int(found.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a period; give a whole number and a unit, such as 1d, 12h, 30m or 90s"
        )
    return float(int(found.group(1)) * _PERIOD_SECONDS[found.group(2)])


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of requests/s")
    return value


def add_commands(sub: Any) -> None:
    """Register `moat serve` on the `moat` subparsers."""
    p = sub.add_parser("serve", help="serve graphs behind an OpenAI-compatible HTTP API")
    p.add_argument(
        "graphs", type=graph_file, metavar="GRAPH", nargs="+", help="graph files; `model` names one"
    )
    p.add_argument(
        "--host",
        type=host_address,
        default="127.0.0.1",
        help="address to listen on (default loopback)",
    )
    p.add_argument(
        "--port", type=port_number, default=8000, help="TCP port (0: any free port, printed)"
    )
    p.add_argument(
        "--db", type=file_path, metavar="PATH", help="the store (default: $MOAT_DB or moat.db)"
    )
    p.add_argument(
        "--keys",
        type=_keys_file,
        metavar="FILE",
        help="API keys, one `TENANT sha256:HEX` a line (else $MOAT_API_KEYS=TENANT=KEY,...); "
        "required off loopback",
    )
    p.add_argument(
        "--metrics-auth",
        action="store_true",
        help="/metrics asks for an API key of --keys too (default: open to any scraper)",
    )
    p.add_argument("--rate", type=_rate, metavar="R", help="requests/s per tenant (default: none)")
    p.add_argument(
        "--burst",
        type=_positive,
        metavar="N",
        help=f"requests a tenant may send at once above --rate (default {_BURST})",
    )
    p.add_argument(
        "--tenant-concurrency",
        type=_positive,
        default=64,
        metavar="N",
        help="requests in flight per tenant",
    )
    p.add_argument(
        "--max-inflight",
        type=_positive,
        default=256,
        metavar="N",
        help="requests in flight in all; as many more wait, the rest get a 503",
    )
    p.add_argument(
        "--grace",
        type=non_negative,
        metavar="S",
        help=f"seconds in-flight requests get to finish on SIGTERM (default {_GRACE_S:g})",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PROVIDER:MODEL",
        help="rebind a logical model of every graph that has it",
    )
    p.add_argument(
        "--no-commit-wait",
        action="store_true",
        help="answer before the request is committed to the store (faster; a crash can "
        "lose requests already answered)",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="server processes on the port (one per core); limits are split among them",
    )
    p.add_argument(
        "--rotate-run",
        type=_period,
        metavar="PERIOD",
        help="start a new run per graph every PERIOD (1d, 12h, 30m, 90s), finishing the one "
        "before, so `moat prune` can delete a long-lived server's old requests "
        "(default: one run for the server's life)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated models")
    p.add_argument(
        "--allow-unpriced",
        action="store_true",
        help="serve a graph with a cost budget even if a model has no price (it costs $0)",
    )
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="on Ray Serve")
    p.add_argument("--replicas", type=_positive, metavar="N", help="Ray Serve replicas")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="Ray Serve replicas, autoscaled")
    telemetry.add_arguments(p, batch=False)
    p.set_defaults(handler=cmd_serve)


def _keys_file(text: str) -> str:
    """`--keys`: a file path (`~` expanded), never `-` (`not_stdin`)."""
    if text == "-":
        raise argparse.ArgumentTypeError(not_stdin("the keys"))
    return file_path(text)


def _keys(path: str | None) -> KeyRing | None:
    """The keys of `--keys FILE`, else of `$MOAT_API_KEYS`, else None (any key)."""
    from engine.serve.auth import ENV_KEYS, keys_from_env, load_keys

    if path is not None:
        return load_keys(path)
    value = os.environ.get(ENV_KEYS)
    return keys_from_env(value) if value else None


def _stopped_early() -> int:
    print("moat serve: stopped (SIGTERM) before it served; no run was started", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the arguments, then serve until interrupted."""
    with noting_sigterm() as stopping:  # (`moat serve` from `main` noted it already)
        if stopping():  # (while the modules imported: load nothing)
            return _stopped_early()
        return _serve(args, stopping)


def _serve(args: argparse.Namespace, stopping: StartupStop) -> int:
    try:
        from engine.cli.run import _parse_models
        from engine.serve import MoatServer, ShapingLimits
        from engine.serve.listen import bind, is_loopback, run_app
    except ImportError:
        print(f"moat: {_MISSING}", file=sys.stderr)
        return EXIT_USAGE
    keys = _checked_keys(args, is_loopback)
    if args.burst is not None and args.rate is None:
        raise SpecError(
            f"--burst {args.burst}: the burst is what a tenant may send above --rate, and no "
            "--rate was given (no rate limit); add --rate R, or drop --burst"
        )
    limits = ShapingLimits(
        rate=args.rate,
        burst=_BURST if args.burst is None else args.burst,
        tenant_concurrency=args.tenant_concurrency,
        max_inflight=args.max_inflight,
        max_queue=args.max_inflight,
    )
    if getattr(args, "ray", None) is not None:
        return _serve_on_ray(args, keys, limits, stopping)
    _check_local(args)
    grace_s = _GRACE_S if args.grace is None else args.grace
    workers = getattr(args, "workers", 1)
    opts = telemetry.options(args)
    if workers > 1 and (opts.traces or opts.metrics_port is not None):
        raise SpecError(
            f"--workers {workers}: traces and a metrics port are per process, and each "
            "worker has its own; drop --workers, or the telemetry options (each worker "
            "still serves /metrics)"
        )
    cpus = os.cpu_count() or 1
    if workers > _WORKERS_PER_CPU * cpus:
        raise SpecError(
            f"--workers {workers}: each worker is a process of its own and this machine has "
            f"{cpus} CPUs; give at most {_WORKERS_PER_CPU * cpus} ({_WORKERS_PER_CPU} a CPU; "
            "one a CPU already uses them all)"
        )
    server = MoatServer(
        args.graphs,
        db=store_file(args.db),
        keys=keys,
        limits=limits,
        models=_parse_models(args.model),
        commit_wait=not args.no_commit_wait,
        seed=args.seed,
        allow_unpriced=args.allow_unpriced,
        telemetry=telemetry.telemetry_for(opts, server=True) if workers == 1 else None,
        metrics_auth=args.metrics_auth,
        rotate_s=getattr(args, "rotate_run", None),
    )
    if workers > 1:
        return _serve_workers(args, server, keys, limits, grace_s, stopping)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:  # the address is printed once the graphs are open: scripts wait
        announce(
            f"http://{shown}:{port}/v1",
            f"moat serve: {', '.join(sorted(server.graphs))} at http://{shown}:{port}/v1 "
            f"({'API keys required' if keys else 'any key, loopback only'}); Ctrl-C to stop",
        )

    with sock:
        if stopping():
            return _stopped_early()
        started = run_app(
            server.app, sock, grace_s=grace_s, context=server, on_ready=ready, stopped=stopping
        )
        if not started:
            print("moat: serve: the server did not start (see above)", file=sys.stderr)
            return EXIT_USAGE
    return 0


def _checked_keys(args: argparse.Namespace, is_loopback: Any) -> KeyRing | None:
    """The API keys, checked against the address and `--metrics-auth`."""
    keys = _keys(args.keys)
    if keys is None and not is_loopback(args.host):
        raise SpecError(
            f"--host {args.host}: without --keys (or $MOAT_API_KEYS) any caller is accepted, "
            "so moat serves only on loopback (127.0.0.1, ::1); pass --keys FILE to listen on "
            "another address"
        )
    if args.metrics_auth and keys is None:
        raise SpecError(
            "--metrics-auth: without --keys (or $MOAT_API_KEYS) any key is accepted, so "
            "/metrics would stay open; pass --keys FILE, or drop --metrics-auth"
        )
    return keys


def _serve_on_ray(
    args: argparse.Namespace, keys: KeyRing | None, limits: Any, stopping: StartupStop
) -> int:
    """`--ray`: the graphs on Ray Serve (`engine.cluster.serving`)."""
    from engine.cli.run import _parse_models

    _check_ray(args)
    from engine.cluster.serving import serve_on_ray

    options: dict[str, Any] = {"keys": keys, "limits": limits}
    options |= {"models": _parse_models(args.model), "metrics_auth": args.metrics_auth}
    options |= {"seed": args.seed, "allow_unpriced": args.allow_unpriced}

    def on_ray(url: str, replicas: str) -> None:
        announce(url, f"moat serve: {url} on Ray Serve, {replicas} replicas")

    stopping.release()  # (Ray Serve handles the signals from here)
    if stopping():
        return _stopped_early()
    return serve_on_ray(args, store_file(args.db), options, on_ray)


def _serve_workers(
    args: argparse.Namespace,
    server: Any,
    keys: Any,
    limits: Any,
    grace_s: float,
    stopping: StartupStop,
) -> int:
    """`--workers N`: N server processes on one port (`engine.serve.workers`)."""
    from engine.cli.run import _parse_models
    from engine.serve.listen import bind_workers
    from engine.serve.workers import serve_workers, worker_spec

    spec = worker_spec(
        [os.path.abspath(path) for path in args.graphs],
        db=os.path.abspath(store_file(args.db)),
        keys=keys,
        limits=limits,
        workers=args.workers,
        models=_parse_models(args.model),
        commit_wait=not args.no_commit_wait,
        grace_s=grace_s,
        seed=args.seed,
        allow_unpriced=args.allow_unpriced,
        metrics_auth=args.metrics_auth,
    )
    socks = bind_workers(args.host, args.port, args.workers)
    host, port = socks[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        announce(
            f"http://{shown}:{port}/v1",
            f"moat serve: {', '.join(sorted(server.graphs))} at http://{shown}:{port}/v1 "
            f"({args.workers} worker processes; "
            f"{'API keys required' if keys else 'any key, loopback only'}); Ctrl-C to stop",
        )

    try:
        if stopping():
            return _stopped_early()
        if not serve_workers(server, spec, socks, on_ready=ready, stopped=stopping):
            print("moat: serve: a worker process did not start (see above)", file=sys.stderr)
            return EXIT_USAGE
    finally:
        for sock in socks:
            sock.close()
    return 0
