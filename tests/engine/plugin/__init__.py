"""Tests of engine/plugin/."""
