"""Tests of engine/serve/."""
