"""The HTTP server: graphs behind OpenAI's chat completions API, as a Starlette ASGI app.

Every request is answered by the graph's `Pipeline` (the same path as `moat run`), in one
run per graph that lasts as long as the server, or, with `rotate_s`, a new run per graph
every `rotate_s` seconds (each finished once its last request is answered, so `moat prune`
can delete a long-lived server's old requests run by run). `moat runs`, `moat report` and
the TUI see a server's requests as they are recorded. Routes:

- `POST /v1/chat/completions`: `model` names a graph; `stream: true` sends server-sent
  events once the graph has decided its answer, never before.
- `GET /v1/models`: the served graphs; `GET /v1/models/{model}`: one of them.
- `GET /healthz`, `GET /readyz`: the process is up; the graphs are loaded and open.
- `GET /metrics`: Prometheus figures, open to any scraper (as probes are) unless
  `metrics_auth` asks for an API key there too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from engine.api import Pipeline
from engine.collector import import_providers, trim_every, trimmer
from engine.errors import SpecError, StoreError
from engine.events import json_safe
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.requests import show_value
from engine.serve._attend import _Attending
from engine.serve._http import (
    _decode,
    _error_response,
    _http_error,
    _model_object,
    _raise_for_status,
    _read_body,
    _sse,
    _too_large,
)
from engine.serve._input import _graph_input, _input_error, _input_param
from engine.serve._served import _Served
from engine.serve.auth import KeyRing
from engine.serve.durable import Commits
from engine.serve.metrics import CONTENT_TYPE, Metrics
from engine.serve.shaping import Shaper, ShapingLimits
from engine.serve.wire import ApiError, completion, moat_headers, parse_chat
from engine.store.store import HEARTBEAT_S
from engine.telemetry import Telemetry

__all__ = ["MoatServer"]

log = logging.getLogger("moat.serve")

_CHAT = "/v1/chat/completions"
_READY_WAIT_S = 0.5
"""How long `/readyz` waits for its write to the store: under the 1 s a probe of
Kubernetes waits by default."""


class MoatServer(_Attending):
    """Graphs served over HTTP; `async with` opens their pipelines, `app` is the ASGI app.

    Args:
        graphs: graph files (or loaded graphs); each is served under its `name`.
        db: the store file (`None`: records kept in memory only).
        keys: the accepted API keys and their tenants (default: any key, tenant `public`
            or the request's `user`).
        limits: rate, concurrency and in-flight limits.
        models: `--model` rebindings, applied to each graph that has the model.
        pipeline: builds each graph's pipeline (`moat serve --ray`: one whose records go to
            the cluster's store-writer actor).
        telemetry: the metrics (and, with `--otel`, traces) of the served graphs.
        commit_wait: send an answer only once its request is committed to the store (the
            default: a client that got a 200 finds its request there even after a kill
            -9); False answers as soon as the graph has, and the records follow.
        runs: join these runs (graph name -> run id) instead of starting one per graph:
            a worker process of `moat serve --workers N`, whose parent owns the runs
            (starts them, beats their heartbeat, finishes them).
        slot: `(index, count)` of this worker among `count`: its requests are numbered
            `index`, `index + count`, ... so the workers' request ids never collide; a
            worker that joins runs with requests of its slot stored (one started again
            after a crash) carries on after the highest of them.
        rotate_s: start a new run per graph every this many seconds (None: one run for
            the server's life); a worker process never rotates, its parent does.
        on_rotate: called (by the process that owns the runs) with each graph's new run;
            it returns once every process answering the runs before has answered their
            last request (`moat serve --workers N`: the workers, told through their
            stdin). Default: this server switches its own requests (`switch_runs`).
        metrics_auth: `/metrics` asks for an API key as the API does (LiteLLM's
            `require_auth_for_metrics_endpoint`); by default it is open to any scraper,
            and shows the graphs' names and, when on, the tenants.
        pipeline_options: passed to every `Pipeline` (`seed`, `allow_unpriced`).

    Raises:
        SpecError: a graph is unusable, two graphs have the same name, or a rebound model
            is in none of them.
    """

    def __init__(
        self,
        graphs: Sequence[Graph | str | os.PathLike[str]],
        *,
        db: str | os.PathLike[str] | None = "moat.db",
        keys: KeyRing | None = None,
        limits: ShapingLimits | None = None,
        models: Mapping[str, str] | None = None,
        pipeline: Callable[..., Pipeline] = Pipeline,
        telemetry: Telemetry | None = None,
        commit_wait: bool = True,
        runs: Mapping[str, str] | None = None,
        slot: tuple[int, int] = (0, 1),
        rotate_s: float | None = None,
        on_rotate: Callable[[Mapping[str, str]], Awaitable[None]] | None = None,
        metrics_auth: bool = False,
        **pipeline_options: Any,
    ) -> None:
        self.metrics_auth = metrics_auth
        self.rotate_s = rotate_s
        self.on_rotate = on_rotate or self.switch_runs
        self.graphs: dict[str, _Served] = {}
        self.runs = dict(runs) if runs is not None else None
        self.slot = slot
        self.counted_in_store = False
        """Progress counted from the store's rows (the parent of worker processes)."""
        loaded = [entry if isinstance(entry, Graph) else load_graph(entry) for entry in graphs]
        _check_rebinds(loaded, models or {})
        for graph in loaded:
            rebind = {k: v for k, v in (models or {}).items() if k in graph.models}
            pipeline_options["models"] = rebind
            if graph.name in self.graphs:
                other = self.graphs[graph.name].pipe.graph.path
                if _same_file(other, graph.path):
                    raise SpecError(
                        f"graph {graph.name!r} is given twice (the same file); serve each "
                        "graph once",
                        path=str(graph.path),
                    )
                raise SpecError(
                    f"graph name {graph.name!r} is also the name of {other}; served graphs "
                    "are named by `name:`, so give each a distinct one",
                    path=str(graph.path),
                )
            pipe = pipeline(graph, db=db, **pipeline_options)
            durable = db is not None and commit_wait
            commits = Commits(pipe.flush, pipe.flush_soon) if durable else Commits(None)
            self.graphs[graph.name] = _Served(pipe, commits)
        self.keys = keys or KeyRing(None)
        self.shaper = Shaper(limits or ShapingLimits())
        self.metrics = Metrics(telemetry)
        for served in self.graphs.values():
            self.metrics.attach(served.pipe)
        self._stack: AsyncExitStack | None = None
        self._attended: set[anyio.CancelScope] = set()
        """The cancel scopes of the requests being answered (`cut_off`)."""
        self._cut_off: str | None = None
        """Why the requests still in flight were cut off (the server is stopping)."""
        self.starlette = self._build_app()
        self.app = self
        """The ASGI app (this server: servers that tell ASGI 2 from 3 by the type of
        `__call__` take it as ASGI 3, where a bound method looked like ASGI 2 to them)."""

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> MoatServer:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:  # telemetry closes last, after every run's records
            stack.push_async_callback(anyio.to_thread.run_sync, self.metrics.telemetry.close)
            self.metrics.telemetry.start()
            for name, served in self.graphs.items():
                await stack.enter_async_context(served.pipe)
                import_providers(getattr(served.pipe, "model_specs", {}).values())
                if self.runs is not None:  # the parent process owns the run
                    served.run_id = self.runs[name]
                    served.pipe.use_run(served.run_id)
                    served.seq = await anyio.to_thread.run_sync(
                        _slot_requests, served.pipe.store, served.run_id, self.slot
                    )
                else:
                    served.run_id = served.pipe.start_run(None, {"serve": True})
                    stack.push_async_callback(self._finish_run, served)
                served.pipe.record_watchers += [served.watch, served.commits.watch]
            beats = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(beats.cancel_scope.cancel)
            if self.runs is None:
                beats.start_soon(self._heartbeat)
                if self.rotate_s:
                    beats.start_soon(self._rotate_every, self.rotate_s)
            beats.start_soon(trim_every, HEARTBEAT_S, trimmer())
            for served in self.graphs.values():
                if served.commits.durable:
                    beats.start_soon(served.commits.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _heartbeat(self) -> None:
        """Record each run's progress, which also tells readers the server is alive."""
        while True:
            await anyio.sleep(HEARTBEAT_S)
            for served in self.graphs.values():
                store = served.pipe.store
                if store is not None:
                    await anyio.to_thread.run_sync(self._beat, store, served)

    def _beat(self, store: Any, served: _Served) -> None:
        done = served.done
        if self.counted_in_store or self.runs is not None:  # answered by several processes
            done = sum(store.status_counts(served.run_id).values())
        store.update_run_progress(served.run_id, done)

    @staticmethod
    async def _finish_run(served: _Served) -> None:
        """Record the server's runs as finished once their requests are stored."""
        with anyio.CancelScope(shield=True):
            await served.pipe.settle()
        for run_id in [*served.retiring, served.run_id]:
            await served.pipe.finish_run(run_id)
        served.retiring.clear()

    # -- rotation -----------------------------------------------------------------------

    async def switch_runs(self, runs: Mapping[str, str]) -> None:
        """Answer new requests of each graph under its run in `runs` (graph name -> run
        id), and return once this process's requests of the runs before are answered."""
        moved = {n: r for n, r in runs.items() if self.graphs[n].run_id != r}
        old = {name: self.graphs[name].switch(run_id) for name, run_id in moved.items()}
        for name, run_id in old.items():
            await self.graphs[name].drained(run_id)

    async def _rotate_every(self, interval_s: float) -> None:
        while True:
            await anyio.sleep(interval_s)
            try:
                await self.rotate()
            except StoreError as exc:  # the server goes on in the run it has
                log.error("serve.rotation_failed", extra={"error": str(exc)})

    async def rotate(self) -> dict[str, str]:
        """Start a new run per graph, move the requests to it (`on_rotate`), and finish
        the runs before once their last requests are stored; return the new runs."""
        runs: dict[str, str] = {}
        try:
            for name, served in self.graphs.items():
                # (off the event loop; answered under the run it has until `on_rotate`)
                runs[name] = await served.pipe.new_run(
                    None, {"serve": True, "follows": served.run_id}
                )
        except StoreError:
            for name, run_id in runs.items():  # no request ever went to them
                await self.graphs[name].pipe.finish_run(run_id, "interrupted")
            raise
        for served in self.graphs.values():
            served.retiring.append(served.run_id)
        with anyio.CancelScope(shield=True):  # a rotation half done finishes on exit
            await self.on_rotate(runs)
            for name, served in self.graphs.items():
                if served.run_id != runs[name]:  # the workers answered: follow them
                    served.switch(runs[name])
                while served.retiring:
                    await served.pipe.finish_run(served.retiring[0])
                    served.retiring.pop(0)
        log.info("serve.run_rotated", extra={"runs": dict(runs)})
        return runs

    @property
    def ready(self) -> bool:
        """True while the graphs are loaded and their pipelines open."""
        return self._stack is not None

    def count_refused(self, status: int) -> None:
        """Count an answer the HTTP layer sent before any route (the listener calls it)."""
        self.metrics.response(status)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.ready:  # opened by whoever embeds the app
            yield
            return
        async with self:
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: chat completions straight to their handler, the rest through
        Starlette. The one route every request takes skips Starlette's middleware and
        router (a tenth of the server's CPU per request); `_chat` answers every error of
        its own, in OpenAI's shape, as Starlette's handlers would."""
        path = scope["path"] if scope["type"] == "http" else ""
        if path.endswith("/") and path != "/":
            # `/v1/chat/completions/` is the route without the slash: a redirect would
            # make the client send its body again, which most clients do not (or not
            # for a POST), so the path is answered as it is meant
            path = path.rstrip("/") or "/"
            scope = {**scope, "path": path}
        if path == _CHAT and scope["method"] == "POST":
            scope["app"] = self.starlette  # as Starlette sets it, for `Request.app`
            response = await self._chat(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        if path == _CHAT:  # another method: Starlette's 405, counted as the chat's answers

            async def counted(message: Message) -> None:
                if message["type"] == "http.response.start":
                    self.metrics.response(message["status"])
                await send(message)

            await self.starlette(scope, receive, counted)
            return
        await self.starlette(scope, receive, send)

    def _build_app(self) -> Starlette:
        routes = [
            Route(_CHAT, self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/models/{model:path}", self._model, methods=["GET"]),
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: _http_error},
        )
        app.router.redirect_slashes = False  # an unknown path is a 404, never a redirect
        return app

    # -- routes ---------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        if not self.ready:
            return JSONResponse({"status": "starting", "graphs": []}, status_code=503)
        for name, served in self.graphs.items():
            store = served.pipe.store
            if store is None:
                continue
            try:  # a write proves the store takes records (and is a heartbeat too)
                written = await self._probe(store, served)
            except StoreError as exc:
                body = {"status": "store not writable", "graph": name, "error": str(exc)}
                return JSONResponse(body, status_code=503)
            if not written:
                body = {
                    "status": "store busy",
                    "graph": name,
                    "error": f"no write to {store.path} within {_READY_WAIT_S:g} s: another "
                    "process holds its write lock (`moat prune`, say); answers wait for it",
                }
                return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "graphs": sorted(self.graphs)})

    async def _probe(self, store: Any, served: _Served) -> bool:
        """Write the run's heartbeat as a readiness probe; False if it did not get the
        store's write lock in time (the write goes on in its thread, and the next probes
        answer at once until it is done: a probe never waits long, nor piles up threads)."""
        if served.probing:
            return False
        served.probing = True

        def beat() -> None:
            try:
                self._beat(store, served)
            finally:
                served.probing = False

        with anyio.move_on_after(_READY_WAIT_S):
            await anyio.to_thread.run_sync(beat, abandon_on_cancel=True)
            return True
        return False

    async def _models(self, request: Request) -> Response:
        try:
            self._tenant(request, None)
        except ApiError as exc:
            return _error_response(exc)
        data = [_model_object(name) for name in sorted(self.graphs)]
        return JSONResponse({"object": "list", "data": data})

    async def _model(self, request: Request) -> Response:
        """OpenAI's "retrieve model": the object `GET /v1/models` lists for the graph."""
        try:
            self._tenant(request, None)
            name = request.path_params["model"]
            if name not in self.graphs:
                raise self._unknown_graph(name)
        except ApiError as exc:
            return _error_response(exc)
        return JSONResponse(_model_object(name))

    def _unknown_graph(self, name: str) -> ApiError:
        return ApiError(
            404,
            f"no graph is served as {show_value(name)}; served: {', '.join(sorted(self.graphs))}",
            param="model",
            code="model_not_found",
        )

    async def _metrics(self, request: Request) -> Response:
        if self.metrics_auth:
            try:
                self._tenant(request, None)
            except ApiError as exc:
                return _error_response(exc)
        body = await anyio.to_thread.run_sync(self.metrics.render, self.shaper.in_flight)
        return Response(body, media_type=CONTENT_TYPE)

    async def _chat(self, request: Request) -> Response:
        try:
            response = await self._answer_chat(request)
        except ApiError as exc:
            response = _error_response(exc)
        except Exception:  # a bug in moat: the client learns nothing of the internals
            log.exception("serve.chat_crashed")
            response = _error_response(
                ApiError(
                    500,
                    "moat could not answer; the server log has the details",
                    type="server_error",
                    code="internal_error",
                )
            )
        self.metrics.response(response.status_code)
        return response

    async def _answer_chat(self, request: Request) -> Response:
        if not self.ready:
            raise ApiError(503, "the server is starting", type="server_error", code="starting")
        # with keys, a caller without one learns nothing (not even which graphs exist)
        keyed = None if self.keys.open else self._tenant(request, None)
        raw = await _read_body(request, self._largest_limit())
        chat = parse_chat(_decode(raw, request.headers.get("content-type")))
        served = self.graphs.get(chat.model)
        if served is None:
            raise self._unknown_graph(chat.model)
        limit = served.pipe.limits.max_request_bytes
        if len(raw) > limit:
            raise _too_large(limit, chat.model)
        tenant = keyed if keyed is not None else self._tenant(request, chat.user)
        data = _graph_input(served.pipe.graph, chat, tenant)  # (a 400 takes no request id)
        async with self.shaper.admit(tenant):
            result, tokens = await self._run_attended(request, served, data, tenant)
        graph = served.pipe.graph
        _raise_for_status(
            result, _input_param(result.error, chat, graph), _input_error(result.error, graph)
        )
        headers = moat_headers(result, simulated=tokens[2] > 0)
        if chat.stream:
            return _sse(result, chat, tokens, headers)
        body = completion(result, chat.model, tokens)
        try:
            return JSONResponse(body, headers=headers)
        except ValueError:  # a number JSON cannot carry, NaN or infinite, in the output
            return JSONResponse(json_safe(body), headers=headers)

    # -- steps ----------------------------------------------------------------------------

    def _largest_limit(self) -> int:
        return max(s.pipe.limits.max_request_bytes for s in self.graphs.values())

    def _tenant(self, request: Request, user: str | None) -> str:
        authorization = None
        if not self.keys.open:
            authorization = _authorization(request)
        try:
            tenant = self.keys.tenant(authorization, user)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="user", code="invalid_user") from exc
        if tenant is None:
            raise ApiError(
                401,
                "missing or unknown API key: send `Authorization: Bearer KEY` with a key "
                "of the server's keys file",
                type="invalid_request_error",
                code="invalid_api_key",
            )
        return tenant


def _authorization(request: Request) -> str | None:
    """The request's one `Authorization` header. Two are refused rather than one picked:
    readers differ on which counts (this server read the first; a proxy in front that
    checks keys may read the last), so a key could be checked that is not the one used.

    Raises:
        ApiError: 400 for more than one.
    """
    found = request.headers.getlist("authorization")
    if len(found) > 1:
        raise ApiError(
            400,
            f"the request has {len(found)} Authorization headers; readers differ on which "
            "one counts, so send one: `Authorization: Bearer KEY`",
            code="invalid_authorization",
        )
    return found[0] if found else None


def _same_file(one: str | None, other: str | None) -> bool:
    """Two graph paths name one file (a graph built in code has none)."""
    return bool(one and other) and os.path.realpath(str(one)) == os.path.realpath(str(other))


def _slot_requests(store: Any, run_id: str, slot: tuple[int, int]) -> int:
    """How many seqs of `slot` the run has used: a worker that joins the run (again, after
    its predecessor died) numbers its requests after the ones stored, never over them.
    (The pipeline reads the same seqs when it first answers in the run.)"""
    if store is None:
        return 0
    index, count = slot
    seqs = store.finished_request_seqs(run_id)
    highest = max((seq for seq in seqs if seq % count == index), default=None)
    return 0 if highest is None else (highest - index) // count + 1


def _check_rebinds(graphs: Sequence[Graph], models: Mapping[str, str]) -> None:
    known = {name for graph in graphs for name in graph.models}
    for name, target in models.items():
        if name not in known:
            raise SpecError(
                f"--model {name}={target}: no served graph has a model {name!r}. "
                f"Models: {', '.join(sorted(known)) or '(none)'}"
            )
