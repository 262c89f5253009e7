"""Tests of the benchmark and its calibration."""
