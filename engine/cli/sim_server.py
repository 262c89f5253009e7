"""`moat sim-server`: the embedded `sim` models behind an OpenAI-compatible HTTP API.

It runs on `moat serve`'s stack (Starlette on uvicorn), so it needs the `serve` extra;
without it the command says what to install (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands", "host_address", "non_negative", "port_number"]

EXIT_USAGE = 2
_MISSING = (
    "moat sim-server needs Starlette and uvicorn, which are not installed: "
    "pip install 'moat[serve]'"
)


def port_number(text: str) -> int:
    """`--port` as a TCP port: 0 (any free port) to 65535.

    Raises:
        argparse.ArgumentTypeError: not an integer in range; the message says what is.
    """
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: use 1-65535, or 0 for any free port"
        )
    return port


def host_address(text: str) -> str:
    """`--host` as an address to listen on, never empty (to the socket layer an empty
    host is every address, not the loopback the default is).

    Raises:
        argparse.ArgumentTypeError: the address is empty or blank.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: the host is empty; give an address, such as 127.0.0.1 (loopback, "
            "the default) or ::1"
        )
    return text.strip()


def add_commands(sub: Any) -> None:
    """Register `moat sim-server` on the `moat` subparsers."""
    p = sub.add_parser("sim-server", help="the sim models behind an OpenAI-compatible HTTP API")
    p.add_argument(
        "--port", type=port_number, default=8008, help="TCP port (0: any free port, printed)"
    )
    p.add_argument(
        "--host", type=host_address, default="127.0.0.1", help="address to listen on (loopback)"
    )
    p.add_argument(
        "--time-scale",
        type=non_negative,
        default=1.0,
        metavar="X",
        help="multiply the simulated latencies (0: answer at once)",
    )
    p.add_argument(
        "--latency-ms",
        type=non_negative,
        metavar="MS",
        help="every chat completion takes exactly this long (load tests)",
    )
    p.set_defaults(handler=cmd_sim_server)


def non_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0 (a delay, a grace period)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of at least 0")
    return value


def cmd_sim_server(args: argparse.Namespace) -> int:
    """Serve the simulated models until interrupted."""
    try:
        from engine.serve.sim_app import run_server
    except ImportError:
        print(f"moat: {_MISSING}", file=sys.stderr)
        return EXIT_USAGE
    latency_s = None if args.latency_ms is None else args.latency_ms / 1000
    if not run_server(args.port, host=args.host, time_scale=args.time_scale, latency_s=latency_s):
        print("moat: sim-server: the server did not start (see above)", file=sys.stderr)
        return EXIT_USAGE
    return 0
