"""The hand-written findings appended to the bench section of RESULTS.md."""

from __future__ import annotations

__all__ = ["NOTES"]

NOTES = """
"""
