"""Shared fixtures: the anyio backend (asyncio by default; tests that must also run on trio
parametrise `anyio_backend` themselves)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
