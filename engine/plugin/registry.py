"""The node type registry: short `type:` names to `Node` classes, from entry points and plugins."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterable
from importlib.metadata import entry_points
from types import ModuleType

from pydantic import BaseModel

from engine.errors import PluginError, exception_text
from engine.events import EventType
from engine.plugin import event_names
from engine.plugin.node import Node

__all__ = ["ENTRY_POINT_GROUP", "Registry", "import_plugin"]

ENTRY_POINT_GROUP = "moat.nodes"
"""The entry-point group node plugins register under (`sleep = "mypkg.nodes:Sleep"`)."""

RESERVED_TYPES = frozenset({"loop"})
_DISTRIBUTION = "moat"
_BUILT_IN = f"package {_DISTRIBUTION!r}"
"""How `load_entry_points` names moat's own distribution, whose entry points are the
built-in node types."""
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Registry:
    """Maps node type names to `Node` subclasses.

    Built-in and third-party nodes register the same way: through the `moat.nodes`
    entry-point group, or by being defined in a module a graph lists under `plugins:`.
    A YAML `type:` is always a short name looked up here, never an import path.
    """

    def __init__(self, types: Iterable[type[Node]] = ()) -> None:
        self._types: dict[str, type[Node]] = {}
        self._origin: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        """Installed entry points that could not be loaded, by name: why, and the fix. One
        broken package costs only the graphs that use its types (`problem`)."""
        for cls in types:
            self.add(cls)

    @staticmethod
    def claim_installed() -> None:
        """Have the installed node types (the `moat.nodes` entry points) claim their event
        names, so no other node records them (`ctx.emit`); a broken entry point is left
        to the graph that uses it to report."""
        with contextlib.suppress(PluginError):
            Registry.default()

    @classmethod
    def default(cls) -> Registry:
        """A registry filled from the `moat.nodes` entry points (cached per process)."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls()
            _DEFAULT.load_entry_points()
        return _DEFAULT.copy()

    def copy(self) -> Registry:
        """An independent registry with the same types (graphs add their plugins to a copy)."""
        new = Registry()
        new._types = dict(self._types)
        new._origin = dict(self._origin)
        new.broken = dict(self.broken)
        return new

    def add(self, cls: type[Node], origin: str | None = None) -> None:
        """Register `cls` under its `type_name`; re-registering the same class is a no-op."""
        name = getattr(cls, "type_name", None)
        if not name:
            raise PluginError(f"{cls.__qualname__} has no `type_name`; set it to the YAML name")
        if not isinstance(name, str):
            raise PluginError(
                f"{_qualname(cls)}: `type_name` must be a string (the YAML `type:`), got {name!r}"
            )
        if name in RESERVED_TYPES:
            raise PluginError(f"{cls.__qualname__}: type name {name!r} is reserved by moat")
        if not _TYPE_NAME.fullmatch(name):
            raise PluginError(
                f"{_qualname(cls)}: type name {name!r} is not a short name (letters, digits, "
                f"`_` and `-`, starting with a letter); write it like "
                f"{_short_name(name)!r}"
            )
        _check_model(cls, "Config")
        _check_model(cls, "Output")
        _check_run(cls)
        _check_events(cls)
        _check_model_keys(cls)
        existing = self._types.get(name)
        if existing is not None and existing is not cls:
            if _same_class(existing, cls):
                return
            raise PluginError(
                f"node type {name!r} is registered twice: by {_qualname(existing)} and by "
                f"{_qualname(cls)}; rename one `type_name`"
            )
        self._types[name] = cls
        self._origin[name] = origin or cls.__module__
        event_names.claim(name, cls.event_types)

    def load_entry_points(self) -> None:
        """Register every node class of the `moat.nodes` entry-point group. One that cannot
        be loaded is noted in `broken` (reported where its type is asked for), so a broken
        package does not stop graphs that never use it.

        Two installed packages that claim one type name leave it to neither (which one
        answered would depend on the order packages were installed in): a graph that uses
        it is told to uninstall one. A package that claims a built-in type's name is the
        broken one; the built-in keeps it."""
        packages: dict[str, tuple[str, str]] = {}  # type name -> (entry point, package)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            package = f"package {dist!r}" if dist is not None else "its package"
            try:
                cls = ep.load()
                if not (inspect.isclass(cls) and issubclass(cls, Node)):
                    raise PluginError(f"{ep.value} is not a Node subclass")
                name = getattr(cls, "type_name", None)
                claimed = packages.get(name) if isinstance(name, str) else None
                if claimed is not None:
                    registered = self._types.get(cls.type_name)
                    if registered is None:  # (claimed twice already: left to neither)
                        continue
                    if not _same_class(registered, cls):
                        self._claimed_twice(cls, claimed, (ep.value, package), dist)
                        continue
                self.add(cls, origin=ep.value)
                packages[cls.type_name] = (ep.value, package)
            except (Exception, SystemExit) as exc:
                why = (
                    exc.reason
                    if isinstance(exc, PluginError)
                    else exception_text(exc, with_type=True)
                )
                self.broken[ep.name] = (
                    f"the installed node type {ep.name!r} ({ep.value}, of {package}) could "
                    f"not be loaded: {why.partition(chr(10))[0]}; reinstall or fix {package}"
                )

    def _claimed_twice(
        self, cls: type[Node], first: tuple[str, str], second: tuple[str, str], dist: str | None
    ) -> None:
        """The type name of `cls`, registered from the entry point `first`, is claimed by
        `cls` from `second` too (each `(entry point, package)`; `dist`: the package of
        `second`)."""
        name = cls.type_name
        (first_ep, first_package), (second_ep, second_package) = first, second
        if first_package == _BUILT_IN or dist == _DISTRIBUTION:
            if dist == _DISTRIBUTION:  # the built-in came second: it takes the name back
                del self._types[name]
                self.add(cls, origin=second_ep)
                first_ep, first_package, second_ep, second_package = (*second, *first)
            self.broken[f"{name} ({second_package})"] = (
                f"the installed node type {name!r} ({second_ep}, of {second_package}) takes "
                f"the name of moat's built-in node type {name!r} ({first_ep}), which keeps "
                f"it; rename its `type_name`, or uninstall {second_package}"
            )
            return
        self._types.pop(name, None)
        self._origin.pop(name, None)
        self.broken[name] = (
            f"node type {name!r} is installed twice: by {first_ep} ({first_package}) and by "
            f"{second_ep} ({second_package}); uninstall one, or rename one `type_name`"
        )

    def problem(self, name: str) -> str | None:
        """Why type `name` is missing when an installed entry point of that name is broken."""
        return self.broken.get(name)

    def load_module(
        self, module_name: str, base_dir: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """Import `module_name` and register every `Node` subclass with a `type_name` in it.

        Args:
            module_name: a dotted module name, as listed under `plugins:`.
            base_dir: the graph file's folder; a module or package found there is used
                first, before installed ones (see `import_plugin`).

        Returns:
            The type names the module registered.
        """
        try:
            module = import_plugin(module_name, base_dir)
        except PluginError:
            raise
        except (Exception, SystemExit) as exc:  # (an `exit()` in it must not end moat)
            raise PluginError(_import_failure(module_name, base_dir, exc)) from exc
        added = []
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, Node)
                and obj is not Node
                and obj.__dict__.get("type_name") is not None  # (None: a base class)
            ):
                self.add(obj, origin=_origin(module_name, module))
                added.append(obj.type_name)
        return sorted(added)

    def get(self, name: str) -> type[Node] | None:
        """The class registered under `name`, or None."""
        return self._types.get(name)

    def names(self) -> list[str]:
        """Registered type names, sorted."""
        return sorted(self._types)

    def origin(self, name: str) -> str:
        """Where a type came from (entry point value or module name)."""
        return self._origin.get(name, "")

    def closest(self, name: str) -> str | None:
        """The registered name closest to `name`, for did-you-mean hints."""
        matches = difflib.get_close_matches(name, [*self._types, "loop"], n=1, cutoff=0.6)
        return matches[0] if matches else None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __repr__(self) -> str:
        return f"<Registry {len(self._types)} types>"


