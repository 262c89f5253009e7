"""The floor of `moat serve`'s added latency: the same HTTP stack with nothing of moat in it.

python -m bench._floor_proxy UPSTREAM_BASE_URL [--workers N]

A Starlette app on uvicorn (uvloop and httptools where installed, as `moat serve` runs)
whose one route, `POST /v1/chat/completions`, reads the body, posts it unchanged to
`UPSTREAM_BASE_URL/chat/completions` through one pooled aiohttp session (the client moat's
`openai` provider uses for a plain-HTTP endpoint) and returns the upstream's bytes and
status. No graph, scheduler, store, commit, auth, shaping, metrics or events: what a
request through `moat serve` costs beyond this is moat's own; what this costs over a
direct call is the stack's and the host's (`bench/serve_load.py --part added` runs it as a
third side, `floor`).

`--workers N` runs N processes, each on its own `SO_REUSEPORT` socket on one port, as
`moat serve --workers N` does, so the kernel spreads connections over them alike. Prints
its base URL (`http://127.0.0.1:PORT/v1`) on the first line of stdout once it listens.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app(upstream: str) -> Starlette:
    """The proxy: one route, one aiohttp session (made on the first request, in the loop)."""
    target = upstream.rstrip("/") + "/chat/completions"
    sessions: list[aiohttp.ClientSession] = []

    async def completions(request: Request) -> Response:
        body = await request.body()
        if not sessions:
            sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)))
        headers = {
            "content-type": "application/json",
            "authorization": request.headers.get("authorization", ""),
        }
        async with sessions[0].post(target, data=body, headers=headers) as upstream_reply:
            data = await upstream_reply.read()
            return Response(data, upstream_reply.status, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def _serve(upstream: str, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    config = uvicorn.Config(
        app(upstream), lifespan="off", log_config=None, log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])


def _socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("upstream", help="the upstream's OpenAI base URL (http://HOST:PORT/v1)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    first = _socket(0)
    port = first.getsockname()[1]
    socks = [first, *(_socket(port) for _ in range(args.workers - 1))]
    context = multiprocessing.get_context("fork")
    workers: list[Any] = [
        context.Process(target=_serve, args=(args.upstream, sock), daemon=True) for sock in socks
    ]
    for worker in workers:
        worker.start()
    print(f"http://127.0.0.1:{port}/v1", flush=True)

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: uvicorn finishes what it serves, then exits
        for worker in workers:
            worker.join(10)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
