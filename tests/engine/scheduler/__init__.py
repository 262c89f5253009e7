"""Tests of engine/scheduler/."""
