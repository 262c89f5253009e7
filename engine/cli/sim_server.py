"""`moat sim-server`: the embedded `sim` models behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
from typing import Any

from engine.models.server import port_number

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register `moat sim-server` on the `moat` subparsers."""
    p = sub.add_parser("sim-server", help="the sim models behind an OpenAI-compatible HTTP API")
    p.add_argument(
        "--port", type=port_number, default=8008, help="TCP port (0: any free port, printed)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(handler=cmd_sim_server)


def cmd_sim_server(args: argparse.Namespace) -> int:
    """Serve the simulated models until interrupted."""
    from engine.models.server import run_server

    run_server(args.port, host=args.host)
    return 0
