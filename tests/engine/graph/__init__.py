"""Tests of engine/graph/."""
