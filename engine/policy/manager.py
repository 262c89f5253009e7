"""Versioned policy snapshots at run time: which version is active, hot swaps, the guard.

A policy is a YAML mapping of thresholds and settings that graphs read as `policy.…`.
Snapshots are immutable, content-addressed (sha256 of canonical JSON) and numbered per
name; one version per name is active (README, "Policies"). `PolicyManager` keeps the
active version of one policy for a running process:

- `ensure_registered()` once at start (stores the graph's default body as version 1 the
  first time);
- `current()` at every request start: no I/O, no lock; the request keeps the returned
  `PolicyPin` to its end;
- `observe(...)` at every request end, with the version the request pinned;
- `watch()` as a background task: it notices versions activated by other processes
  (`moat policy apply` while `moat run` runs) and judges the regression guard.

Runner integration, in short:

    manager = PolicyManager(store, name=graph.policy_name, default_body=graph.policy,
                            graph=graph)
    manager.run_id = run_id
    manager.ensure_registered()
    async with anyio.create_task_group() as tg:
        await tg.start(manager.watch)
        ...  # per request: pin = manager.current(); ...; manager.observe(
             #     latency_ms, cost_usd, validation_ok, policy_version=pin.version)
        tg.cancel_scope.cancel()
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from engine.errors import MoatError, PolicyError
from engine.events import PolicyPin
from engine.expr.wording import literal
from engine.logs import get_logger
from engine.policy.diff import KeyChange, changed_keys, diff_policies
from engine.policy.guard import GuardSettings, GuardVerdict, Observation, judge
from engine.policy.validate import (
    PolicyFile,
    canonical_form,
    check_guard_section,
    check_values,
    content_hash,
    load_policy_file,
    located_body,
    validate_policy,
)
from engine.store import policy_ops as db

if TYPE_CHECKING:
    from engine.graph.compiled import Graph
    from engine.store.store import Store

__all__ = [
    "AppliedPolicy",
    "GuardSettings",
    "GuardVerdict",
    "KeyChange",
    "PolicyManager",
    "RolledBack",
    "apply_policy",
    "changed_keys",
    "content_hash",
    "diff_policies",
    "load_policy_file",
    "rollback_policy",
    "validate_policy",
]

_log = get_logger("moat.policy")

_KEEP_OBSERVATIONS = 10_000
"""Per version; a guard window larger than this is judged on the latest ones.

A version is judged on its first `window` observations, whenever the judgement runs, so
the verdict does not depend on how late a poll tick comes; its baseline is the latest
`window` observations of the version before it."""

_REASON_CHARS = 200
"""The longest activation reason (`--reason`): `history` shows it on one line."""

OnChange = Callable[[PolicyPin, PolicyPin], None]


@dataclass(frozen=True, slots=True)
class _State:
    """What the manager knows, swapped as one reference so readers never see a mix."""

    pin: PolicyPin
    activation_id: int = 0
    parent: int | None = None
    """The version the active one was derived from: the guard's baseline."""
    fresh: bool = False
    """Activated by `apply` (judged by the guard), not by a rollback."""
    content_hash: str = ""
    """The snapshot's hash: whether a switch changed the settings, without comparing them."""


@dataclass(frozen=True)
class AppliedPolicy:
    """What `apply_policy` did.

    Attributes:
        outcome: `created` (a new version), `reactivated` (same content as an older
            version) or `unchanged` (same content as the active version: nothing done).
        previous_version: the version active before, if any.
        name: the policy's name.
        active: the activation now in force, as stored.
    """

    outcome: str
    previous_version: int | None
    name: str
    active: db.Active = field(repr=False)

    @functools.cached_property
    def pin(self) -> PolicyPin:
        """The version now active, its body frozen on first read (a large body takes a
        while: `moat policy apply` needs only its number)."""
        return _pin(self.active, self.name)

    @property
    def message(self) -> str:
        """One line for the CLI."""
        name, version = self.name, self.active.version
        if self.outcome == "unchanged":
            return f"policy '{name}': unchanged, identical to the active version {version}"
        was = f" (was {self.previous_version})" if self.previous_version else ""
        how = "reactivated" if self.outcome == "reactivated" else "stored and active"
        return f"policy '{name}': version {version} {how}{was}"