_DEFAULT: Registry | None = None


def _import_failure(
    module_name: str, base_dir: str | os.PathLike[str] | None, exc: BaseException
) -> str:
    """Why the `plugins:` module `module_name` could not be imported: what was raised,
    where in the plugin's files, and what fixes it."""
    # (pydantic's own messages run on for lines, with a link: the first says it)
    reason = exception_text(exc, with_type=True).partition("\\n")[0]
    reason = _GRAPH_PACKAGE.sub("", reason)
    said = f"plugin module {module_name!r} could not be imported ({reason})"
    folder = os.path.realpath(base_dir) if base_dir is not None else None
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    missing = _GRAPH_PACKAGE.sub("", f"{missing}.").rstrip(".") if missing else None
    if missing is not None and (module_name == missing or module_name.startswith(missing + ".")):
        if module_name.endswith(".py"):
            return f"{said}; write the module's name without `.py`: {module_name[:-3]!r}"
        where = f"next to the graph ({folder}) " if folder is not None else ""
        return (
            f"{said}: no file or package of that name {where}and no installed module; check "
            "the name, or install the package that provides it"
        )
    at = _raised_at(exc, folder)
    place = f" at {at}" if at else ""
    if missing is not None:
        top = missing.partition(".")[0]
        if folder is not None and importlib.machinery.PathFinder.find_spec(top, [folder]):
            return (
                f"{said}{place}; {top!r} is next to the graph, and a plugin module there "
                f"imports its neighbours relatively: write `from . import {top}`"
            )
        return f"{said}{place}; install the package that provides {top!r}, or fix the import"
    return f"{said}{place}; fix the module there (it must import without error)"


