"""Tests of engine/models/."""
