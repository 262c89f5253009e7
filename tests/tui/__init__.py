"""Tests of the Textual app, with its snapshot baselines in __snapshots__/."""