def _raised_at(exc: BaseException, folder: str | None) -> str | None:
    """`FILE:LINE` where importing a plugin failed: a syntax error's own place, else the
    deepest frame in the graph's folder, else the deepest outside the import system."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        column = f":{exc.offset}" if exc.offset else ""
        return f"{exc.filename}:{exc.lineno}{column}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    frames = [f for f in frames if os.path.realpath(f.filename) != os.path.realpath(__file__)]
    if folder is not None:
        local = [f for f in frames if os.path.realpath(f.filename).startswith(folder + os.sep)]
        frames = local or frames
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def import_plugin(module_name: str, base_dir: str | os.PathLike[str] | None = None) -> ModuleType:
    """Import a `plugins:` module, looking in the graph's folder first.

    A module (or package) next to the graph is imported as a submodule of a package private
    to that folder, so it needs no `PYTHONPATH`, `sys.path` stays as it was, and two graphs
    in different folders may each have their own `nodes.py`. Its own imports of siblings
    are relative (`from . import helpers`). Otherwise the module is imported normally.

    Raises:
        PluginError: `module_name` is not a dotted Python name.
        Exception: whatever importing the module raised.
    """
    if not _MODULE.fullmatch(module_name):
        raise PluginError(
            f"plugin {module_name[:80]!r} is not a module name: write a dotted Python name "
            "such as `mypkg.nodes` (a file `nodes.py` next to the graph is `nodes`)"
        )
    if base_dir is not None:
        folder = os.path.realpath(base_dir)
        top = module_name.partition(".")[0]
        local = importlib.machinery.PathFinder.find_spec(top, [folder])
        if local is not None and _location(local) != _location(_importable(top)):
            return importlib.import_module(f"{_folder_package(folder)}.{module_name}")
    # Not in the graph's folder, or the same files a plain import finds (an installed or
    # editable package, the working directory): one module, as entry points see it too.
    return importlib.import_module(module_name)


def _importable(top: str) -> importlib.machinery.ModuleSpec | None:
    """Where a plain import of the top-level module `top` would come from (not importing)."""
    try:
        return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


def _location(spec: importlib.machinery.ModuleSpec | None) -> tuple[str, ...]:
    if spec is None:
        return ()
    if spec.origin and os.path.exists(spec.origin):
        return (os.path.realpath(spec.origin),)
    return tuple(os.path.realpath(p) for p in spec.submodule_search_locations or ())


def _folder_package(folder: str) -> str:
    """The name of a package (created once) whose only search location is `folder`."""
    name = "_moat_graph_" + hashlib.sha256(folder.encode()).hexdigest()[:16]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [folder]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


def _origin(module_name: str, module: ModuleType) -> str:
    private = module.__name__ != module_name  # loaded from the graph's folder
    return f"{module_name} ({module.__file__})" if private else module_name


def _same_class(a: type[Node], b: type[Node]) -> bool:
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


_EVENT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_ENGINE_EVENTS = frozenset(EventType)
_SHARED_EVENTS = frozenset({EventType.PII_REDACTED})
"""Engine events a node may record too: the redact node redacts as the gateway does."""


def _check_events(cls: type[Node]) -> None:
    """A node type's `event_types` are UPPER_SNAKE names of its own."""
    declared = getattr(cls, "event_types", ())
    if not isinstance(declared, tuple) or not all(isinstance(e, str) for e in declared):
        raise PluginError(
            f"{_qualname(cls)}: `event_types` must be a tuple of event names, "
            f'e.g. ("SLEPT",), got {declared!r}'
        )
    for name in declared:
        if len(name) > event_names.MAX_CHARS:  # (ctx.emit would refuse it every time)
            raise PluginError(
                f"{_qualname(cls)}: event name {name[:40]!r}... is {len(name)} characters "
                f"long; give the event a name of at most {event_names.MAX_CHARS}"
            )
        if not _EVENT_NAME.fullmatch(name):
            raise PluginError(
                f"{_qualname(cls)}: event name {name!r} is not UPPER_SNAKE_CASE; "
                f"write it like {re.sub(r'[^A-Z0-9]+', '_', name.upper()).strip('_') or 'SLEPT'!r}"
            )
        if name in _ENGINE_EVENTS and name not in _SHARED_EVENTS:
            raise PluginError(
                f"{_qualname(cls)}: event name {name!r} is one of the engine's own "
                "(engine.EventType); give the node's event a name of its own"
            )


