"""Shared fixtures: the anyio backend (asyncio by default; tests that must also run on trio
parametrise `anyio_backend` themselves)."""

from __future__ import annotations

import pytest

from engine.logs import configure_logging

# Library code logs through structlog; tests keep only warnings and errors, as the CLI does.
configure_logging(level="warning")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
