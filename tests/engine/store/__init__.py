"""Tests of engine/store/."""
