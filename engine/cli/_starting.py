"""A SIGTERM that comes while a server command starts, noted rather than fatal.

`moat serve` takes a few hundred milliseconds to import its modules and load its graphs;
a SIGTERM then (a supervisor that stops what it just started) once met the signal's
default action, which ended the process at once with no word (exit 143), where a SIGTERM
a moment later exits 0. So `moat`'s entry point notes SIGTERM before it imports the
command's modules, and the command, once it can, stops without serving. This module
imports nothing but the standard library's signal and threading: it is loaded on the
way to the handler, and what it loads is the window left unguarded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["StartupStop", "noting_sigterm"]


class StartupStop:
    """Whether a SIGTERM came while the server started (callable: True once one did)."""

    def __init__(self) -> None:
        self.signalled = False
        """A SIGTERM came."""
        self._previous: Any = None
        self.noting = threading.current_thread() is threading.main_thread()
        """SIGTERM is this note's until `release`."""
        if self.noting:  # (signal handlers are the main thread's to set)
            self._previous = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        """True once a SIGTERM came."""
        return self.signalled

    def release(self) -> None:
        """Give SIGTERM back to the handler it had (once)."""
        if self.noting:
            signal.signal(signal.SIGTERM, self._previous)
            self.noting = False


_current: StartupStop | None = None


@contextmanager
def noting_sigterm() -> Iterator[StartupStop]:
    """Note SIGTERM for the body; a body nested in another shares the outer one's note
    (the entry point notes it first, the command then reads the same)."""
    global _current
    if _current is not None and threading.current_thread() is threading.main_thread():
        yield _current
        return
    stop = StartupStop()
    if stop.noting:
        _current = stop
    try:
        yield stop
    finally:
        stop.release()
        if _current is stop:
            _current = None
