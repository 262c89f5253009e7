"""Tests of engine/expr/."""