def _check_model_keys(cls: type[Node]) -> None:
    """A node type's `model_keys` name fields of its `Config` (`routes.*.model`: the
    first part)."""
    keys = getattr(cls, "model_keys", ())
    if not isinstance(keys, tuple) or not all(isinstance(k, str) for k in keys):
        raise PluginError(
            f"{_qualname(cls)}: `model_keys` must be a tuple of `Config` field names, "
            f'e.g. ("model",), got {keys!r}'
        )
    fields = cls.Config.model_fields
    for key in keys:
        name = key.partition(".")[0]
        if name not in fields:
            raise PluginError(
                f"{_qualname(cls)}: `model_keys` names {key!r}, but {name!r} is not a field "
                f"of its Config. Fields: {', '.join(sorted(fields)) or '(none)'}"
            )


_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _short_name(name: str) -> str:
    """A short type name like `name` (for the message that refuses it)."""
    short = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:60] or "my_node"
    return short if short[0].isalpha() else f"node_{short}"


def _check_run(cls: type[Node]) -> None:
    """`cls.run` is the node's own coroutine function."""
    run = getattr(cls, "run", None)
    if run is None or run is Node.run:
        raise PluginError(
            f"{_qualname(cls)} does not define `run`; add "
            "`async def run(self, config, ctx)` returning its Output"
        )
    if not (inspect.iscoroutinefunction(run) or inspect.iscoroutinefunction(inspect.unwrap(run))):
        raise PluginError(
            f"{_qualname(cls)}.run must be a coroutine function: write `async def run(self, "
            "config, ctx)` (blocking work goes in `await anyio.to_thread.run_sync(...)`)"
        )
    # `impl.run(config, ctx)`: a function takes `self` too, a static or class method not
    static = isinstance(inspect.getattr_static(cls, "run"), staticmethod)
    arguments = 2 if static or inspect.ismethod(run) else 3
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):  # (a callable inspect cannot read: left to run time)
        return
    try:
        signature.bind(*[None] * arguments)
    except TypeError:
        bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
        shown = signature.replace(parameters=bare, return_annotation=signature.empty)
        raise PluginError(
            f"{_qualname(cls)}.run{shown} cannot be called as moat calls it, "
            "`run(config, ctx)`; write `async def run(self, config, ctx)` (any other "
            "parameter needs a default)"
        ) from None


def _check_model(cls: type[Node], part: str) -> None:
    """`cls.Config` / `cls.Output` is a pydantic model ready to validate (built now if it
    waited for a name defined after it)."""
    model = getattr(cls, part, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PluginError(
            f"{_qualname(cls)} needs a nested pydantic model `{part}` "
            f"(class {part}(BaseModel): ...)"
        )
    if model.__pydantic_complete__:
        return
    try:
        model.model_rebuild()
    except Exception as exc:  # pydantic names what is missing (first line; then a link)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PluginError(
            f"{_qualname(cls)}.{part} is not fully defined ({reason}); define or import what "
            f"it names before the node class"
        ) from exc


_GRAPH_PACKAGE = re.compile(r"_moat_graph_[0-9a-f]{16}\.")
"""The package a graph's own plugin modules are imported under (`import_plugin`): not a
name its author wrote, so left out of messages."""


def _qualname(cls: type[Node]) -> str:
    return f"{_GRAPH_PACKAGE.sub('', cls.__module__, count=1)}.{cls.__qualname__}"
