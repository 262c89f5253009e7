"""Versioned policy snapshots: the run-time manager, validation, diffs and the guard."""
