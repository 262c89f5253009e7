"""Shared fixtures: the anyio backend (asyncio by default; tests that must also run on trio
parametrise `anyio_backend` themselves)."""

from __future__ import annotations

import os

import pytest

from engine.logs import configure_logging

# Library code logs through structlog; tests keep only warnings and errors, as the CLI does.
configure_logging(level="warning")

# The processes tests start (`moat ...`, servers, workers) would compile moat's modules
# afresh at every start where the environment forbids bytecode files: they keep them, as
# any Python install does (a quarter of the CLI tests' time on a slow machine).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
