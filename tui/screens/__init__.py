"""The screens of the moat TUI: dashboard, requests, request detail, policies, confirmation."""

from __future__ import annotations

from tui.screens.base import LiveScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.detail import RequestDetailScreen
from tui.screens.policies import PoliciesScreen
from tui.screens.requests import RequestsScreen

__all__ = [
    "ConfirmScreen",
    "DashboardScreen",
    "LiveScreen",
    "PoliciesScreen",
    "RequestDetailScreen",
    "RequestsScreen",
]
