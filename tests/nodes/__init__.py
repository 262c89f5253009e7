"""Tests of the built-in node types."""