@dataclass(frozen=True, slots=True)
class RolledBack:
    """What `rollback_policy` did.

    Attributes:
        pin: the version now active.
        rolled_back: the version that was active before.
    """

    pin: PolicyPin
    rolled_back: int

    @property
    def message(self) -> str:
        """One line for the CLI and the TUI."""
        return (
            f"policy '{self.pin.name}': version {self.pin.version} active again "
            f"(version {self.rolled_back} rolled back)"
        )


def rollback_policy(
    store: Store, name: str, *, to: int | None = None, run_id: str = ""
) -> RolledBack:
    """Undo the latest activation of `name` (or go to version `to`), atomically; the version
    rolled back from becomes `superseded`. Repeated rollbacks walk back the activation
    history (README: Policies). The one way the CLI, the TUI and `PolicyManager` roll back.

    Raises:
        PolicyError: nothing to roll back to, or `to` is unknown or already active.
    """
    done = db.roll_back(
        store,
        name,
        to=to,
        expect_version=None,
        mark="superseded",
        reason=None,
        run_id=run_id,
    )
    assert done is not None  # only a guard's expected version can have moved on
    old, new = done
    return RolledBack(_pin(new, name), old.version)


def _pin(active: db.Active, name: str) -> PolicyPin:
    return PolicyPin(name, active.version, active.body)


def apply_policy(
    store: Store,
    source: str | os.PathLike[str] | Mapping[str, Any] | PolicyFile,
    *,
    name: str | None = None,
    graphs: Sequence[Graph] = (),
    allow_new_keys: bool = False,
    reason: str = "apply",
    run_id: str = "",
) -> AppliedPolicy:
    """Validate a policy (file or body) and make it the active version, atomically.

    Args:
        store: the store holding the versions.
        source: a policy file path, a file already read (`load_policy_file`: what the
            caller checked is what is stored), or a body.
        name: the expected policy name; required for a body without `name:`.
        graphs: graphs whose `policy.…` reads and config fields it must satisfy.
        allow_new_keys: accept keys the active version does not have.
        reason: the activation reason recorded in `policy_activations`.
        run_id: recorded with the `POLICY_ACTIVATED` event.

    Raises:
        PolicyError: refused (located in the file); the active version is untouched.
    """
    body: Any
    policy_name: str | None
    if isinstance(source, Mapping):
        body = dict(source)
        located = located_body(body)
        found = body.get("name") if isinstance(body.get("name"), str) else None
        policy_name = found or name
    else:  # a file: read here, or by the caller who checked it (read once either way)
        loaded = source if isinstance(source, PolicyFile) else load_policy_file(source)
        policy_name, body, located = loaded
    if policy_name is None:
        raise PolicyError("the policy has no `name:`; add one or pass the name")
    if db.is_rollback(reason):
        raise PolicyError(
            f"the activation reason {reason!r} starts like a rollback's "
            f"({', '.join(db.ROLLBACK_PREFIXES)}); choose another"
        )
    if len(reason) > _REASON_CHARS or not reason.isprintable():
        # `moat policy history` prints it as one line of its table
        raise PolicyError(
            f"the activation reason {literal(reason)} is not one line of at most "
            f"{_REASON_CHARS} printable characters (no line breaks, tabs or escapes); "
            "give one short line of text"
        )
    if name is not None and policy_name != name:
        raise PolicyError(
            f"the policy is named '{policy_name}' but '{name}' was expected; fix its `name:`",
            path=located.path or None,
        )
    check_values(body, located)  # before hashing: only what JSON holds, as it was given
    text, digest = canonical_form(body)  # encoded once: hashed, and stored as it is

    def check(active: db.Active | None) -> None:
        validate_policy(
            body,
            located,
            previous=active.body if active else None,
            previous_version=active.version if active else None,
            graphs=graphs,
            allow_new_keys=allow_new_keys,
            values_checked=True,
        )

    active, outcome, previous = db.publish(
        store, policy_name, body, digest, reason=reason, run_id=run_id, check=check, body_json=text
    )
    return AppliedPolicy(outcome, previous.version if previous else None, policy_name, active)


