"""Tests of engine/report/."""