class PolicyManager:
    """The active version of one policy in a running process, kept fresh and guarded.

    Args:
        store: where versions live; None runs on `default_body` alone (no versions).
        name: the policy name (`Graph.policy_name`); None when the graph has none.
        default_body: the graph's default snapshot (`Graph.policy`), stored as version 1
            the first time.
        graph: the graph the policy serves; `apply` validates against it.
        poll_interval_s: how often `watch` reads the store.

    Attributes:
        on_change: callables `(old_pin, new_pin)` run when the active version switches
            (use `changed_keys(old.body, new.body)` to decide what to invalidate).
        run_id: recorded with the policy events this process writes.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        name: str | None,
        default_body: Mapping[str, Any],
        graph: Graph | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.name = name
        self.default_body = dict(default_body)
        self.graph = graph
        self.poll_interval_s = poll_interval_s
        self.on_change: list[OnChange] = []
        self.guard_rollbacks = 0
        """Versions this process's guard rolled back (a metric of `moat run --metrics-port`)."""
        self.run_id = ""
        self._state = _State(PolicyPin(name, None, self.default_body))
        self._windows: dict[int, deque[Observation]] = {}
        self._judged: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PolicyManager {self.name!r} v{self._state.pin.version}>"

    @property
    def _stored(self) -> bool:
        return self.store is not None and self.name is not None

    def _store(self) -> Store:
        if self.store is None or self.name is None:
            raise PolicyError(
                "policy versions need a store and a named policy; pass --db and give the "
                "graph a `policy:` file"
            )
        return self.store

    def ensure_registered(self) -> PolicyPin:
        """Store the default body as version 1 if the policy has no version; return the pin.

        Raises:
            PolicyError: the default body is malformed (e.g. a bad `guard:`), or the
                active version is one the graph cannot read (it was edited since: a key it
                reads now is missing, or of another type); nothing is run on it.
        """
        if not self._stored:
            return self._state.pin
        self._check_default()
        assert self.name is not None
        default_hash = content_hash(self.default_body)
        active = db.register(self._store(), self.name, self.default_body, default_hash, self.run_id)
        if active.content_hash != default_hash:  # the graph's own policy fits it
            self._check_fits(active)
        self._switch(active)
        return self._state.pin

    def _check_fits(self, active: db.Active) -> None:
        """Refuse to run the graph on an active version it cannot read: every request
        reaching what reads the missing key would fail."""
        graph = self.graph
        if graph is None:
            return
        try:
            validate_policy(active.body, located_body(active.body), previous=None, graphs=(graph,))
        except PolicyError as exc:
            store = self._store()
            raise PolicyError(
                f"policy '{self.name}' version {active.version}, active in {store.path}, does "
                f"not fit graph '{graph.name}' ({graph.path}): {exc.reason}. Apply a version "
                f"that does (`moat policy apply {graph.policy_path} --graph {graph.path}`, "
                "with --allow-new-keys for keys it adds), or roll back to one (`moat policy "
                f"rollback {self.name} --to VERSION`)"
            ) from None

    def _check_default(self) -> None:
        path = self.graph.policy_path if self.graph is not None else None
        try:
            check_values(self.default_body, located_body(self.default_body))
            check_guard_section(self.default_body, located_body(self.default_body))
        except PolicyError:
            if path is None:
                raise
            _, body, located = load_policy_file(path)  # again, to say where
            check_values(body, located)
            check_guard_section(body, located)
            raise

    def current(self) -> PolicyPin:
        """The latest known active version; no I/O. Call it at every request start."""
        return self._state.pin

    def apply(
        self,
        source: str | os.PathLike[str] | Mapping[str, Any],
        *,
        allow_new_keys: bool = False,
        reason: str = "apply",
    ) -> AppliedPolicy:
        """Validate a file or body against the active version and the graph; activate it.

        Raises:
            PolicyError: refused; nothing changed.
        """
        store = self._store()
        applied = apply_policy(
            store,
            source,
            name=self.name,
            graphs=(self.graph,) if self.graph is not None else (),
            allow_new_keys=allow_new_keys,
            reason=reason,
            run_id=self.run_id,
        )
        self._switch(applied.active, applied.pin)  # (no need to read it back from the store)
        return applied

    def rollback(self, to: int | None = None) -> PolicyPin:
        """Undo the latest activation (or go to version `to`); the active one becomes
        `superseded`. Repeated rollbacks walk back the activation history (README: Policies).

        Raises:
            PolicyError: nothing to roll back to, or `to` is unknown or already active.
        """
        store = self._store()  # refuses a process without a store or a named policy
        assert self.name is not None
        rollback_policy(store, self.name, to=to, run_id=self.run_id)
        self._refresh_now()
        return self._state.pin

    def observe(
        self,
        latency_ms: float,
        cost_usd: float,
        validation_ok: bool | None,
        policy_version: int | None,
    ) -> None:
        """Record one finished request for the guard; cheap, no I/O.

        Args:
            latency_ms: the request's latency.
            cost_usd: its cost.
            validation_ok: whether its output validated (None: nothing was validated).
            policy_version: the version the request pinned (`PolicyPin.version`).
        """
        if policy_version is None:
            return
        with self._lock:
            window = self._windows.get(policy_version)
            if window is None:
                window = self._windows[policy_version] = deque(maxlen=_KEEP_OBSERVATIONS)
            window.append(Observation(latency_ms, cost_usd, validation_ok))

    def check_guard(self) -> GuardVerdict | None:
        """Judge the active version if its window is full; roll it back if it broke its guard.

        `watch` calls this on every tick; call it directly when not watching. Blocking
        (store reads and, on a rollback, writes).

        Returns:
            The verdict once the version is judged (None before, or without a guard).
        """
        verdict, active = self._judge()
        if active is not None:
            self._switch(active)
        return verdict

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the store until cancelled: switch to versions other processes activate,
        and judge the guard. Start it with `task_group.start(manager.watch)`."""
        task_status.started()
        if not self._stored:
            await anyio.sleep_forever()
        while True:
            await anyio.sleep(self.poll_interval_s)
            try:
                found = await anyio.to_thread.run_sync(self._tick)
            except MoatError as exc:  # a busy or locked store must not stop the run
                _log.warning("policy.poll_failed", policy=self.name, error=str(exc))
                continue
            except Exception as exc:  # nor a fault in judging: the requests go on
                _log.error("policy.poll_failed", policy=self.name, error=repr(exc))
                continue
            if found is not None:
                self._switch(*found)

    # -- internals ----------------------------------------------------------------------

    def _tick(self) -> tuple[db.Active, PolicyPin] | None:
        """One poll, in a worker thread: the newer activation, if any, with its pin made
        here (freezing a large snapshot takes a while: not on the event loop)."""
        assert self.store is not None and self.name is not None
        _, active = self._judge()
        if active is None:  # (nothing newer: no body is read)
            active = db.poll_active(self.store, self.name, newer_than=self._state.activation_id)
        if active is None or active.activation_id <= self._state.activation_id:
            return None
        return active, _pin(active, self.name)

    def _refresh_now(self) -> None:
        assert self.store is not None and self.name is not None
        active = db.poll_active(self.store, self.name)
        if active is not None:
            self._switch(active)

    def _switch(self, active: db.Active, new: PolicyPin | None = None) -> None:
        """Make `active` current if it is newer than what this process knows (`new`: its
        pin, if made already)."""
        state = self._state
        if active.activation_id <= state.activation_id:
            return
        assert self.name is not None
        old = state.pin
        reason = active.reason or ""
        new = new if new is not None else _pin(active, self.name)
        fresh = not db.is_rollback(reason)
        self._state = _State(
            new, active.activation_id, active.parent_version, fresh, active.content_hash
        )
        keep = (active.version, active.parent_version)
        with self._lock:  # the guard reads the active version and its parent, nothing older
            for version in [v for v in self._windows if v not in keep]:
                del self._windows[version]
        if old.version == active.version and state.content_hash == active.content_hash:
            return
        _log.info("policy.switched", policy=self.name, old=old.version, new=active.version)
        for callback in list(self.on_change):
            try:
                callback(old, new)
            except Exception as exc:  # a cache's hook must not stop the switch
                _log.warning("policy.on_change_failed", policy=self.name, error=repr(exc))

    def _judge(self) -> tuple[GuardVerdict | None, db.Active | None]:
        state = self._state
        pin, parent, version = state.pin, state.parent, state.pin.version
        if not self._stored or version is None or not state.fresh or parent is None:
            return None, None
        if version in self._judged:
            return None, None
        try:
            settings = check_guard_section(pin.body, located_body(pin.body))
        except PolicyError as exc:  # stored before guards were strict (`window: '50'`)
            _log.warning(
                "policy.guard_unreadable", policy=self.name, version=version, error=str(exc)
            )
            self._judged.add(version)
            return None, None
        if settings is None:
            return None, None
        if settings.window > _KEEP_OBSERVATIONS:  # a window never filled would never judge
            settings = settings.model_copy(update={"window": _KEEP_OBSERVATIONS})
        with self._lock:
            new = list(self._windows.get(version, ()))[: settings.window]
            old = [(o.latency_ms, o.cost_usd) for o in self._windows.get(parent, ())]
        if len(new) < settings.window:
            return None, None
        old = old[-settings.window :]
        source = "process"
        if len(old) < settings.window:
            stored = db.baseline_samples(self._store(), pin.name or "", parent, settings.window)
            if len(stored) > len(old):
                old, source = stored, "store"
        verdict = judge(settings, version, new, parent, old)
        _log.info("policy.guard_judged", policy=self.name, version=version, ok=verdict.ok)
        # judged once its rollback is done: a store busy past its patience (StoreError)
        # leaves the version to be judged, and rolled back, on the next tick
        if verdict.ok:
            self._guard_kept(verdict, source, state)
            rolled = None
        else:
            rolled = self._guard_rollback(verdict, source, state)
        self._judged.add(version)
        return verdict, rolled

    def _guard_kept(self, verdict: GuardVerdict, source: str, judged: _State) -> None:
        """Record that the version stays, and why: one row per judged version, so the
        store says whether its thresholds held or could not be judged (a baseline with
        too few samples) rather than leaving no trace. A busy store (StoreError) leaves
        the version to be judged, and recorded, on the next tick."""
        assert self.name is not None
        db.record_guard_kept(
            self._store(),
            self.name,
            version=verdict.version,
            reason=verdict.kept_because,
            reason_codes=verdict.codes or ("passed",),
            run_id=self.run_id,
            payload={
                **verdict.figures,
                "baseline_source": source,
                "activation_id": judged.activation_id,
                "unchecked": list(verdict.unchecked),
            },
        )

    def _guard_rollback(
        self, verdict: GuardVerdict, source: str, judged: _State
    ) -> db.Active | None:
        """Roll back the activation the verdict was reached under, if it is still the
        latest: an operator who has since rolled back, and perhaps forced the same version
        back with `--to`, decided after what the guard saw."""
        assert self.name is not None
        try:
            done = db.roll_back(
                self._store(),
                self.name,
                to=None,
                expect_version=verdict.version,
                expect_activation=judged.activation_id,
                mark="bad",
                reason=verdict.reason,
                run_id=self.run_id,
                payload={**verdict.figures, "baseline_source": source},
            )
        except PolicyError as exc:  # nothing good to go back to: keep running, say so
            _log.warning("policy.guard_no_rollback", policy=self.name, error=str(exc))
            return None
        if done is None:
            return None
        self.guard_rollbacks += 1
        return done[1]
